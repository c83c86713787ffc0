"""The derivative table: every differentiable primitive, forward beside backward.

forward(self, *arrays) computes with kernels on numpy arrays; backward(self, g)
returns one gradient per input written with Tensor ops, so the backward pass is
itself differentiable (create_graph=True). Gradients may keep the output's
broadcast shape: the engine sums them back to each input's shape. Adding an op
means adding one class here and one method in tensor.py.
"""
import math

import numpy as np

from . import blas, conv_kernels, kernels
from .function import Function
from .grad_mode import is_grad_enabled as _recording
from .tensor import Tensor


def _const(arr):
    """A constant (non-differentiable) Tensor around an array (numpy scalars from 0-d
    arithmetic become 0-d arrays)."""
    return Tensor._make(np.asarray(arr), None, False)


def _zero(dtype):
    return _const(np.zeros((), dtype=dtype))


def _where(mask, a, b):
    return Where.apply(a, b, cond=mask)


# ============================================================== elementwise binary
class Add(Function):
    """z = x + y"""
    numpy_op = np.add

    def forward(self, x, y):
        return kernels.binary("add", x, y)

    def backward(self, g):
        return g, g


class Sub(Function):
    """z = x - y"""
    numpy_op = np.subtract

    def forward(self, x, y):
        return kernels.binary("sub", x, y)

    def backward(self, g):
        return g, (-g if self.needs_input_grad[1] else None)


class Mul(Function):
    """z = x * y"""
    numpy_op = np.multiply

    def forward(self, x, y):
        return kernels.binary("mul", x, y)

    def backward(self, g):
        x, y = self.inputs
        nx, ny = self.needs_input_grad
        return (g * y if nx else None), (g * x if ny else None)


class Div(Function):
    """z = x / y;  dz/dx = 1/y,  dz/dy = -x/y^2 = -z/y"""
    numpy_op = np.true_divide

    def forward(self, x, y):
        return kernels.binary("div", x, y)

    def backward(self, g):
        _, y = self.inputs
        g_over_y = g / y
        return g_over_y, (-g_over_y * self.output() if self.needs_input_grad[1] else None)


class Pow(Function):
    """z = x ** y;  dz/dx = y * x^(y-1),  dz/dy = z * log(x) (0 where x == 0, as torch)"""
    numpy_op = np.power

    def forward(self, x, y):
        return kernels.binary("pow", x, y)

    def backward(self, g):
        x, y = self.inputs
        nx, ny = self.needs_input_grad
        gx = g * y * x ** (y - 1.0) if nx else None
        gy = None
        if ny:
            x_is_zero = kernels.compare("eq", x.data, np.zeros((), x.dtype))
            gy = _where(x_is_zero, _zero(g.dtype), g * self.output() * x.log())
        return gx, gy


def _select_grads(g, x, y, wins):
    """Gradients of max/min(x, y): g goes to the winning side (compare op `wins`: "gt"
    for max, "lt" for min), half to each side where x == y."""
    share_x = kernels.compare(wins, x.data, y.data) + 0.5 * kernels.compare("eq", x.data, y.data)
    share_x = share_x.astype(g.dtype)
    return g * _const(share_x), g * _const((1.0 - share_x).astype(g.dtype))


class Maximum(Function):
    """z = max(x, y); where x == y each side gets half the gradient"""
    numpy_op = np.maximum

    def forward(self, x, y):
        return kernels.binary("maximum", x, y)

    def backward(self, g):
        return _select_grads(g, *self.inputs, "gt")


class Minimum(Function):
    """z = min(x, y); where x == y each side gets half the gradient"""
    numpy_op = np.minimum

    def forward(self, x, y):
        return kernels.binary("minimum", x, y)

    def backward(self, g):
        return _select_grads(g, *self.inputs, "lt")


