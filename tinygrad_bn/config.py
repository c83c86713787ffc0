"""show_config(): what the kernels were built with and how they will run."""
import os

import numpy as np

from . import allocator, threads
from ._C import parallel


def _build_info():
    try:
        from ._C import _build_info as info
    except ImportError:  # built by a tool that skipped setup.py's probe
        return None
    return info


def _blas():
    try:
        deps = np.show_config(mode="dicts").get("Build Dependencies", {})
        blas = deps.get("blas", {})
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # numpy's config format is not a stable API
        return "unknown"


def config():
    """The build and runtime configuration as a dict."""
    info = _build_info()
    return {
        "openmp": parallel.openmp_enabled(),
        "num_threads": threads.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "malloc_tuning": "on" if allocator.status is True else allocator.status,
        "available_cpus": threads.available_cpus(),
        "compiler": getattr(info, "COMPILER", "unknown"),
        "compile_args": " ".join(getattr(info, "COMPILE_ARGS", [])),
        "debug_build": getattr(info, "DEBUG", False),
        "numpy": np.__version__,
        "blas": _blas(),
    }


def show_config():
    """Print OpenMP on/off, thread count, compiler and flags, numpy and its BLAS."""
    for key, value in config().items():
        print(f"{key:>15}: {value}")
