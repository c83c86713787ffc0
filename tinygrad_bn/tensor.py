"""Tensor: a C-contiguous numpy array plus the autograd bookkeeping.

Every differentiable method is a thin wrapper over a Function in functions.py
(the derivative table); composite methods (mean, var, softmax of a slice, ...)
are written with those primitives so their gradients come from the engine.
"""
import math
import numbers

import numpy as np

from . import kernels
from .random import generator

float32 = np.float32
float64 = np.float64
int64 = np.int64
bool_ = np.bool_
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_norm_axis = np.lib.array_utils.normalize_axis_index  # raises numpy's AxisError
_INT64_MAX = int(np.iinfo(np.int64).max)
_MAX_BYTES = int(np.iinfo(np.intp).max)
_ALL_AXES = tuple(tuple(range(nd)) for nd in range(65))  # axis=None, by ndim (numpy allows 64)


def _check_shape(shape, dtype, what):
    """ValueError unless `shape` can hold an array of `dtype`: no negative sizes, and
    (numpy's rule) the itemsize times the product of the non-zero sizes fits in intp."""
    if any(s < 0 for s in shape):
        raise ValueError(f"{what}: sizes must be >= 0, got shape {shape}")
    nbytes = np.dtype(dtype).itemsize * math.prod(s for s in shape if s)
    if nbytes > _MAX_BYTES:
        raise ValueError(f"{what}: shape {shape} would need {nbytes} bytes of {np.dtype(dtype)}, "
                         f"expected at most {_MAX_BYTES} (the largest array numpy can index)")


def _to_array(data, dtype=None):
    """Convert user data to a fresh C-contiguous array following DESIGN's dtype rules.

    numpy float arrays keep their dtype (float16 becomes float32); Python floats and
    lists of them become float32; integers become int64; bools stay bool.
    Raises TypeError for complex, object, string or other unsupported data.
    """
    if isinstance(data, Tensor):
        arr = data.data
    elif isinstance(data, np.ndarray):
        arr = data
    else:
        try:
            arr = np.asarray(data)
        except (ValueError, TypeError) as e:
            raise TypeError(f"Tensor data must be a number, a (nested) list of numbers or an array: {e}") from None
        if arr.dtype == np.float64 and dtype is None:
            arr = arr.astype(np.float32)
    kind = arr.dtype.kind
    if kind == "f":
        natural = arr.dtype if arr.dtype in _FLOATS else np.dtype(np.float32)
    elif kind in "iu":
        natural = np.dtype(np.int64)
    elif kind == "b":
        natural = np.dtype(np.bool_)
    else:
        raise TypeError(f"Tensor data must be float, int or bool, got dtype {arr.dtype}")
    target = natural if dtype is None else np.dtype(dtype)
    if target.kind not in "fib" or (target.kind == "f" and target not in _FLOATS):
        raise TypeError(f"dtype must be float32, float64, int64 or bool, got {target}")
    if kind == "u" and target.kind == "i" and arr.size and arr.max() > _INT64_MAX:
        # NOTE: the cast below would wrap silently (2**64 - 1 -> -1).
        raise ValueError(f"Tensor data of dtype {arr.dtype} must fit in int64 (values <= {_INT64_MAX}), "
                         f"got the value {arr.max()}")
    # Always copy: a Tensor never aliases the caller's array (optimisers update in place).
    return np.array(arr, dtype=target, order="C", copy=True)


