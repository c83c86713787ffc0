"""Stateless layer functions (torch.nn.functional counterparts), written with
Tensor ops or a fused Function; the Modules in tb.nn call these."""
import math

import numpy as np

from ..grad_mode import no_grad
from ..random import generator
from ..tensor import Tensor, _FLOATS, stack, where
from ._batchnorm_fused import batch_norm_eval_fused, batch_norm_train_fused


def _promote(fn, x, w):
    """Mixed float32/float64 operands compute in float64 (DESIGN's promotion rule).
    TypeError for anything but float Tensors (as torch: ints are labels, not inputs)."""
    for name, t in (("input", x), ("weight", w)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}: {name} must be a Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOATS:
            raise TypeError(f"{fn}: {name} must be float32 or float64, got dtype {t.dtype}")
    if x.dtype != w.dtype:
        return x.to(np.float64), w.to(np.float64)
    return x, w

# ------------------------------------------------------------------ activations


def relu(x):
    """max(x, 0)."""
    return x.relu()


def sigmoid(x):
    return x.sigmoid()


def tanh(x):
    return x.tanh()


def leaky_relu(x, negative_slope=0.01):
    """x where x > 0 else negative_slope * x (gradient negative_slope at 0, as torch)."""
    return where(x > 0, x, x * negative_slope)


def softmax(x, axis=-1):
    return x.softmax(axis)


def log_softmax(x, axis=-1):
    return x.log_softmax(axis)


# ------------------------------------------------------------------ linear


def linear(x, weight, bias=None):
    """y = x @ weight.T + bias.  x (..., in), weight (out, in), bias (out,) -> (..., out).

    Raises ValueError naming the shapes when x's last dim is not weight's in_features,
    TypeError when x or weight is not a float Tensor.
    """
    x, weight = _promote("linear", x, weight)
    if weight.ndim != 2:
        raise ValueError(f"linear: weight must be 2-D (out_features, in_features), got shape {weight.shape}")
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: expected input with last dimension {weight.shape[1]} (in_features), "
                         f"got shape {x.shape}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"linear: expected bias of shape ({weight.shape[0]},), got {bias.shape}")
    from ..functions import MatMul  # the transpose is a GEMM flag, not a copy
    x2 = x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x
    y = MatMul.apply(x2, weight, tb=True)
    if bias is not None:
        y = y + bias
    return y.reshape(x.shape[:-1] + (weight.shape[0],)) if x.ndim != 2 else y


# ------------------------------------------------------------------ dropout


