# The array check of the elementwise and softmax kernel wrappers (one copy for both):
# what their nogil loops assume, tested before any of them runs.
cimport numpy as cnp


cdef inline int check_float_array(object a, str name) except -1:
    """a's numpy type number (NPY_FLOAT32 or NPY_FLOAT64). TypeError unless a is an
    ndarray of float32/float64 in native byte order; ValueError unless it is C-contiguous
    and aligned. The messages name the argument, what was expected and what came."""
    if not isinstance(a, cnp.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    cdef int t = cnp.PyArray_TYPE(arr)
    if (t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64) or not cnp.PyArray_ISNOTSWAPPED(arr):
        raise TypeError(f"{name}: expected dtype float32 or float64 (native byte order), got {a.dtype}")
    if not cnp.PyArray_ISCARRAY_RO(arr):
        raise ValueError(f"{name}: expected a C-contiguous aligned array, got shape {a.shape} "
                         f"with strides {a.strides}")
    return t