class Tensor:
    """An n-dimensional array that can record the operations applied to it.

    Tensor(data, requires_grad=False, dtype=None): data is a number, a nested list,
    a numpy array (any strides: copied to C order) or a Tensor. Only float tensors
    (float32, float64) can require grad; int64 tensors serve as labels and indices.
    Raises TypeError for unsupported data or dtypes.
    """

    __slots__ = ("data", "requires_grad", "grad", "_ctx", "_retains_grad", "__weakref__")
    __array_ufunc__ = None  # numpy defers to our reflected operators: np_array * tensor -> Tensor

    def __init__(self, data, requires_grad=False, dtype=None):
        self.data = _to_array(data, dtype)
        self.grad = None
        self._ctx = None
        self._retains_grad = False
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _make(cls, data, ctx, requires_grad):
        # Internal constructor for trusted arrays (kernel outputs): no copy, no checks.
        t = object.__new__(cls)
        t.data = data
        t.grad = None
        t._ctx = ctx
        t._retains_grad = False
        t.requires_grad = requires_grad
        return t

    # ---------------------------------------------------------------- attributes
    shape = property(lambda self: self.data.shape, doc="Tuple of dimension sizes.")
    ndim = property(lambda self: self.data.ndim, doc="Number of dimensions.")
    dtype = property(lambda self: self.data.dtype, doc="numpy dtype of the data.")
    size = property(lambda self: self.data.size, doc="Number of elements.")

    def numel(self):
        """Number of elements."""
        return self.data.size

    @property
    def is_leaf(self):
        """True for tensors created by the user (not by an op that recorded a graph)."""
        return self._ctx is None

    @property
    def grad_fn(self):
        """The Function that produced this tensor, or None for leaves."""
        return self._ctx

    @property
    def T(self):
        """All axes reversed (numpy's .T)."""
        return self.transpose()

    def numpy(self):
        """The underlying C-contiguous numpy array (shared, not copied)."""
        return self.data

    def item(self):
        """The value of a one-element tensor as a Python number; ValueError otherwise."""
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with exactly 1 element, got shape {self.shape}")
        return self.data.item()

    def tolist(self):
        return self.data.tolist()

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.data.shape[0]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __bool__(self):
        if self.data.size != 1:
            raise ValueError(f"the truth value of a tensor with {self.data.size} elements is ambiguous")
        return bool(self.data)

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __repr__(self):
        arr = np.array2string(self.data, separator=", ", prefix="Tensor(")
        extra = ""
        if self.dtype != np.float32:
            extra += f", dtype={self.dtype}"
        if self._ctx is not None:
            extra += f", grad_fn={type(self._ctx).__name__}"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        return f"Tensor({arr}{extra})"

    __hash__ = object.__hash__

    # ---------------------------------------------------------------- autograd
    def requires_grad_(self, requires_grad=True):
        """Set requires_grad in place (leaves only); returns self.

        Raises TypeError for non-float tensors, RuntimeError for non-leaves.
        """
        if requires_grad and self.data.dtype not in _FLOATS:
            raise TypeError(f"only float32/float64 tensors can require grad, got dtype {self.dtype}")
        if self._ctx is not None and not requires_grad:
            raise RuntimeError("requires_grad cannot be turned off on a non-leaf tensor; use detach()")
        self.requires_grad = bool(requires_grad)
        return self

    def retain_grad(self):
        """Keep .grad on this non-leaf tensor after backward (leaves keep it anyway)."""
        if not self.requires_grad:
            raise RuntimeError("retain_grad() on a tensor that does not require grad")
        if self._ctx is not None:
            self._retains_grad = True
        return self

    def detach(self):
        """A tensor sharing this data but cut from the graph (requires_grad False)."""
        return Tensor._make(self.data, None, False)

    def backward(self, gradient=None, retain_graph=False, create_graph=False):
        """Accumulate d(self)/d(leaf) into every leaf's .grad.

        gradient: Tensor of self's shape (required unless self has one element).
        retain_graph: keep the graph for another backward (default: free it).
        create_graph: record the backward pass so gradients can be differentiated.
        Raises RuntimeError if self does not require grad, if the graph was freed by an
        earlier backward, or if gradient is missing for a non-scalar.
        """
        _autograd.run_backward((self,), (gradient,), retain_graph or create_graph, create_graph)

    def zero_grad(self):
        self.grad = None

    # ---------------------------------------------------------------- dtype
    def to(self, dtype):
        """This tensor with another dtype (differentiable between float dtypes)."""
        dtype = np.dtype(dtype)
        if dtype == self.dtype:
            return self
        if dtype in _FLOATS and self.dtype in _FLOATS:
            return F.Cast.apply(self, dtype=dtype)
        return Tensor._make(self.data.astype(dtype), None, False)

    astype = to

    def float(self):
        """float32 copy (differentiable)."""
        return self.to(np.float32)

    def double(self):
        """float64 copy (differentiable)."""
        return self.to(np.float64)

    def long(self):
        return self.to(np.int64)

    # ---------------------------------------------------------------- binary ops
    def _operands(self, other, reverse=False):
        """Both operands as Tensors of one dtype (DESIGN's promotion rules)."""
        if isinstance(other, Tensor):
            a, b = self, other
            if a.dtype != b.dtype:
                fa, fb = a.dtype in _FLOATS, b.dtype in _FLOATS
                if fa and fb:
                    a, b = a.to(np.float64), b.to(np.float64)
                elif fa:
                    b = b.to(a.dtype)
                elif fb:
                    a = a.to(b.dtype)
                else:
                    common = np.result_type(a.dtype, b.dtype)
                    a, b = a.to(common), b.to(common)
        elif isinstance(other, (numbers.Number, np.number, np.bool_)) and not isinstance(other, complex):
            # Python scalars take the tensor's dtype (torch's rule: x * 2.0 stays float32).
            dt = self.dtype
            if dt not in _FLOATS and isinstance(other, (float, np.floating)):
                dt = np.dtype(np.float32)
                a = self.to(dt)
            else:
                a = self
            b = Tensor._make(np.asarray(other, dtype=dt), None, False)
        else:
            a, b = self, Tensor(other)
            return a._operands(b, reverse)
        return (b, a) if reverse else (a, b)

    def _binary(self, fn, other, reverse=False):
        dt = self.data.dtype
        if type(other) is Tensor and other.data.dtype is dt and dt.kind == "f":
            return fn.apply(other, self) if reverse else fn.apply(self, other)  # the common case, kept short
        a, b = self._operands(other, reverse)
        if a.dtype not in _FLOATS:
            # Integer/bool arithmetic (labels, counts): numpy, not differentiable.
            return Tensor._make(np.asarray(fn.numpy_op(a.data, b.data)), None, False)
        return fn.apply(a, b)

    def __add__(self, other): return self._binary(F.Add, other)
    def __radd__(self, other): return self._binary(F.Add, other, True)
    def __sub__(self, other): return self._binary(F.Sub, other)
    def __rsub__(self, other): return self._binary(F.Sub, other, True)
    def __mul__(self, other): return self._binary(F.Mul, other)
    def __rmul__(self, other): return self._binary(F.Mul, other, True)
    def __truediv__(self, other): return self._binary(F.Div, other)
    def __rtruediv__(self, other): return self._binary(F.Div, other, True)
    def __matmul__(self, other): return self.matmul(other)
    def __rmatmul__(self, other): return Tensor(other, dtype=self.dtype).matmul(self)
    def __neg__(self): return F.Neg.apply(self) if self.dtype in _FLOATS else Tensor._make(-self.data, None, False)
    def __pos__(self): return self

    def __pow__(self, other):
        if isinstance(other, (numbers.Real, np.number)) and not isinstance(other, Tensor):
            if self.dtype not in _FLOATS:
                return Tensor._make(np.asarray(self.data ** other), None, False)
            return F.PowScalar.apply(self, p=float(other))
        return self._binary(F.Pow, other)

    def __rpow__(self, other): return self._binary(F.Pow, other, True)

    def maximum(self, other):
        """Elementwise max; where equal, each side gets half the gradient."""
        return self._binary(F.Maximum, other)

    def minimum(self, other):
        """Elementwise min; where equal, each side gets half the gradient."""
        return self._binary(F.Minimum, other)

    # comparisons: not differentiable, bool result
    def _compare(self, op, other):
        a, b = self._operands(other)
        if a.dtype in _FLOATS:
            return Tensor._make(kernels.compare(op, a.data, b.data), None, False)
        return Tensor._make(np.asarray(_NP_COMPARE[op](a.data, b.data)), None, False)

    def __lt__(self, other): return self._compare("lt", other)
    def __le__(self, other): return self._compare("le", other)
    def __gt__(self, other): return self._compare("gt", other)
    def __ge__(self, other): return self._compare("ge", other)
    def __eq__(self, other): return self._compare("eq", other)
    def __ne__(self, other): return self._compare("ne", other)

    # ---------------------------------------------------------------- unary ops
    def _float_only(self, name):
        if self.dtype not in _FLOATS:
            raise TypeError(f"{name} expects a float32/float64 tensor, got dtype {self.dtype}")

    def exp(self):
        """e ** x."""
        self._float_only("exp")
        return F.Exp.apply(self)

    def log(self):
        """Natural log (log(0) = -inf, log(<0) = nan, as numpy)."""
        self._float_only("log")
        return F.Log.apply(self)

    def sqrt(self):
        self._float_only("sqrt")
        return F.Sqrt.apply(self)

    def relu(self):
        """max(x, 0); the gradient at 0 is 0 (as torch)."""
        self._float_only("relu")
        return F.Relu.apply(self)

    def sigmoid(self):
        """1 / (1 + e^-x), stable for |x| up to 1e4."""
        self._float_only("sigmoid")
        return F.Sigmoid.apply(self)

    def tanh(self):
        self._float_only("tanh")
        return F.Tanh.apply(self)

    def abs(self):
        """|x|; the gradient at 0 is 0 (as torch)."""
        if self.dtype not in _FLOATS:
            return Tensor._make(np.abs(self.data), None, False)
        return F.Abs.apply(self)

    def neg(self):
        return -self

    def pow(self, other):
        return self ** other

    def square(self):
        return self * self

    def clip(self, min=None, max=None):
        """Clamp into [min, max] (either may be None); gradient 1 inside, 0 outside."""
        self._float_only("clip")
        if min is None and max is None:
            raise ValueError("clip needs at least one of min and max")
        return F.Clip.apply(self, lo=min, hi=max)

    clamp = clip

    # ---------------------------------------------------------------- reductions
    def _axes(self, axis):
        """Normalise axis (None, int or tuple; negatives allowed) to a sorted tuple."""
        nd = self.data.ndim
        if axis is None:
            return _ALL_AXES[nd]
        axes = axis if isinstance(axis, (tuple, list)) else (axis,)
        out = []
        for ax in axes:
            if isinstance(ax, bool) or not isinstance(ax, (int, np.integer)):
                raise TypeError(f"axis must be an int or a tuple of ints, got {type(ax).__name__}")
            out.append(int(_norm_axis(int(ax), nd)) if nd else _axis0(ax))
        if len(set(out)) != len(out):
            raise ValueError(f"duplicate value in axis: {axis}")
        return tuple(sorted(out))

    def sum(self, axis=None, keepdims=False):
        """Sum over axis (None: all; int or tuple, negatives allowed)."""
        if self.data.dtype not in _FLOATS:
            return Tensor._make(np.asarray(self.data.sum(axis=_np_axis(axis), keepdims=keepdims)), None, False)
        axes = self._axes(axis)
        if not axes:
            return self
        return F.Sum.apply(self, axes=axes, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        """Arithmetic mean over axis; nan for an empty reduction (as numpy)."""
        self._float_only("mean")
        axes = self._axes(axis)
        n = _count(self.shape, axes)
        # NOTE: divide, not multiply by 1/n: the reciprocal rounds (to float32 too), so the
        # mean of a constant would miss the constant (numpy divides)
        return self.sum(axes, keepdims) / n if n else self.sum(axes, keepdims) * float("nan")

    def var(self, axis=None, keepdims=False, correction=0):
        """Variance over axis: sum((x - mean)^2) / (n - correction). correction=0 is the
        biased (population) variance, 1 the unbiased one. The mean stays in the graph,
        so second derivatives are right."""
        self._float_only("var")
        axes = self._axes(axis)
        n = _count(self.shape, axes)
        centred = self - self.mean(axes, keepdims=True)
        denom = n - correction
        squares = (centred * centred).sum(axes, keepdims)
        return squares / denom if denom > 0 else squares * float("nan")

    def std(self, axis=None, keepdims=False, correction=0):
        """Standard deviation: sqrt(var(axis, keepdims, correction))."""
        return self.var(axis, keepdims, correction).sqrt()

    def max(self, axis=None, keepdims=False):
        """Maximum over axis; tied maxima share the gradient evenly (torch.amax)."""
        if self.data.size == 0:
            raise ValueError(f"max of an empty tensor (shape {self.shape}) has no identity")
        if self.dtype not in _FLOATS:
            return Tensor._make(np.asarray(self.data.max(axis=_np_axis(axis), keepdims=keepdims)), None, False)
        axes = self._axes(axis)
        if not axes:
            return self
        return F.Max.apply(self, axes=axes, keepdims=keepdims)

    def min(self, axis=None, keepdims=False):
        """Minimum over axis; tied minima share the gradient evenly."""
        if self.dtype not in _FLOATS:
            if self.data.size == 0:
                raise ValueError(f"min of an empty tensor (shape {self.shape}) has no identity")
            return Tensor._make(np.asarray(self.data.min(axis=_np_axis(axis), keepdims=keepdims)), None, False)
        return -((-self).max(axis, keepdims))

    def argmax(self, axis=None, keepdims=False):
        """int64 index of the (first) maximum; of the flattened tensor when axis is None.
        Not differentiable."""
        if self.data.size == 0:
            raise ValueError(f"argmax of an empty tensor (shape {self.shape})")
        if axis is not None:
            axis = self._axes(axis)[0] if self.ndim else axis
        if self.dtype in _FLOATS:
            out = kernels.argmax(self.data, axis)
        else:
            out = np.asarray(np.argmax(self.data, axis=axis))
        if keepdims and axis is not None:
            out = np.expand_dims(out, axis)
        return Tensor._make(np.asarray(out, dtype=np.int64, order="C"), None, False)

    def argmin(self, axis=None, keepdims=False):
        """int64 index of the (first) minimum. Not differentiable."""
        return (-self.detach()).argmax(axis, keepdims) if self.dtype in _FLOATS else \
            Tensor._make(np.asarray(np.argmin(self.data, axis=axis), dtype=np.int64), None, False)

    def softmax(self, axis=-1):
        """exp(x) / sum(exp(x)) along axis, stable for logits of magnitude 1e4."""
        self._float_only("softmax")
        return F.Softmax.apply(self, axis=self._axes(axis)[0] if self.ndim else 0)

    def log_softmax(self, axis=-1):
        """x - logsumexp(x) along axis, stable for logits of magnitude 1e4."""
        self._float_only("log_softmax")
        return F.LogSoftmax.apply(self, axis=self._axes(axis)[0] if self.ndim else 0)

    def logsumexp(self, axis=None, keepdims=False):
        """log(sum(exp(x))) along axis, computed stably (max subtracted)."""
        axes = self._axes(axis)
        m = self.detach().max(axes, keepdims=True)
        out = (self - m).exp().sum(axes, keepdims=True).log() + m
        return out if keepdims else out.reshape(_reduced_shape(self.shape, axes))

    # ---------------------------------------------------------------- movement
    def reshape(self, *shape):
        """Same data in a new shape (one -1 allowed); ValueError if sizes differ."""
        shape = _shape_arg(shape)
        new_shape = _resolve_shape(self.shape, shape)
        if new_shape == self.shape:
            return self
        if self.data.size == 0:  # 0 elements match any shape with a 0 in it, however large
            _check_shape(new_shape, self.dtype, "reshape")
        return F.Reshape.apply(self, shape=new_shape)

    view = reshape

    def transpose(self, *axes):
        """Permute axes; no arguments reverses them (numpy). transpose(i, j) with two
        axes of a >2-D tensor swaps them (torch's convention)."""
        nd = self.ndim
        axes = _shape_arg(axes) if axes else tuple(range(nd))[::-1]
        if len(axes) == 2 and nd != 2:
            i, j = (int(_norm_axis(a, nd)) for a in axes)
            perm = list(range(nd))
            perm[i], perm[j] = perm[j], perm[i]
            axes = tuple(perm)
        return self.permute(*axes)

    def permute(self, *axes):
        """Reorder axes: out.shape[i] = self.shape[axes[i]]. ValueError unless axes is a
        permutation of range(ndim)."""
        axes = _shape_arg(axes)
        nd = self.ndim
        if len(axes) != nd:
            raise ValueError(f"permute: expected {nd} axes for a tensor of shape {self.shape}, got {axes}")
        norm = tuple(int(_norm_axis(a, nd)) for a in axes)
        if sorted(norm) != list(range(nd)):
            raise ValueError(f"permute: axes {axes} are not a permutation of range({nd})")
        if norm == tuple(range(nd)):
            return self
        return F.Permute.apply(self, axes=norm)

    def swapaxes(self, a, b):
        """Exchange two axes."""
        perm = list(range(self.ndim))
        a, b = _norm_axis(a, self.ndim), _norm_axis(b, self.ndim)
        perm[a], perm[b] = perm[b], perm[a]
        return self.permute(*perm)

    def expand(self, *shape):
        """Broadcast to shape (may add leading dims; -1 keeps a size). Materialises a copy."""
        shape = _shape_arg(shape)
        lead = len(shape) - self.ndim
        if lead < 0:
            raise ValueError(f"expand: target {shape} has fewer dims than the tensor's shape {self.shape}")
        target = tuple(self.shape[i - lead] if s == -1 and i >= lead else s for i, s in enumerate(shape))
        for i, s in enumerate(self.shape):
            if s != 1 and s != target[i + lead]:
                raise ValueError(f"expand: cannot expand shape {self.shape} to {shape}: "
                                 f"dimension {i} has size {s}, expected 1 or {target[i + lead]}")
        if target == self.shape:
            return self
        _check_shape(target, self.dtype, "expand")
        return F.Expand.apply(self, shape=target)

    def broadcast_to(self, shape):
        return self.expand(*shape)

    def sum_to(self, shape):
        """Sum broadcast dimensions away so the result has `shape` (the adjoint of expand)."""
        shape = tuple(shape)
        if self.shape == shape:
            return self
        lead = self.ndim - len(shape)
        axes = tuple(range(lead)) + tuple(i + lead for i, s in enumerate(shape) if s == 1 and self.shape[i + lead] != 1)
        out = self.sum(axes, keepdims=True) if axes else self
        return out.reshape(shape)

    def squeeze(self, axis=None):
        """Remove size-1 axes (all of them, or the given ones). ValueError if a given axis is not 1."""
        if axis is None:
            return self.reshape(tuple(s for s in self.shape if s != 1))
        axes = self._axes(axis)
        for ax in axes:
            if self.shape[ax] != 1:
                raise ValueError(f"squeeze: axis {ax} has size {self.shape[ax]}, expected 1")
        return self.reshape(tuple(s for i, s in enumerate(self.shape) if i not in axes))

    def unsqueeze(self, axis):
        """Insert a size-1 axis at position axis (negative counts from the end of the result)."""
        nd = self.ndim + 1
        ax = int(_norm_axis(axis, nd))
        shape = list(self.shape)
        shape.insert(ax, 1)
        return self.reshape(tuple(shape))

    def flatten(self, start_dim=0, end_dim=-1):
        """Merge dims start_dim..end_dim into one."""
        if self.ndim == 0:
            return self.reshape(1)
        s = int(_norm_axis(start_dim, self.ndim))
        e = int(_norm_axis(end_dim, self.ndim))
        if s > e:
            raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
        return self.reshape(self.shape[:s] + (-1,) + self.shape[e + 1:])

    def contiguous(self):
        return self

    def __getitem__(self, idx):
        """Indexing with ints, slices (any step), None, Ellipsis, lists, integer arrays or
        int Tensors, bool masks. The backward scatter-adds (repeated indices accumulate)."""
        idx = _normalise_index(idx)
        if self.dtype not in _FLOATS:
            return Tensor._make(np.asarray(self.data[idx], order="C"), None, False)
        return F.GetItem.apply(self, index=idx)

    # ---------------------------------------------------------------- linear algebra
    def matmul(self, other):
        """numpy matmul semantics: 1-D operands are promoted then squeezed, batch dims
        broadcast. ValueError naming both shapes when inner dimensions differ."""
        a, b = self._operands(other)
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul: both operands need at least 1 dimension, got shapes {a.shape} and {b.shape}")
        k_a = a.shape[-1]
        k_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
        if k_a != k_b:
            raise ValueError(f"matmul: inner dimensions differ: {a.shape} @ {b.shape} "
                             f"(expected {k_a} rows in the right operand, got {k_b})")
        try:
            np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        except ValueError:
            raise ValueError(f"matmul: batch dimensions {a.shape[:-2]} and {b.shape[:-2]} do not broadcast") from None
        if a.dtype not in _FLOATS:
            return Tensor._make(np.matmul(a.data, b.data), None, False)
        a2 = a.reshape(1, k_a) if a.ndim == 1 else a
        b2 = b.reshape(k_b, 1) if b.ndim == 1 else b
        out = F.MatMul.apply(a2, b2)
        if a.ndim == 1 and b.ndim == 1:
            return out.reshape(())
        if a.ndim == 1:
            return out.reshape(out.shape[:-2] + out.shape[-1:])
        if b.ndim == 1:
            return out.reshape(out.shape[:-1])
        return out

    dot = matmul

    # ---------------------------------------------------------------- misc
    def where(self, cond, other):
        return where(cond, self, other)


_NP_COMPARE = {"lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
               "eq": np.equal, "ne": np.not_equal}


def _axis0(ax):
    if ax in (0, -1):
        return 0
    raise np.exceptions.AxisError(ax, 0)


def _np_axis(axis):
    return tuple(axis) if isinstance(axis, list) else axis


def _count(shape, axes):
    n = 1
    for a in axes:
        n *= shape[a]
    return n


def _reduced_shape(shape, axes):
    return tuple(s for i, s in enumerate(shape) if i not in axes)


def _shape_arg(shape):
    """Accept f(2, 3), f((2, 3)) and f([2, 3])."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"shape entries must be ints, got {type(s).__name__} in {shape}")
    return tuple(int(s) for s in shape)


def _resolve_shape(old, new):
    size = math.prod(old)
    if -1 not in new and math.prod(new) == size and min(new, default=0) >= 0:
        return new
    if sum(1 for s in new if s == -1) > 1:
        raise ValueError(f"reshape: only one dimension can be -1, got {new}")
    if any(s < -1 for s in new):
        raise ValueError(f"reshape: invalid shape {new}")
    known = math.prod(s for s in new if s != -1)
    if -1 in new:
        if known == 0 or size % known:
            raise ValueError(f"reshape: cannot reshape tensor of shape {old} ({size} elements) into {new}")
        new = tuple(size // known if s == -1 else s for s in new)
    elif known != size:
        raise ValueError(f"reshape: cannot reshape tensor of shape {old} ({size} elements) into {new} ({known} elements)")
    return new


def _normalise_index(idx):
    """Turn Tensors and lists inside an index into numpy arrays; validate index dtypes."""
    items = idx if isinstance(idx, tuple) else (idx,)
    out = []
    for it in items:
        if isinstance(it, Tensor):
            it = it.data
        elif isinstance(it, list):
            it = np.asarray(it)
        if isinstance(it, np.ndarray):
            if it.dtype.kind not in "iub":
                raise IndexError(f"tensors used as indices must be integer or bool, got dtype {it.dtype}")
        elif isinstance(it, (float, np.floating)):
            raise IndexError(f"only integers, slices, None, Ellipsis and integer/bool arrays are valid indices, got float {it}")
        out.append(it)
    return tuple(out) if isinstance(idx, tuple) else out[0]


# ---------------------------------------------------------------- free functions
def where(cond, x, y):
    """x where cond else y, broadcasting all three. cond: bool Tensor or array;
    x, y: Tensors or numbers. Gradient flows to the side that was picked."""
    cond_arr = cond.data if isinstance(cond, Tensor) else np.asarray(cond)
    if cond_arr.dtype != np.bool_:
        cond_arr = cond_arr.astype(bool)
    if not isinstance(x, Tensor) and not isinstance(y, Tensor):
        x = Tensor(x)
    if isinstance(x, Tensor):
        a, b = x._operands(y)
    else:
        b, a = y._operands(x)
    cond_arr = np.asarray(cond_arr, order="C")
    try:
        kernels.broadcast_size(cond_arr.shape, a.shape, b.shape)
    except ValueError as e:  # names the shapes: they do not broadcast, or to too many elements
        raise ValueError(f"where: shapes {cond_arr.shape}, {a.shape}, {b.shape} do not broadcast ({e})") from None
    if a.dtype not in _FLOATS:
        return Tensor._make(np.where(cond_arr, a.data, b.data), None, False)
    return F.Where.apply(a, b, cond=cond_arr)


def maximum(x, y):
    """Elementwise max of two tensors (or a tensor and a number)."""
    return x.maximum(y) if isinstance(x, Tensor) else Tensor(x).maximum(y) if not isinstance(y, Tensor) else y._binary(F.Maximum, x, True)


def minimum(x, y):
    """Elementwise min of two tensors (or a tensor and a number)."""
    return x.minimum(y) if isinstance(x, Tensor) else Tensor(x).minimum(y) if not isinstance(y, Tensor) else y._binary(F.Minimum, x, True)


def cat(tensors, axis=0):
    """Concatenate tensors along an existing axis. ValueError if the other dims differ."""
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("cat needs at least one tensor")
    nd = tensors[0].ndim
    if nd == 0:
        raise ValueError("cat: zero-dimensional tensors cannot be concatenated; use stack")
    ax = int(_norm_axis(axis, nd))
    for i, t in enumerate(tensors):
        if t.ndim != nd or t.shape[:ax] + t.shape[ax + 1:] != tensors[0].shape[:ax] + tensors[0].shape[ax + 1:]:
            raise ValueError(f"cat: tensor {i} has shape {t.shape}, expected {tensors[0].shape} except along axis {ax}")
    dt = np.result_type(*[t.dtype for t in tensors])
    tensors = [t.to(dt) for t in tensors]
    if dt not in _FLOATS:
        return Tensor._make(np.concatenate([t.data for t in tensors], axis=ax), None, False)
    return F.Cat.apply(*tensors, axis=ax)


def stack(tensors, axis=0):
    """Stack same-shaped tensors along a new axis."""
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("stack needs at least one tensor")
    for i, t in enumerate(tensors):
        if t.shape != tensors[0].shape:
            raise ValueError(f"stack: tensor {i} has shape {t.shape}, expected {tensors[0].shape}")
    ax = int(_norm_axis(axis, tensors[0].ndim + 1))
    return cat([t.unsqueeze(ax) for t in tensors], axis=ax)


# factories
def _factory_shape(shape, dtype, what):
    shape = _shape_arg(shape)
    _check_shape(shape, dtype, what)
    return shape


def zeros(*shape, dtype=float32, requires_grad=False):
    """Tensor of zeros; shape as ints or one tuple; float32 unless dtype is given."""
    return Tensor(np.zeros(_factory_shape(shape, dtype, "zeros"), dtype=dtype), requires_grad=requires_grad)


def ones(*shape, dtype=float32, requires_grad=False):
    """Tensor of ones; shape as ints or one tuple."""
    return Tensor(np.ones(_factory_shape(shape, dtype, "ones"), dtype=dtype), requires_grad=requires_grad)


def full(shape, fill_value, dtype=float32, requires_grad=False):
    """Tensor of shape filled with fill_value."""
    shape = _factory_shape((shape,) if isinstance(shape, (int, np.integer)) else tuple(shape), dtype, "full")
    return Tensor(np.full(shape, fill_value, dtype=dtype), requires_grad=requires_grad)


def zeros_like(t, dtype=None, requires_grad=False):
    return zeros(t.shape, dtype=dtype or t.dtype, requires_grad=requires_grad)


def ones_like(t, dtype=None, requires_grad=False):
    return ones(t.shape, dtype=dtype or t.dtype, requires_grad=requires_grad)


def randn(*shape, dtype=float32, requires_grad=False):
    """Standard normal samples from the calling thread's generator (see manual_seed)."""
    dt = np.dtype(dtype)
    data = generator().standard_normal(_factory_shape(shape, dt, "randn"), dtype=dt)
    return Tensor(data, requires_grad=requires_grad)


def rand(*shape, dtype=float32, requires_grad=False):
    """Uniform [0, 1) samples from the calling thread's generator."""
    dt = np.dtype(dtype)
    data = generator().random(_factory_shape(shape, dt, "rand"), dtype=dt)
    return Tensor(data, requires_grad=requires_grad)


def arange(start, stop=None, step=1, dtype=None, requires_grad=False):
    """Like torch.arange: int64 for integer arguments, float32 otherwise."""
    if stop is None:
        start, stop = 0, start
    if dtype is None:
        ints = all(isinstance(v, (int, np.integer)) for v in (start, stop, step))
        dtype = np.int64 if ints else np.float32
    return Tensor(np.arange(start, stop, step, dtype=np.float64 if np.dtype(dtype).kind == "f" else dtype),
                  dtype=dtype, requires_grad=requires_grad)


from . import autograd as _autograd  # noqa: E402  (engine modules import Tensor)
from . import functions as F  # noqa: E402
