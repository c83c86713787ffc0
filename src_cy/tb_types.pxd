# Types and helpers shared by every kernel file.
# real: the float dtypes a kernel is compiled for (float32 and float64).
ctypedef fused real:
    float
    double

# Index type for loops over elements (64-bit: sizes beyond 2**31 do not overflow).
ctypedef Py_ssize_t idx_t