class Where(Function):
    """z = x where cond else y (cond: bool array attribute, not differentiable).
    Its own adjoint: the gradient is routed back through the same cond."""

    def forward(self, x, y):
        return kernels.where(self.cond, x, y)

    def backward(self, g):
        zero = _zero(g.dtype)
        nx, ny = self.needs_input_grad
        return (_where(self.cond, g, zero) if nx else None), (_where(self.cond, zero, g) if ny else None)


# ============================================================== elementwise unary
class Neg(Function):
    """z = -x"""

    def forward(self, x):
        return kernels.unary("neg", x)

    def backward(self, g):
        return -g


class Exp(Function):
    """z = e^x;  dz/dx = z"""

    def forward(self, x):
        return kernels.unary("exp", x)

    def backward(self, g):
        return g * self.output()


class Log(Function):
    """z = log x;  dz/dx = 1/x"""

    def forward(self, x):
        return kernels.unary("log", x)

    def backward(self, g):
        return g / self.inputs[0]


class Sqrt(Function):
    """z = sqrt x;  dz/dx = 1 / (2 z)"""

    def forward(self, x):
        return kernels.unary("sqrt", x)

    def backward(self, g):
        return g / (self.output() * 2.0)


class Relu(Function):
    """z = max(x, 0);  dz/dx = 1 where x > 0 else 0
    (the backward is one fused kernel; in Tensor ops when the backward pass is recorded)"""

    def forward(self, x):
        return kernels.unary("relu", x)

    def backward(self, g):
        x = self.inputs[0]
        if _recording() or not _fusable(g, x):
            return _where(kernels.compare("gt", x.data, np.zeros((), x.dtype)), g, _zero(g.dtype))
        return _const(kernels.unary_backward("relu", x.data, _c_order(g.data)))


class Sigmoid(Function):
    """z = 1 / (1 + e^-x);  dz/dx = z (1 - z)   (fused backward, as Relu)"""

    def forward(self, x):
        return kernels.unary("sigmoid", x)

    def backward(self, g):
        z = self.output()
        if _recording() or not _fusable(g, z):
            return g * z * (1.0 - z)
        return _const(kernels.unary_backward("sigmoid", z.data, _c_order(g.data)))


class Tanh(Function):
    """z = tanh x;  dz/dx = 1 - z^2   (fused backward, as Relu)"""

    def forward(self, x):
        return kernels.unary("tanh", x)

    def backward(self, g):
        z = self.output()
        if _recording() or not _fusable(g, z):
            return g * (1.0 - z * z)
        return _const(kernels.unary_backward("tanh", z.data, _c_order(g.data)))


class Abs(Function):
    """z = |x|;  dz/dx = sign(x) (0 at 0, as torch)"""

    def forward(self, x):
        return kernels.unary("abs", x)

    def backward(self, g):
        return g * _const(np.sign(self.inputs[0].data))


class PowScalar(Function):
    """z = x^p for a constant p;  dz/dx = p x^(p-1)"""

    def forward(self, x):
        return kernels.pow_scalar(x, self.p)

    def backward(self, g):
        if self.p == 0.0:
            return g * 0.0
        if self.p == 1.0:
            return g
        return g * self.p * self.inputs[0] ** (self.p - 1.0)


class Clip(Function):
    """z = min(max(x, lo), hi);  dz/dx = 1 where lo <= x <= hi else 0"""

    def forward(self, x):
        return kernels.clip(x, self.lo, self.hi)

    def backward(self, g):
        x = self.inputs[0].data
        inside = np.ones(x.shape, dtype=bool)
        if self.lo is not None:
            inside &= kernels.compare("ge", x, np.asarray(self.lo, dtype=x.dtype))
        if self.hi is not None:
            inside &= kernels.compare("le", x, np.asarray(self.hi, dtype=x.dtype))
        return _where(inside, g, _zero(g.dtype))


class Cast(Function):
    """z = x converted to another float dtype; the gradient converts back"""

    def forward(self, x):
        self.in_dtype = x.dtype
        return x.astype(self.dtype)

    def backward(self, g):
        return g.to(self.in_dtype)


