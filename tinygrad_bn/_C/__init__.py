"""Compiled Cython kernels (built from src_cy/ by setup.py). Nothing here knows about Tensor."""
import os

# NOTE: idle OpenMP threads sleep instead of spinning (unless the user chose otherwise).
# Between two kernels there is Python work and GEMMs on other threads; spinning workers
# stole their core: a training step of the 1024-wide MLP took 89 ms at 2 threads with
# spinning and 59 ms without (bench/train.py). libgomp reads this when it is loaded,
# which is when the first kernel module of this package is imported: after this line.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
