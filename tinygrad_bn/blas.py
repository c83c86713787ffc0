"""Thread count of the BLAS that numpy links (for the GEMMs of matmul and conv).

Our OpenMP kernels and OpenBLAS each keep a team of threads that spin for a while
after their work. On 2 cores a small multithreaded GEMM next to an OpenMP kernel
makes the two teams fight: a 60x100 @ 100x100 product was measured 50x slower than
on one thread. So GEMMs below GEMM_PARALLEL_FLOPS run on one BLAS thread and larger
ones on tb.get_num_threads() threads. The BLAS is found like threadpoolctl does
(its library among this process's mappings); when it cannot be found nothing is
changed and numpy's default applies.
"""
import contextlib
import ctypes

from .threads import get_num_threads

# Below this many flops (2*m*n*k) a GEMM runs on one BLAS thread (bench/ops.py, bench/train.py).
GEMM_PARALLEL_FLOPS = 4_000_000

_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
            "openblas_set_num_threads", "MKL_Set_Num_Threads")
_set = None
_current = None


def _find_blas_setter():
    import numpy  # noqa: F401  (loads the BLAS)
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "blas" in line.lower() or "mkl_rt" in line.lower()}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.argtypes, fn.restype = [ctypes.c_int], None
                return fn
    return None


_set = _find_blas_setter()


def available():
    """True when the BLAS thread count can be controlled."""
    return _set is not None


def set_blas_threads(n):
    """Set the BLAS thread count (no-op when the BLAS was not found)."""
    global _current
    if _set is not None and n != _current:
        _set(int(n))
        _current = n


def for_gemm(flops):
    """Pick the BLAS thread count for a GEMM of `flops` floating-point operations."""
    set_blas_threads(1 if flops < GEMM_PARALLEL_FLOPS else get_num_threads())


@contextlib.contextmanager
def gemm_threads(flops):
    for_gemm(flops)
    yield