# ============================================================== reductions
class Sum(Function):
    """z = sum of x over axes.  Adjoint of Expand: the gradient is broadcast back."""

    def forward(self, x):
        return kernels.sum(x, self.axes, self.keepdims)

    def backward(self, g):
        in_shape, axes = self.inputs[0].data.shape, self.axes
        if self.keepdims or axes[-1] == len(axes) - 1:
            # g already broadcasts to in_shape: the reduced axes are kept as 1s, or they
            # were the leading ones (axes is sorted), which broadcasting prepends.
            return Expand.apply(g, shape=in_shape)
        kept = tuple(1 if i in axes else s for i, s in enumerate(in_shape))
        return Expand.apply(g, shape=in_shape, src_shape=kept)


class Max(Function):
    """z = max of x over axes; the gradient is split evenly among tied maxima"""

    def forward(self, x):
        return kernels.max(x, self.axes, self.keepdims)

    def backward(self, g):
        x = self.inputs[0].data
        kept = tuple(1 if i in self.axes else s for i, s in enumerate(x.shape))
        is_max = kernels.compare("eq", x, self.out_data.reshape(kept)).astype(x.dtype)
        share = is_max / kernels.sum(is_max, self.axes, True)
        return g.reshape(kept) * _const(share)


# ============================================================== movement
class Reshape(Function):
    """z = x viewed with another shape"""

    def forward(self, x):
        self.in_shape = x.shape
        return x.reshape(self.shape)

    def backward(self, g):
        return g.reshape(self.in_shape)


class Permute(Function):
    """z = x with axes reordered; the gradient is permuted back"""

    def forward(self, x):
        return kernels.contiguous(x.transpose(self.axes))

    def backward(self, g):
        return g.permute(*np.argsort(self.axes).tolist())


class Expand(Function):
    """z = x broadcast to shape (x first viewed as src_shape, e.g. with reduced axes
    restored as 1s).  Adjoint of Sum: the gradient is summed back."""
    src_shape = None

    def forward(self, x):
        return kernels.expand(x if self.src_shape is None else x.reshape(self.src_shape), self.shape)

    def backward(self, g):
        in_shape = self.inputs[0].data.shape
        return g.sum_to(in_shape if self.src_shape is None else self.src_shape).reshape(in_shape)


class GetItem(Function):
    """z = x[index].  Adjoint of ScatterAdd: the gradient is scatter-added back."""

    def forward(self, x):
        self.in_shape = x.shape
        return np.asarray(x[self.index], order="C")

    def backward(self, g):
        return ScatterAdd.apply(g, index=self.index, shape=self.in_shape)


class ScatterAdd(Function):
    """z = zeros(shape) with g added at index (repeated indices accumulate).
    Adjoint of GetItem: its gradient is the gradient read back at index."""

    def forward(self, g):
        # Flat position in `shape` of every element picked by index, in g's layout.
        positions = np.arange(math.prod(self.shape), dtype=np.int64).reshape(self.shape)[self.index]
        return kernels.scatter_add(self.shape, np.asarray(positions, order="C"), g)

    def backward(self, gz):
        return GetItem.apply(gz, index=self.index)


class Cat(Function):
    """z = concatenation of inputs along axis; each gradient is its slice of g"""

    def forward(self, *xs):
        self.sizes = [x.shape[self.axis] for x in xs]
        return np.concatenate(xs, axis=self.axis)

    def backward(self, g):
        grads, start = [], 0
        lead = (slice(None),) * self.axis
        for size, need in zip(self.sizes, self.needs_input_grad):
            grads.append(g[lead + (slice(start, start + size),)] if need else None)
            start += size
        return tuple(grads)


