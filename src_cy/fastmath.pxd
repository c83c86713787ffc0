# Vectorisable float exp/tanh/sigmoid (fastmath.h): branch-free static inline C, so
# loops that call them compile to SIMD code without -ffast-math.
cdef extern from "fastmath.h" nogil:
    float tb_expf(float x)
    float tb_tanhf(float x)
    float tb_sigmoidf(float x)
    # whole arrays, 16 lanes at a time where AVX-512 is available (same bits)
    void tb_expf_shifted(const float* x, float shift, float* o, Py_ssize_t n)
    void tb_sigmoidf_array(const float* x, float* o, Py_ssize_t n)
    void tb_tanhf_array(const float* x, float* o, Py_ssize_t n)
