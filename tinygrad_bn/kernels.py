"""Array-level kernels: the only door from Tensor ops into src_cy/.

Every function takes C-contiguous numpy arrays of one float dtype (float32 or
float64; the Tensor layer has already promoted mixed operands) and returns a new
C-contiguous array. Broadcasting is handled here without materialising the
expanded operand. Nothing here knows about Tensor or autograd.
"""
import math

from ._C import batchnorm as _batchnorm
from ._C import elementwise as _elementwise
from ._C import index as _index
from ._C import reduce as _reduce
from ._C import softmax as _softmax
from .threads import REDUCE_PARALLEL_MIN_ELEMENTS, threads_for


def broadcast_size(*shapes):
    """Element count of the broadcast of up to 3 shapes; ValueError naming the shapes when
    they do not broadcast or the result would be too large to index."""
    return _elementwise.broadcast_size(*shapes)


def binary(op, a, b):
    """out = op(a, b) with numpy broadcasting. op: add sub mul div pow maximum minimum."""
    n = a.size if a.shape == b.shape else _elementwise.broadcast_size(a.shape, b.shape)
    return _elementwise.binary(op, a, b, threads_for(n))


def expand(a, shape):
    """A new C-contiguous array of `shape` holding `a` broadcast to it (parallel copy)."""
    return _elementwise.expand(a, tuple(shape), threads_for(math.prod(shape)))


def compare(op, a, b):
    """bool array op(a, b) with broadcasting. op: lt le gt ge eq ne."""
    n = a.size if a.shape == b.shape else _elementwise.broadcast_size(a.shape, b.shape)
    return _elementwise.compare(op, a, b, threads_for(n))


def unary(op, a):
    """out = op(a). op: neg exp log sqrt relu sigmoid tanh abs."""
    return _elementwise.unary(op, a, threads_for(a.size))


def unary_backward(op, saved, g):
    """g * dz/dx of relu (saved = x), sigmoid or tanh (saved = z) in one pass."""
    return _elementwise.unary_backward(op, saved, g, threads_for(g.size))


def pow_scalar(a, p):
    """out = a ** p for a Python float p."""
    return _elementwise.pow_scalar(a, p, threads_for(a.size))


def clip(a, lo, hi):
    """out = min(max(a, lo), hi); lo or hi may be None."""
    return _elementwise.clip(a, lo, hi, threads_for(a.size))


def where(cond, a, b):
    """out = a where cond else b, broadcasting all three (cond: bool array)."""
    if cond.shape == a.shape == b.shape:
        n = a.size
    else:
        n = _elementwise.broadcast_size(cond.shape, a.shape, b.shape)
    return _elementwise.where(cond, a, b, threads_for(n))


def _reduce_threads(a):
    # reductions wake the team twice: they start using threads at a larger size
    return threads_for(a.size, REDUCE_PARALLEL_MIN_ELEMENTS)


def sum(a, axes, keepdims):
    """Sum over `axes` (tuple of non-negative ints, sorted, non-empty), float64 accumulation."""
    return _reduce.sum_axes(a, axes, keepdims, _reduce_threads(a))


def max(a, axes, keepdims):
    """Maximum over `axes` (tuple of non-negative ints, sorted, non-empty); a.size > 0."""
    return _reduce.max_axes(a, axes, keepdims, _reduce_threads(a))


def min(a, axes, keepdims):
    """Minimum over `axes` (tuple of non-negative ints, sorted, non-empty); a.size > 0."""
    return _reduce.min_axes(a, axes, keepdims, _reduce_threads(a))


def argmax(a, axis):
    """int64 index of the first maximum along `axis` (None: of the flattened array)."""
    return _reduce.argmax_axis(a, axis, _reduce_threads(a))


def softmax(a, axis):
    """exp(a - max) / sum(exp(a - max)) along `axis` (non-negative int); stable for |a| ~ 1e4."""
    return _softmax.softmax(a, axis, threads_for(a.size))


def log_softmax(a, axis):
    """a - max - log(sum(exp(a - max))) along `axis` (non-negative int)."""
    return _softmax.log_softmax(a, axis, threads_for(a.size))


def softmax_backward(z, g, axis):
    """z * (g - sum(g * z)) along `axis`: the gradient of softmax given its output z."""
    return _softmax.softmax_backward(z, g, axis, threads_for(z.size))


def log_softmax_backward(z, g, axis):
    """g - exp(z) * sum(g) along `axis`: the gradient of log_softmax given its output z."""
    return _softmax.log_softmax_backward(z, g, axis, threads_for(z.size))


def scatter_add(shape, positions, values):
    """zeros(shape) with values.ravel()[i] added at flat index positions.ravel()[i].

    positions: int64 array of flat indices into `shape`, same size as values;
    repeated positions accumulate.
    """
    return _index.scatter_add(shape, positions, values)


def contiguous(a):
    """C-contiguous copy of any strided view (transpose, expand, slice)."""
    return _index.contiguous(a, threads_for(a.size))


# ------------------------------------------------------------------ batch norm (src_cy/batchnorm.pyx)
def batch_norm_train(x, weight, bias, running_mean, running_var, momentum, eps):
    """Fused training forward on x (N, C) or (N, C, L). weight/bias/running_*: (C,)
    arrays of x's dtype or None; running stats are updated in place when given.
    Returns (y, mean, inv_std) with mean/inv_std float64 (C,)."""
    return _batchnorm.forward_train(x, weight, bias, running_mean, running_var, momentum, eps, threads_for(x.size))


def batch_norm_eval(x, weight, bias, running_mean, running_var, eps):
    """Fused inference forward: one affine map per channel from the running stats."""
    return _batchnorm.forward_eval(x, weight, bias, running_mean, running_var, eps, threads_for(x.size))


def batch_norm_backward(x, grad_y, mean, inv_std, weight):
    """Fused backward: returns (grad_x, grad_gamma, grad_beta)."""
    return _batchnorm.backward(x, grad_y, mean, inv_std, weight, threads_for(x.size))


# ------------------------------------------------------------------ cross-entropy (src_cy/softmax.pyx)
def cross_entropy_forward(logits, labels, label_smoothing):
    """Fused per-row softmax cross-entropy of logits (N, C) against int64 labels (N,).
    Returns (loss (N,), lse_parts float64 (N, 2): each row's max and log-sum-exp below it)."""
    return _softmax.cross_entropy_forward(logits, labels, label_smoothing, threads_for(logits.size))


def cross_entropy_backward(logits, labels, lse_parts, grad_loss, label_smoothing):
    """grad_logits = grad_loss[:, None] * (softmax(logits) - (1 - s) onehot(labels) - s / C)."""
    return _softmax.cross_entropy_backward(logits, labels, lse_parts, grad_loss, label_smoothing,
                                           threads_for(logits.size))