# ============================================================== linear algebra
class MatMul(Function):
    """z = op(a) @ op(b), op = transpose of the last two axes where ta / tb is set.
    dz/d op(a) = g @ op(b)^T,  dz/d op(b) = op(a)^T @ g; the flags absorb every
    transpose, so no transposed copy is made. GEMM is numpy's BLAS."""
    ta = False
    tb = False

    def forward(self, a, b):
        return blas.matmul(a.swapaxes(-1, -2) if self.ta else a, b.swapaxes(-1, -2) if self.tb else b)

    def backward(self, g):
        a, b = self.inputs
        ta, tb = self.ta, self.tb
        na, nb = self.needs_input_grad
        ga = gb = None
        if na:
            ga = MatMul.apply(b, g, ta=tb, tb=True) if ta else MatMul.apply(g, b, tb=not tb)
        if nb:
            gb = MatMul.apply(g, a, ta=True, tb=ta) if tb else MatMul.apply(a, g, ta=not ta)
        return ga, gb


# ============================================================== softmax
class Softmax(Function):
    """z = exp(x) / sum(exp(x)) along axis;  dx = z * (g - sum(g * z))
    (one fused kernel; in Tensor ops when the backward pass is recorded)."""

    def forward(self, x):
        return kernels.softmax(x, self.axis)

    def backward(self, g):
        z = self.output()
        if _recording() or not _fusable(g, z):
            return z * (g - (g * z).sum(self.axis, keepdims=True))
        return _const(kernels.softmax_backward(z.data, _c_order(g.data), self.axis))


class LogSoftmax(Function):
    """z = x - log(sum(exp(x))) along axis;  dx = g - exp(z) * sum(g)
    (one fused kernel; in Tensor ops when the backward pass is recorded)."""

    def forward(self, x):
        return kernels.log_softmax(x, self.axis)

    def backward(self, g):
        z = self.output()
        if _recording() or not _fusable(g, z):
            return g - z.exp() * g.sum(self.axis, keepdims=True)
        return _const(kernels.log_softmax_backward(z.data, _c_order(g.data), self.axis))


def _c_order(a):
    """a as a C-contiguous array (a copy only when needed; unlike np.ascontiguousarray,
    a 0-d array stays 0-d)."""
    return a if a.flags.c_contiguous else np.array(a, order="C")


def _fusable(g, z):
    """A fused backward kernel takes g when it has z's shape and dtype (the engine may
    hand a broadcast or differently typed upstream gradient)."""
    return g.shape == z.shape and g.dtype == z.dtype


# ============================================================== fused
class CrossEntropy(Function):
    """loss_i = (1 - s)(lse_i - x[i, y_i]) + s (lse_i - mean_j x[i, j]), lse_i = log sum_j e^x[i, j]
    (labels y and smoothing s are attributes). One fused kernel each way:
    grad_x = g_i (softmax(x)_ij - (1 - s)[j == y_i] - s / C). When the backward pass is
    itself recorded (create_graph) the same formula runs in Tensor ops, so higher
    derivatives are exact."""

    def forward(self, x):
        loss, self.lse_parts = kernels.cross_entropy_forward(x, self.labels, self.smoothing)
        return loss

    def backward(self, g):
        x = self.inputs[0]
        n, c = x.shape
        if _recording():  # create_graph=True: differentiable formula
            target = np.full((n, c), self.smoothing / c, dtype=x.dtype)
            target[np.arange(n), self.labels] += 1.0 - self.smoothing
            return (x.softmax(1) - _const(target)) * g.reshape(n, 1)
        return _const(kernels.cross_entropy_backward(x.data, self.labels, self.lse_parts,
                                                     np.asarray(g.data, order="C"), self.smoothing))


def _bn_axes(ndim):
    return (0,) + tuple(range(2, ndim))


def _as_ncl(a):
    """(N, C, H, W) -> (N, C, H*W) view for the batch-norm kernels; (N, C) and (N, C, L) pass."""
    # NOTE: not -1: numpy cannot infer it for an empty batch (N = 0 in eval mode)
    return a.reshape(a.shape[0], a.shape[1], math.prod(a.shape[2:])) if a.ndim > 3 else a


