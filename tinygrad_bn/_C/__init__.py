"""Compiled Cython kernels (built from src_cy/ by setup.py). Nothing here knows about Tensor."""