def _check_dropout_p(p):
    """TypeError unless p is a real number, ValueError unless 0 <= p <= 1 (NaN fails)."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise TypeError(f"dropout probability must be a number, got {type(p).__name__} {p!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")


def dropout(x, p=0.5, training=True):
    """Zero each element with probability p and scale the rest by 1/(1-p) (inverted
    dropout) in training; identity otherwise. Draws from the thread's generator, so
    tb.manual_seed makes it reproducible. Raises ValueError unless 0 <= p <= 1."""
    _check_dropout_p(p)
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    keep = generator().random(x.shape) >= p
    mask = Tensor._make((keep / (1.0 - p)).astype(x.dtype), None, False)
    return x * mask


# ------------------------------------------------------------------ losses


def _check_reduction(reduction):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _reduce(loss, reduction):
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _labels_array(labels, n, num_classes, name="cross_entropy"):
    """Validate integer class labels against logits (n, num_classes); returns int64 array."""
    arr = labels.data if isinstance(labels, Tensor) else np.asarray(labels)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name}: labels must be integers (class indices), got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected labels of shape ({n},) for logits with batch size {n}, got {arr.shape}")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise IndexError(f"{name}: label {bad} is out of range for {num_classes} classes (expected 0 <= label < {num_classes})")
    return np.asarray(arr, dtype=np.int64, order="C")


def nll_loss(log_probs, labels, reduction="mean"):
    """Negative log likelihood: -log_probs[i, labels[i]], reduced. log_probs (N, C)."""
    _check_reduction(reduction)
    if log_probs.ndim != 2:
        raise ValueError(f"nll_loss: expected log-probabilities of shape (N, C), got {log_probs.shape}")
    n, c = log_probs.shape
    lab = _labels_array(labels, n, c, "nll_loss")
    return _reduce(-log_probs[np.arange(n), lab], reduction)


def cross_entropy(logits, labels, reduction="mean", label_smoothing=0.0):
    """Softmax cross-entropy of logits (N, C) against integer labels (N,).

    loss_i = -(1 - s) * log_softmax(logits)[i, labels[i]] - s * mean_c log_softmax(logits)[i, c]
    with s = label_smoothing (torch's definition). Stable for logits of magnitude 1e4.
    Raises ValueError for bad shapes or reduction, TypeError for float labels,
    IndexError naming the label and the class count when a label is out of range.
    """
    _check_reduction(reduction)
    if not isinstance(logits, Tensor):
        raise TypeError(f"cross_entropy: logits must be a Tensor, got {type(logits).__name__}")
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy: expected logits of shape (N, C), got {logits.shape}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    if logits.dtype not in _FLOATS:
        raise TypeError(f"cross_entropy: logits must be float32 or float64, got dtype {logits.dtype}")
    n, c = logits.shape
    lab = _labels_array(labels, n, c)
    if c == 0:
        raise ValueError(f"cross_entropy: logits have no classes (shape {logits.shape})")
    from ..functions import CrossEntropy  # fused log-softmax + pick, forward and backward
    loss = CrossEntropy.apply(logits, labels=lab, smoothing=float(label_smoothing))
    return _reduce(loss, reduction)


def mse_loss(pred, target, reduction="mean"):
    """(pred - target)^2, reduced. Shapes must match exactly (no silent broadcasting)."""
    _check_reduction(reduction)
    target = target if isinstance(target, Tensor) else Tensor(target, dtype=pred.dtype)
    if pred.shape != target.shape:
        raise ValueError(f"mse_loss: pred has shape {pred.shape} but target has shape {target.shape}")
    diff = pred - target
    return _reduce(diff * diff, reduction)


def binary_cross_entropy_with_logits(logits, target, reduction="mean"):
    """-(t log sigmoid(z) + (1 - t) log(1 - sigmoid(z))).

    NOTE: log sigmoid(z) = log_softmax([0, z])[1] and log(1 - sigmoid(z)) =
    log_softmax([0, z])[0]: stable for |z| = 1e4 and with the exact gradient
    sigmoid(z) - t everywhere (the max(z, 0) + log(1 + e^-|z|) form has kinks whose
    one-sided derivatives give -t instead of 0.5 - t at z = 0)."""
    _check_reduction(reduction)
    target = target if isinstance(target, Tensor) else Tensor(target, dtype=logits.dtype)
    if logits.shape != target.shape:
        raise ValueError(f"binary_cross_entropy_with_logits: logits have shape {logits.shape} but target has shape {target.shape}")
    log_p = stack([logits * 0.0, logits], axis=-1).log_softmax(-1)  # [..., 0]: log(1-p), [..., 1]: log p
    loss = -(target * log_p[..., 1] + (1.0 - target) * log_p[..., 0])
    return _reduce(loss, reduction)


# ------------------------------------------------------------------ batch norm


def _positive_finite(v):
    try:
        return 0.0 < float(v) < math.inf
    except OverflowError:  # an int beyond float range
        return False


def _check_batch_norm_args(x, running_mean, running_var, weight, bias, training, momentum, eps, impl):
    """Every check batch_norm makes, run before anything is computed or updated."""
    if not isinstance(x, Tensor):
        raise TypeError(f"batch_norm: input must be a Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"batch_norm: input must be float32 or float64, got dtype {x.dtype}")
    if x.ndim not in (2, 3, 4):
        raise ValueError(f"batch_norm: expected input of shape (N, C), (N, C, L) or (N, C, H, W), got {x.shape}")
    if impl not in ("fused", "composed"):
        raise ValueError(f"batch_norm: impl must be 'fused' or 'composed', got {impl!r}")
    c = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"batch_norm: {name} must be a Tensor or None, got {type(t).__name__}")
        if t.shape != (c,):
            raise ValueError(f"batch_norm: expected {name} of shape ({c},) for input with {c} channels "
                             f"(input shape {x.shape}), got {t.shape}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: running_mean and running_var must both be given or both be None")
    if not (isinstance(eps, (int, float)) and _positive_finite(eps)):
        raise ValueError(f"batch_norm: eps must be a positive finite number, got {eps!r}")
    if momentum is not None and not (isinstance(momentum, (int, float)) and 0.0 <= momentum <= 1.0):
        raise ValueError(f"batch_norm: momentum must be in [0, 1] or None, got {momentum!r}")
    uses_batch_stats = training or running_mean is None
    values_per_channel = x.size // c if c else 0
    if uses_batch_stats and values_per_channel <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got {values_per_channel} "
                         f"(input of shape {x.shape}): the batch variance is undefined; if this is the "
                         f"last, smaller batch of an epoch use DataLoader(drop_last=True), or call eval()")


def _channel_view(t, ndim):
    """(C,) -> (1, C, 1, ...) so it broadcasts against (N, C, ...)."""
    return t.reshape((1, -1) + (1,) * (ndim - 2))


def batch_norm_composed(x, weight=None, bias=None, eps=1e-5):
    """Algorithm 1 of the paper in primitive Tensor ops; the engine derives every
    gradient (the mean stays in the variance's graph, so second derivatives are right).
    Returns (y, mean, var) with mean/var the per-channel batch statistics (C,) (biased var)."""
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axes, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axes, keepdims=True)
    x_hat = centred / (var + eps).sqrt()
    y = x_hat
    if weight is not None:
        y = y * _channel_view(weight, x.ndim)
    if bias is not None:
        y = y + _channel_view(bias, x.ndim)
    return y, mean.reshape(-1), var.reshape(-1)


def _update_running_stats(running_mean, running_var, mean, var, m, momentum):
    """running = (1 - momentum) running + momentum batch, with the UNBIASED batch
    variance var * m / (m - 1) (the paper's Algorithm 2). Runs outside the graph."""
    with no_grad():
        rm, rv = running_mean.data, running_var.data
        unbiased = var * (m / (m - 1))
        rm *= 1.0 - momentum
        rm += (momentum * mean).astype(rm.dtype)
        rv *= 1.0 - momentum
        rv += (momentum * unbiased).astype(rv.dtype)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, impl="fused"):
    """Batch Normalization (Ioffe & Szegedy 2015, Algorithm 1) over (N, C), (N, C, L)
    or (N, C, H, W) input: per channel, over the N (x L or H x W) values,
        x_hat = (x - mean) / sqrt(var + eps),   y = weight * x_hat + bias
    with the BIASED batch variance. In training (or when running stats are None)
    batch statistics are used and, if running stats are given, they are updated in
    place: running = (1 - momentum) running + momentum batch_stat, using the UNBIASED
    variance var * m / (m - 1) (m values per channel). Otherwise y is the fixed affine
    map weight * (x - running_mean) / sqrt(running_var + eps) + bias.

    impl="fused" runs the hand-written Cython kernels; impl="composed" primitive Tensor
    ops. momentum=None is not accepted here (the module turns it into 1/num_batches).
    Raises TypeError/ValueError naming expected vs got before anything runs, including
    for a training batch with one value per channel; on error nothing is updated.
    """
    _check_batch_norm_args(x, running_mean, running_var, weight, bias, training, momentum, eps, impl)
    if momentum is None:
        raise ValueError("batch_norm: momentum=None (cumulative average) is handled by BatchNorm modules; "
                         "pass the averaging factor 1/num_batches_tracked instead")
    uses_batch_stats = training or running_mean is None
    if weight is not None and weight.dtype != x.dtype:
        weight = weight.to(x.dtype)
    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    if uses_batch_stats:
        if impl == "fused":
            return batch_norm_train_fused(x, weight, bias, running_mean, running_var, momentum, eps)
        y, mean, var = batch_norm_composed(x, weight, bias, eps)
        if running_mean is not None and training:
            _update_running_stats(running_mean, running_var, mean.data, var.data, x.size // x.shape[1], momentum)
        return y
    if impl == "fused":
        return batch_norm_eval_fused(x, weight, bias, running_mean, running_var, eps)
    # Inference: one fixed affine map per channel, y = x * scale + shift.
    inv_std = Tensor._make((1.0 / np.sqrt(running_var.data.astype(np.float64) + eps)).astype(x.dtype), None, False)
    scale = inv_std if weight is None else weight * inv_std
    shift = -running_mean.detach().to(x.dtype) * scale
    if bias is not None:
        shift = shift + bias
    return x * _channel_view(scale, x.ndim) + _channel_view(shift, x.ndim)


# ------------------------------------------------------------------ convolution and pooling


def _int(name, v):
    # NOTE: int(v) would truncate stride=1.5 to 1 silently; torch raises TypeError too.
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
    return int(v)


def _pair(name, v):
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair, got {v!r}")
        return tuple(_int(name, i) for i in v)
    return (_int(name, v), _int(name, v))


def _single(name, v):
    if isinstance(v, (tuple, list)):
        if len(v) != 1:
            raise ValueError(f"{name} must be an int or a 1-tuple, got {v!r}")
        return _int(name, v[0])
    return _int(name, v)


def _check_rank(fn, x, ndim, layout):
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: input must be a Tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{fn}: expected {ndim}-D input {layout}, got shape {x.shape}")


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """2-D cross-correlation (PyTorch's conv2d). x (N, C, H, W), weight (O, C, kh, kw),
    bias (O,) or None -> (N, O, OH, OW), OH = (H + 2p - d(kh - 1) - 1) // s + 1.
    Raises ValueError for rank/channel mismatches or a kernel larger than the padded input."""
    from ..functions import Conv2d
    _check_rank("conv2d", x, 4, "(N, C, H, W)")
    if weight.ndim != 4:
        raise ValueError(f"conv2d: expected 4-D weight (O, C, kh, kw), got shape {weight.shape}")
    args = dict(stride=_pair("stride", stride), padding=_pair("padding", padding), dilation=_pair("dilation", dilation))
    x, weight = _promote("conv2d", x, weight)
    if bias is not None and not isinstance(bias, Tensor):
        raise TypeError(f"conv2d: bias must be a Tensor or None, got {type(bias).__name__}")
    inputs = (x, weight) if bias is None else (x, weight, bias.to(x.dtype))
    return Conv2d.apply(*inputs, **args)


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """1-D cross-correlation: x (N, C, L), weight (O, C, k) -> (N, O, OL); conv2d with H = 1."""
    _check_rank("conv1d", x, 3, "(N, C, L)")
    if weight.ndim != 3:
        raise ValueError(f"conv1d: expected 3-D weight (O, C, k), got shape {weight.shape}")
    n, c, length = x.shape
    o, _, k = weight.shape
    y = conv2d(x.reshape(n, c, 1, length), weight.reshape(o, weight.shape[1], 1, k), bias,
               (1, _single("stride", stride)), (0, _single("padding", padding)), (1, _single("dilation", dilation)))
    return y.reshape(n, o, y.shape[3])


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1):
    """Max over kernel_size windows of (N, C, H, W) input; stride defaults to kernel_size;
    padding (at most half the kernel) counts as -inf."""
    from ..functions import MaxPool2d
    _check_rank("max_pool2d", x, 4, "(N, C, H, W)")
    k = _pair("kernel_size", kernel_size)
    return MaxPool2d.apply(x, kernel_size=k, stride=k if stride is None else _pair("stride", stride),
                           padding=_pair("padding", padding), dilation=_pair("dilation", dilation))


def max_pool1d(x, kernel_size, stride=None, padding=0, dilation=1):
    """Max over windows of (N, C, L) input (max_pool2d with H = 1)."""
    _check_rank("max_pool1d", x, 3, "(N, C, L)")
    k = _single("kernel_size", kernel_size)
    s = k if stride is None else _single("stride", stride)
    n, c, length = x.shape
    y = max_pool2d(x.reshape(n, c, 1, length), (1, k), (1, s), (0, _single("padding", padding)),
                   (1, _single("dilation", dilation)))
    return y.reshape(n, c, y.shape[3])


def avg_pool2d(x, kernel_size, stride=None, padding=0, count_include_pad=True):
    """Mean over kernel_size windows of (N, C, H, W) input; stride defaults to kernel_size;
    zero padding counted in the divisor when count_include_pad (torch's default)."""
    from ..functions import AvgPool2d
    _check_rank("avg_pool2d", x, 4, "(N, C, H, W)")
    k = _pair("kernel_size", kernel_size)
    return AvgPool2d.apply(x, kernel_size=k, stride=k if stride is None else _pair("stride", stride),
                           padding=_pair("padding", padding), count_include_pad=bool(count_include_pad))