class BatchNormTrain(Function):
    """y = gamma * x_hat + beta, x_hat = (x - mean) * inv_std, batch statistics per
    channel over M = N*H*W values (fused Cython kernel; running stats updated in place
    by the same call).

    backward: grad_x = gamma * inv_std * (grad_y - (grad_beta + x_hat * grad_gamma) / M),
    grad_gamma = sum grad_y * x_hat, grad_beta = sum grad_y: the fused backward kernel.
    When the backward pass is itself recorded (create_graph) the same formula runs in
    Tensor ops with mean and inv_std recomputed from x inside the graph, so higher
    derivatives are exact (saved statistics are never treated as constants)."""

    def forward(self, x, weight, bias):
        y, self.mean, self.inv_std = kernels.batch_norm_train(
            _as_ncl(x), weight, bias, self.running_mean, self.running_var, self.momentum, self.eps)
        return y.reshape(x.shape)

    def backward(self, grad_y):
        x, weight, bias = self.inputs
        if _recording():  # create_graph=True: differentiable formula
            return self._backward_composed(grad_y)
        grad_x, grad_gamma, grad_beta = kernels.batch_norm_backward(
            _as_ncl(x.data), _as_ncl(grad_y.data), self.mean, self.inv_std, weight.data)
        nx, nw, nb = self.needs_input_grad
        return (_const(grad_x.reshape(x.shape)) if nx else None,
                _const(grad_gamma) if nw else None, _const(grad_beta) if nb else None)

    def _backward_composed(self, grad_y):
        x, weight, _ = self.inputs
        axes, view = _bn_axes(x.ndim), (1, -1) + (1,) * (x.ndim - 2)
        m = x.size // x.shape[1]
        mean = x.mean(axes, keepdims=True)
        centred = x - mean
        inv_std = ((centred * centred).mean(axes, keepdims=True) + self.eps) ** -0.5
        x_hat = centred * inv_std
        grad_beta = grad_y.sum(axes)
        grad_gamma = (grad_y * x_hat).sum(axes)
        grad_x = (weight.reshape(view) * inv_std) * (
            grad_y - (grad_beta.reshape(view) + x_hat * grad_gamma.reshape(view)) / m)
        return grad_x, grad_gamma, grad_beta


class BatchNormEval(Function):
    """y = x * scale + shift per channel, scale = gamma / sqrt(running_var + eps),
    shift = beta - running_mean * scale (the fused inference map; running stats are
    constants).  grad_x = grad_y * scale, grad_gamma = sum grad_y * (x - running_mean) /
    sqrt(running_var + eps), grad_beta = sum grad_y."""

    def forward(self, x, weight, bias):
        return kernels.batch_norm_eval(_as_ncl(x), weight, bias, self.running_mean, self.running_var,
                                       self.eps).reshape(x.shape)

    def backward(self, grad_y):
        x, weight, _ = self.inputs
        axes, view = _bn_axes(x.ndim), (1, -1) + (1,) * (x.ndim - 2)
        inv_std = _const((1.0 / np.sqrt(self.running_var.astype(np.float64) + self.eps)).astype(x.dtype))
        nx, nw, nb = self.needs_input_grad
        grad_x = grad_y * (weight * inv_std).reshape(view) if nx else None
        grad_gamma = None
        if nw:
            x_hat = (x - _const(self.running_mean).reshape(view)) * inv_std.reshape(view)
            grad_gamma = (grad_y * x_hat).sum(axes)
        return grad_x, grad_gamma, (grad_y.sum(axes) if nb else None)


# ============================================================== convolution and pooling
# y = conv(x, w) is bilinear, so its two partial adjoints close under differentiation:
#   <gy, conv(x, w)> = <conv_grad_input(gy, w), x> = <conv_grad_weight(x, gy), w>.
# Conv2d's backward is expressed with ConvGradInput / ConvGradWeight, and their
# backwards with Conv2d and each other: every order of derivative works.
class Conv2d(Function):
    """y = conv2d(x, w) (+ b): PyTorch's cross-correlation, NCHW, weight (O, C, kh, kw)."""

    def forward(self, x, w, *b):
        return conv_kernels.conv2d_forward(x, w, b[0] if b else None, self.stride, self.padding, self.dilation)

    def backward(self, g):
        x, w = self.inputs[0], self.inputs[1]
        need = self.needs_input_grad
        args = dict(stride=self.stride, padding=self.padding, dilation=self.dilation)
        grads = (ConvGradInput.apply(g, w, x_shape=x.shape, **args) if need[0] else None,
                 ConvGradWeight.apply(x, g, w_shape=w.shape, **args) if need[1] else None)
        if len(self.inputs) == 3:
            grads += (g.sum((0, 2, 3)) if need[2] else None,)
        return grads


