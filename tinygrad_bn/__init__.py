"""tinygrad_bn: a small reverse-mode autograd engine with Cython/OpenMP kernels,
built to make Batch Normalization readable, trainable and provable."""
# first: importing allocator tunes malloc before any array work (see allocator.py)
from . import allocator  # noqa: F401
from .autograd import grad
from .config import show_config
from .grad_mode import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from .random import manual_seed
from .tensor import (
    Tensor, arange, bool_, cat, float32, float64, full, int64, maximum, minimum, ones, ones_like,
    rand, randn, stack, where, zeros, zeros_like,
)
from .serialization import load, save
from .threads import get_num_threads, set_num_threads
from . import data, optim, testing  # noqa: E402
from . import nn  # noqa: E402  (nn builds on Tensor)

__version__ = "0.1.0"
