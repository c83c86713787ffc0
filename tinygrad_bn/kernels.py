"""Array-level kernels: the only door from Tensor ops into src_cy/.

Every function takes C-contiguous numpy arrays of one float dtype (float32 or
float64; the Tensor layer has already promoted mixed operands) and returns a new
C-contiguous array. Broadcasting is handled here without materialising the
expanded operand. Nothing here knows about Tensor or autograd.
"""
import numpy as np

# SCAFFOLD: numpy bodies, replaced by the Cython kernels (src_cy/) in this session.

_BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
           "pow": np.power, "maximum": np.maximum, "minimum": np.minimum}
_COMPARE = {"lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
            "eq": np.equal, "ne": np.not_equal}


def _sigmoid(a):
    return 0.5 * (np.tanh(0.5 * a) + 1).astype(a.dtype)


_UNARY = {"neg": np.negative, "exp": np.exp, "log": np.log, "sqrt": np.sqrt,
          "relu": lambda a: np.maximum(a, 0), "sigmoid": _sigmoid, "tanh": np.tanh, "abs": np.abs}


def binary(op, a, b):
    """out = op(a, b) with numpy broadcasting. op: add sub mul div pow maximum minimum."""
    return np.ascontiguousarray(_BINARY[op](a, b))


def compare(op, a, b):
    """bool array op(a, b) with broadcasting. op: lt le gt ge eq ne."""
    return np.ascontiguousarray(_COMPARE[op](a, b))


def unary(op, a):
    """out = op(a). op: neg exp log sqrt relu sigmoid tanh abs."""
    return np.ascontiguousarray(_UNARY[op](a)).astype(a.dtype, copy=False)


def pow_scalar(a, p):
    """out = a ** p for a Python float p."""
    return np.power(a, a.dtype.type(p))


def clip(a, lo, hi):
    """out = min(max(a, lo), hi); lo or hi may be None."""
    return np.ascontiguousarray(np.clip(a, lo, hi)).astype(a.dtype, copy=False)


def where(cond, a, b):
    """out = a where cond else b, broadcasting all three (cond: bool array)."""
    return np.ascontiguousarray(np.where(cond, a, b))


def sum(a, axes, keepdims):
    """Sum over `axes` (tuple of non-negative ints, sorted, non-empty), float64 accumulation."""
    return np.ascontiguousarray(a.sum(axis=axes, keepdims=keepdims, dtype=np.float64).astype(a.dtype))


def max(a, axes, keepdims):
    """Maximum over `axes` (tuple of non-negative ints, sorted, non-empty); a.size > 0."""
    return np.ascontiguousarray(a.max(axis=axes, keepdims=keepdims))


def min(a, axes, keepdims):
    """Minimum over `axes` (tuple of non-negative ints, sorted, non-empty); a.size > 0."""
    return np.ascontiguousarray(a.min(axis=axes, keepdims=keepdims))


def argmax(a, axis):
    """int64 index of the first maximum along `axis` (None: of the flattened array)."""
    return np.asarray(np.argmax(a, axis=axis), dtype=np.int64)


def softmax(a, axis):
    """exp(a - max) / sum(exp(a - max)) along `axis` (non-negative int); stable for |a| ~ 1e4."""
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return np.ascontiguousarray(e / e.sum(axis=axis, keepdims=True))


def log_softmax(a, axis):
    """a - max - log(sum(exp(a - max))) along `axis` (non-negative int)."""
    s = a - a.max(axis=axis, keepdims=True)
    return np.ascontiguousarray(s - np.log(np.exp(s).sum(axis=axis, keepdims=True)))


def scatter_add(shape, positions, values):
    """zeros(shape) with values.ravel()[i] added at flat index positions.ravel()[i].

    positions: int64 array of flat indices into `shape`, same size as values;
    repeated positions accumulate.
    """
    out = np.zeros(int(np.prod(shape)), dtype=values.dtype)
    np.add.at(out, positions.ravel(), values.ravel())
    return out.reshape(shape)


def contiguous(a):
    """C-contiguous copy of any strided view (transpose, expand, slice)."""
    return np.ascontiguousarray(a)