class ConvGradInput(Function):
    """grad_x = d<gy, conv(x, w)>/dx: col2im of w^T gy (linear in gy and in w)."""

    def forward(self, gy, w):
        return conv_kernels.conv2d_grad_input(gy, w, self.x_shape, self.stride, self.padding, self.dilation)

    def backward(self, u):
        gy, w = self.inputs
        args = dict(stride=self.stride, padding=self.padding, dilation=self.dilation)
        ng, nw = self.needs_input_grad
        return (Conv2d.apply(u, w, **args) if ng else None,
                ConvGradWeight.apply(u, gy, w_shape=w.shape, **args) if nw else None)


class ConvGradWeight(Function):
    """grad_w = d<gy, conv(x, w)>/dw: sum over the batch of gy im2col(x)^T."""

    def forward(self, x, gy):
        return conv_kernels.conv2d_grad_weight(x, gy, self.w_shape, self.stride, self.padding, self.dilation)

    def backward(self, u):
        x, gy = self.inputs
        args = dict(stride=self.stride, padding=self.padding, dilation=self.dilation)
        nx, ng = self.needs_input_grad
        return (ConvGradInput.apply(gy, u, x_shape=x.shape, **args) if nx else None,
                Conv2d.apply(x, u, **args) if ng else None)


class MaxPool2d(Function):
    """y = max over each window (padding counts as -inf); the kernel records the argmax
    of every window, and the gradient goes to that element only."""

    def forward(self, x):
        y, self.argmax = conv_kernels.max_pool2d_forward(x, self.kernel_size, self.stride, self.padding,
                                                         self.dilation)
        return y

    def backward(self, g):
        return MaxPool2dGrad.apply(g, argmax=self.argmax, x_shape=self.inputs[0].shape)


class MaxPool2dGrad(Function):
    """grad_x = g scattered to each window's argmax (overlaps accumulate). Linear in g;
    its adjoint reads u back at the argmax positions."""

    def forward(self, g):
        return conv_kernels.max_pool2d_backward(g, self.argmax, self.x_shape)

    def backward(self, u):
        # argmax is -1 for a window made only of padding: it received nothing, reads 0.
        n, c, h, w = self.x_shape
        plane = (np.arange(n * c, dtype=np.int64) * (h * w)).reshape(n, c, 1, 1)
        picked = u.reshape(-1)[plane + np.maximum(self.argmax, 0)]
        empty = self.argmax < 0
        return _where(empty, _zero(u.dtype), picked) if empty.any() else picked


class AvgPool2d(Function):
    """y = mean over each window (torch's count_include_pad rule). Linear."""

    def forward(self, x):
        return conv_kernels.avg_pool2d_forward(x, self.kernel_size, self.stride, self.padding,
                                               self.count_include_pad)

    def backward(self, g):
        return AvgPool2dGrad.apply(g, x_shape=self.inputs[0].shape, kernel_size=self.kernel_size,
                                   stride=self.stride, padding=self.padding,
                                   count_include_pad=self.count_include_pad)


class AvgPool2dGrad(Function):
    """grad_x of average pooling; its adjoint is average pooling itself."""

    def forward(self, g):
        return conv_kernels.avg_pool2d_backward(g, self.x_shape, self.kernel_size, self.stride, self.padding,
                                                self.count_include_pad)

    def backward(self, u):
        return AvgPool2d.apply(u, kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                               count_include_pad=self.count_include_pad)
