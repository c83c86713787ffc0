"""Argument checks shared by the Python-facing wrappers of conv.pyx and pool.pyx
(thread counts: src_cy/threadcheck.pxd, shared by every kernel file).
Each raises TypeError / ValueError naming what was expected and what came."""
import operator

import numpy as np


def _int(name, v):
    if isinstance(v, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(v).__name__}") from None


def _pair(name, v):
    """An int or a sequence of two ints -> (h, w)."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair (h, w), got {v!r}")
        return (_int(name, v[0]), _int(name, v[1]))
    v = _int(name, v)
    return (v, v)


def _check_array(name, a, ndim, dtypes=(np.float32, np.float64)):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype not in dtypes:
        names = " or ".join(np.dtype(d).name for d in dtypes)
        raise TypeError(f"{name} must be {names}, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got {a.ndim}-D with shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
