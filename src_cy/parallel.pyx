# cython: language_level=3
"""OpenMP facts the Python side needs: whether kernels were built with OpenMP."""

cdef extern from *:
    """
    #if TB_OPENMP
    #include <omp.h>
    static int tb_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int tb_omp_max_threads(void) { return 1; }
    #endif
    """
    int tb_omp_max_threads() nogil
    int TB_OPENMP


from threadcheck cimport MAX_THREADS as _MAX

MAX_THREADS = _MAX  # the largest thread count any kernel accepts (threadcheck.pxd)


def openmp_enabled():
    """True when the kernels were compiled with OpenMP (so prange runs in parallel)."""
    return bool(TB_OPENMP)


def omp_max_threads():
    """omp_get_max_threads() as the OpenMP runtime sees it (1 without OpenMP)."""
    return tb_omp_max_threads()
