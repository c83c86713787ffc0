"""GEMM through the BLAS that numpy links, always on one BLAS thread, split across
our own threads when it is large.

Why not let OpenBLAS thread itself: its worker threads spin for a long while after
each call, and so do OpenMP's after each of our kernels; on 2 cores the two teams
fight (a training step of a 1024-wide MLP took 108 ms at 2 threads against 73 ms at
1; a 1000x64 @ 64x64 float32 product took 6 ms on 2 OpenBLAS threads against 0.15 ms on
one, measured while other processes loaded the machine). So the
BLAS runs single-threaded, and a GEMM of at least GEMM_PARALLEL_FLOPS is split along
its rows (or batch) into tb.get_num_threads() slices computed by a small thread
pool (numpy releases the GIL). Every output element is computed by the same
single-threaded BLAS call on the same inputs whatever the split, so results do not
depend on the thread count. The BLAS is found like threadpoolctl does (its library
among this process's mappings); when it cannot be found numpy's default applies.
"""
import ctypes
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .threads import get_num_threads

# Below this many flops (2*m*n*k) a GEMM is one call on the calling thread: handing a
# slice to another thread costs tens of microseconds.
GEMM_PARALLEL_FLOPS = 8_000_000

_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
            "openblas_set_num_threads", "MKL_Set_Num_Threads")


def _find_blas_setter():
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


_set_blas_threads = _find_blas_setter()
if _set_blas_threads is not None:
    _set_blas_threads(1)

_pool = None
_pool_size = 0
_pool_lock = threading.Lock()


def available():
    """True when the BLAS thread count could be pinned to 1."""
    return _set_blas_threads is not None


def _executor(n):
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < n:
            # NOTE: no shutdown() of the pool replaced here: another Python thread may hold it
            # and be about to submit (RuntimeError after shutdown). Its idle workers exit once
            # the last reference to it is dropped.
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="tb-gemm")
            _pool_size = n
        return _pool


def _split_axis(a, b):
    """Which operands to slice along axis 0 so the output's axis 0 is split, or None."""
    if a.ndim == 2 and b.ndim == 2:
        return (True, False)
    if a.ndim == 2:
        return (False, True)
    if b.ndim == 2:
        return (True, False)
    if a.ndim == b.ndim and a.shape[0] == b.shape[0]:
        return (True, True)
    return None


def parallel_parts(n, fn, flops):
    """Call fn(lo, hi) over [0, n) split into contiguous parts, one per thread, when the
    work (`flops`) is worth a thread hand-off; part 0 runs on the calling thread. fn
    must release the GIL in its heavy calls (numpy's BLAS and our kernels do) and write
    only its own part of any output."""
    threads = get_num_threads()
    if threads < 2 or n < 2 or flops < GEMM_PARALLEL_FLOPS:
        fn(0, n)
        return
    parts = min(threads, n)
    bounds = [n * i // parts for i in range(parts + 1)]
    pool = _executor(parts - 1)
    futures = [pool.submit(fn, bounds[i], bounds[i + 1]) for i in range(1, parts)]
    fn(bounds[0], bounds[1])
    for f in futures:
        f.result()


def matmul(a, b, out=None):
    """np.matmul(a, b, out=out) (2-D or batched operands, any strides numpy's BLAS path
    accepts), split across tb.get_num_threads() threads when large."""
    threads = get_num_threads()
    if out is None:
        shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
        out = np.empty(shape, dtype=np.result_type(a.dtype, b.dtype))
    flops = 2 * out.size * a.shape[-1]
    how = _split_axis(a, b) if threads > 1 and flops >= GEMM_PARALLEL_FLOPS else None
    rows = out.shape[0] if out.ndim else 0
    if how is None or rows < 2:
        return np.matmul(a, b, out=out)
    parts = min(threads, rows)
    bounds = [rows * i // parts for i in range(parts + 1)]
    split_a, split_b = how
    futures = []
    pool = _executor(parts - 1)
    for i in range(1, parts):
        lo, hi = bounds[i], bounds[i + 1]
        futures.append(pool.submit(np.matmul, a[lo:hi] if split_a else a, b[lo:hi] if split_b else b,
                                   out=out[lo:hi]))
    lo, hi = 0, bounds[1]
    np.matmul(a[lo:hi] if split_a else a, b[lo:hi] if split_b else b, out=out[lo:hi])
    for f in futures:
        f.result()
    return out
