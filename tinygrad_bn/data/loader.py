"""DataLoader: mini-batches of numpy arrays as Tensors."""
import math
import numbers

import numpy as np

from ..tensor import Tensor, float32, int64


def _as_array(a, name):
    if isinstance(a, Tensor):
        a = a.data
    a = np.asarray(a)
    if a.ndim == 0:
        raise ValueError(f"{name} must have a leading sample axis, got a 0-d array")
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold numbers, got dtype {a.dtype}")
    return a


class DataLoader:
    """DataLoader(x, y=None, batch_size=32, shuffle=False, drop_last=False, seed=None).

    Iterating yields (x_batch, y_batch) Tensors over the first axis: x_batch float32,
    y_batch int64 for integer/bool labels (float32 for float targets). With y=None
    it yields x_batch alone. shuffle draws a new permutation every epoch from one
    np.random.default_rng(seed), so a given seed repeats the same epochs. len() is
    the number of batches: ceil(n / batch_size), or floor with drop_last.

    Raises ValueError when x and y have different lengths or batch_size < 1,
    TypeError for a non-integer batch_size or non-numeric data.
    """

    def __init__(self, x, y=None, batch_size=32, shuffle=False, drop_last=False, seed=None):
        self.x = _as_array(x, "x")
        self.y = None if y is None else _as_array(y, "y")
        if self.y is not None and len(self.y) != len(self.x):
            raise ValueError(f"x and y must have the same length, got len(x)={len(self.x)} and len(y)={len(self.y)}")
        if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool):
            raise TypeError(f"batch_size must be an integer, got {type(batch_size).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.rng = np.random.default_rng(seed)
        self._y_dtype = None if self.y is None else (float32 if self.y.dtype.kind == "f" else int64)

    def __len__(self):
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        n = len(self.x)
        order = self.rng.permutation(n) if self.shuffle else None
        for b in range(len(self)):
            pick = slice(b * self.batch_size, min((b + 1) * self.batch_size, n))
            if order is not None:
                pick = order[pick]
            xb = Tensor(self.x[pick], dtype=float32)
            if self.y is None:
                yield xb
            else:
                yield xb, Tensor(self.y[pick], dtype=self._y_dtype)
