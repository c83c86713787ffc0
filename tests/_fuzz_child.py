"""Fuzz driver that tests/test_fuzz.py runs in a child process (not collected by pytest).

Hypothesis draws sequences of operations, valid and invalid, through every kernel: the
Tensor layer (ops chained on a pool of tensors, with backward passes where the forward
succeeded) and the Python-facing wrappers of tinygrad_bn._C directly, with arrays of the
wrong dtype, rank, layout, alignment or length, empty and huge extents and thread counts
-1 to 3. The Python exceptions a bad argument may raise are swallowed; anything else
propagates, and a kernel that crashes kills this process by a signal, which the parent
reports. Each call is logged (one line, before it runs) so the parent can name the call
that crashed.

    python tests/_fuzz_child.py --expect tinygrad_bn/__init__.py --summary s.json --log ops.log \
        --settings '{"max_examples": 25, "derandomize": true}'
"""
import argparse
import faulthandler
import importlib
import json
import math
import os
import resource
import sys
import time
import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# Bad arguments may raise these; every other exception is a bug (numpy's AxisError is
# both a ValueError and an IndexError).
EXPECTED = (TypeError, ValueError, IndexError, RuntimeError, MemoryError, OverflowError)

# NOTE: an address-space cap turns an absurd allocation (a huge padding makes a huge
# output) into MemoryError instead of an overcommitted buffer that the kernel would then
# fill, pushing a shared machine into the OOM killer.
ADDRESS_SPACE_BYTES = 4 << 30

GOOD_DTYPES = ("float32", "float64")
BAD_DTYPES = ("int64", "int32", "bool", "complex128", "object", "float16", ">f8", ">f4", "uint8")
# How an argument that should be a well-formed array goes wrong (first entries: it does not).
BADNESS = ("good",) * 4 + ("dtype", "ndim", "layout", "shape", "empty", "huge", "nonarray")
LAYOUTS = ("F", "strided", "T", "reversed", "misaligned", "readonly", "broadcast")
NON_ARRAYS = (None, 1.5, "x", [[1.0, 2.0]], (1.0,), object())
# Odd window parameters: invalid ones, and extremes that either fail validation or make
# allocations far beyond ADDRESS_SPACE_BYTES.
PARAMS = (1, 2, 0, 3, -1, 2**31 - 1, 2**31, 2**63, -2**63, True, 1.5, None, "2", (1, 2), (2, 1, 1), ())
HUGE = 2**40


# ---------------------------------------------------------------------------- bookkeeping

class Stats:
    """Calls made, how they ended (per family), and unraisable exceptions seen."""

    def __init__(self, log_path):
        self.calls = 0
        self.ok = {}
        self.errors = {}
        self.unraisable = []
        self.log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)

    def record(self, line):
        # NOTE: written before the call and unbuffered, so it survives a crash in the call
        os.write(self.log, (line + "\n").encode("utf-8", "replace"))

    @staticmethod
    def count(table, family, name):
        per_name = table.setdefault(family, {})
        per_name[name] = per_name.get(name, 0) + 1

    def hook(self, unraisable):
        # Cython reports an exception raised inside a `noexcept` kernel (e.g. a bounds check
        # in a debug build) here and carries on with a garbage result.
        self.unraisable.append(f"{unraisable.exc_type.__name__}: {unraisable.exc_value} "
                               f"(in {unraisable.object!r})")


STATS = None


def describe(v):
    """Short description of an argument for the call log (shapes and dtypes, not values)."""
    if isinstance(v, np.ndarray):
        layout = "C" if v.flags.c_contiguous else "F" if v.flags.f_contiguous else "strided"
        layout += "" if v.flags.aligned else ",unaligned"
        layout += "" if v.flags.writeable else ",readonly"
        return f"array({v.shape}, {v.dtype}, {layout})"
    if type(v).__name__ == "Tensor":
        return f"Tensor({v.shape}, {v.dtype}, requires_grad={v.requires_grad})"
    if isinstance(v, (list, tuple)):
        inner = ", ".join(describe(e) for e in v[:6]) + (", ..." if len(v) > 6 else "")
        return f"[{inner}]" if isinstance(v, list) else f"({inner})"
    if v is None or isinstance(v, (bool, int, float, complex, str, slice)):
        return repr(v)
    return type(v).__name__


def call(family, name, fn, *args, **kwargs):
    """fn(*args, **kwargs); (True, result) or (False, the expected exception)."""
    STATS.calls += 1
    line = f"{family}: {name}({', '.join(describe(a) for a in args)}"
    if kwargs:
        line += ", " + ", ".join(f"{k}={describe(v)}" for k, v in kwargs.items())
    line += ")"
    STATS.record(line)
    try:
        with np.errstate(all="ignore"):
            out = fn(*args, **kwargs)
    except EXPECTED as e:
        STATS.count(STATS.errors, family, name)
        _check_unraisable(line)
        return False, e
    _check_unraisable(line)
    STATS.count(STATS.ok, family, name)
    return True, out


def _check_unraisable(line):
    if STATS.unraisable:
        seen, STATS.unraisable[:] = list(STATS.unraisable), []
        raise AssertionError(f"{line} reported an exception it could not raise: {seen}")


# ---------------------------------------------------------------------------- arrays

def make_array(dtype, shape, layout, fill, rng):
    """An array of `shape` and `dtype` in the given memory layout (values from rng)."""
    n = math.prod(shape)
    if fill == "special":
        vals = rng.choice(np.array([0.0, -0.0, 1.0, -1.0, np.nan, np.inf, -np.inf, 1e30, -1e30, 1e-40]), n)
    elif fill == "large":
        vals = rng.standard_normal(n) * 1e4
    else:
        vals = rng.standard_normal(n)
    vals = vals.reshape(shape)
    dt = np.dtype(dtype)
    with np.errstate(all="ignore"):
        if dt.kind in "iub":
            a = np.asarray(np.nan_to_num(vals, posinf=7, neginf=-7) * 3).astype(dt)
        else:
            a = vals.astype(dt)
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "T":
        return np.ascontiguousarray(a.T).T
    if layout == "reversed":
        return a[::-1] if a.ndim else a
    if layout == "strided" and a.ndim:
        big = np.empty(shape[:-1] + (2 * shape[-1],), dtype=dt)
        big[..., ::2] = a
        return big[..., ::2]
    if layout == "misaligned" and dt.kind != "O" and dt.itemsize > 1:
        raw = np.empty(a.nbytes + 1, dtype=np.uint8)[1:]
        out = raw.view(dt).reshape(shape)
        out[...] = a
        return out
    if layout == "readonly":
        a.flags.writeable = False
        return a
    if layout == "broadcast" and a.ndim and n:
        return np.broadcast_to(a[(slice(0, 1),) * a.ndim], shape)
    return a


class Draw:
    """Hypothesis' interactive draws plus a numpy generator for array values.

    Each step first draws `mutate`: when False every argument is well formed (so the call
    reaches the kernel loops); when True each argument may independently go wrong.
    """

    def __init__(self, data):
        self.data = data
        self.rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
        self.mutate = False

    def __call__(self, strategy, label=None):
        return self.data.draw(strategy, label=label)

    def step(self):
        self.mutate = self.flag("mutate")

    def pick(self, options, label=None):
        return self(st.sampled_from(options), label)

    def choose(self, valid, invalid, label=None):
        """One of `valid`, or (when mutating) of `valid` and `invalid`."""
        return self.pick(tuple(valid) + (tuple(invalid) if self.mutate else ()), label)

    def int(self, lo, hi, label=None):
        return self(st.integers(lo, hi), label)

    def flag(self, label=None):
        return self(st.booleans(), label)

    def threads(self):
        return self.choose((1, 2, 3), (0, -1, 10**6), "nthreads")

    def shape(self, min_dims=0, max_dims=4, max_side=5, label="shape"):
        return self(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=0, max_side=max_side), label)

    def big_or_small_shape(self):
        """A small shape, or a few long rows (past the vector widths and thread thresholds)."""
        if self.flag("long_rows"):
            return (self.int(1, 3), self.int(100, 400))
        return self.shape(min_dims=1)

    def array(self, shape, dtype=None, label="x", fill=None):
        """A C-contiguous float array of `shape`, or (when mutating) one wrong in some way."""
        dtype = dtype or self.pick(GOOD_DTYPES, f"{label}.dtype")
        how = self.pick(BADNESS, f"{label}.how") if self.mutate else "good"
        layout = "C"
        shape = tuple(shape)
        if how == "dtype":
            dtype = self.pick(BAD_DTYPES, f"{label}.bad_dtype")
        elif how == "ndim":
            shape = shape[:-1] if shape and self.flag() else shape + (self.int(1, 3),)
        elif how == "layout":
            layout = self.pick(LAYOUTS, f"{label}.layout")
        elif how in ("shape", "empty") and shape:
            i = self.int(0, len(shape) - 1)
            shape = shape[:i] + ((self.int(0, 6) if how == "shape" else 0),) + shape[i + 1:]
        elif how == "huge":
            # zero elements, but one extent far beyond memory: size arithmetic must not overflow
            shape = (0, HUGE) + shape[2:] if len(shape) >= 2 else (HUGE, 0)
        elif how == "nonarray":
            return self.pick(NON_ARRAYS, f"{label}.nonarray")
        fill = fill or self.pick(("normal", "special", "large"), f"{label}.fill")
        return make_array(dtype, shape, layout, fill, self.rng)

    def ints(self, shape, lo, hi, label="idx"):
        """int64 array with values in [lo, hi]; when mutating maybe of another dtype or layout."""
        how = self.pick(("good",) * 4 + ("dtype", "layout", "nonarray"), f"{label}.how") if self.mutate else "good"
        a = self.rng.integers(lo, max(lo, hi) + 1, size=shape, dtype=np.int64)
        if how == "dtype":
            return a.astype(self.pick(("int32", "float64", "uint64", "bool")))
        if how == "layout" and a.ndim:
            return make_array(a.dtype, a.shape, self.pick(LAYOUTS), "normal", self.rng)
        if how == "nonarray":
            return a.tolist()
        return a

    def window(self):
        """(kernel, stride, padding, dilation): pairs of small ints, or (when mutating) odd values."""
        def pair(label, lo, hi):
            if self.mutate and self.flag(f"{label}.odd"):
                return self.pick(PARAMS, label)
            return (self.int(lo, hi), self.int(lo, hi))
        return pair("kernel", 1, 3), pair("stride", 1, 3), pair("padding", 0, 2), pair("dilation", 1, 2)


# ---------------------------------------------------------------------------- kernels

def _c(name):
    """The compiled module tinygrad_bn._C.<name> (imported after main checked the package)."""
    return importlib.import_module(f"tinygrad_bn._C.{name}")


def fuzz_elementwise(d):
    E = _c("elementwise")
    kind = d.pick(("binary", "compare", "where", "unary", "pow_scalar", "clip", "broadcast_size"), "kind")
    if kind == "broadcast_size":
        if d.mutate:
            dims = st.one_of(st.integers(0, 5), st.sampled_from([-1, HUGE, 2**62, 2**63]))
            shapes = d(st.lists(st.lists(dims, max_size=4).map(tuple), max_size=4), "shapes")
        else:
            shapes = d(hnp.mutually_broadcastable_shapes(num_shapes=d.int(1, 3), max_side=5), "shapes").input_shapes
        return call("elementwise", kind, E.broadcast_size, *shapes)
    if kind in ("binary", "compare", "where"):
        n = 3 if kind == "where" else 2
        if not d.mutate or d.flag("broadcastable"):
            shapes = d(hnp.mutually_broadcastable_shapes(num_shapes=n, min_dims=0, max_dims=4, min_side=0,
                                                         max_side=5), "shapes").input_shapes
        else:
            shapes = tuple(d.shape() for _ in range(n))
        dtype = d.pick(GOOD_DTYPES)
        arrays = [d.array(s, dtype, f"arg{i}") for i, s in enumerate(shapes)]
        if kind == "where":
            cond = d.array(shapes[0], "bool", "cond")
            return call("elementwise", kind, E.where, cond, arrays[1], arrays[2], d.threads())
        if kind == "binary":
            op = d.choose(("add", "sub", "mul", "div", "pow", "maximum", "minimum"), ("mod", None), "op")
        else:
            op = d.choose(("lt", "le", "gt", "ge", "eq", "ne"), ("and", 3), "op")
        return call("elementwise", kind, getattr(E, kind), op, arrays[0], arrays[1], d.threads())
    a = d.array(d.big_or_small_shape(), label="a")
    if kind == "unary":
        op = d.choose(("neg", "exp", "log", "sqrt", "relu", "sigmoid", "tanh", "abs"), ("sin",), "op")
        return call("elementwise", kind, E.unary, op, a, d.threads())
    if kind == "pow_scalar":
        p = d.choose((2.0, 1.0, 0.0, -1.0, 0.5, 3.3, -2.5, float("nan"), float("inf"), 1e300), ("2", None), "p")
        return call("elementwise", kind, E.pow_scalar, a, p, d.threads())
    bounds = (None, -1.0, 0.5, float("nan"), float("inf"))
    return call("elementwise", kind, E.clip, a, d.choose(bounds, ("lo",)), d.pick(bounds), d.threads())


def _axes(d, ndim):
    """A valid sorted axes tuple, or (when mutating) one that is wrong in some way."""
    valid = tuple(sorted(d(st.sets(st.integers(0, max(ndim - 1, 0)), min_size=1, max_size=max(ndim, 1)))))
    how = d.choose(("valid",), ("unsorted", "duplicate", "negative", "out_of_range", "empty", "list", "float",
                                "bool", "huge"), "axes.how")
    return {"valid": valid, "unsorted": valid[::-1] + (0,), "duplicate": valid + valid[-1:],
            "negative": (-1,), "out_of_range": (ndim,), "empty": (), "list": list(valid),
            "float": (0.0,), "bool": (True,), "huge": (2**63,)}[how]


def fuzz_reduce(d):
    R = _c("reduce")
    # a long axis now and then takes the multi-block paths (blocks of 16384 rows)
    if d.flag("long"):
        shape = d.pick(((2, 20000), (20000, 3), (3, 17000, 2), (40000,), (2, 1500, 12)))
    else:
        shape = d.shape(min_dims=1)
    a = d.array(shape, label="a")
    kind = d.pick(("sum_axes", "max_axes", "min_axes", "argmax_axis"), "kind")
    ndim = a.ndim if isinstance(a, np.ndarray) else 1
    if kind == "argmax_axis":
        axis = d.choose((None, 0, ndim - 1, -1, -ndim), (ndim, -ndim - 1, True, 1.0, 2**63), "axis")
        return call("reduce", kind, R.argmax_axis, a, axis, d.threads())
    keepdims = d.choose((False, True), (None, "yes"), "keepdims")
    return call("reduce", kind, getattr(R, kind), a, _axes(d, ndim), keepdims, d.threads())


def fuzz_index(d):
    index = _c("index")
    if d.flag("contiguous"):
        shape = d.pick(((40, 40), (3, 33, 35), (2, 40, 3, 17), (5, 4), (1100,))) if d.flag("big") else d.shape()
        a = d.array(shape, label="a")
        view = d.pick(("none", "T", "swap", "reversed"), "view")
        if isinstance(a, np.ndarray) and a.ndim >= 2 and view != "none":
            a = {"T": a.T, "swap": a.swapaxes(0, -1), "reversed": a[::-1, ::2]}[view]
        return call("index", "contiguous", index.contiguous, a, d.threads())
    shape = d.choose((d.shape(),), ((-1, 3), (HUGE, HUGE), (2**62, 4), ("a",), 5, None), "shape")
    size = math.prod(shape) if isinstance(shape, tuple) and all(isinstance(s, int) for s in shape) else 4
    n = d.int(0, 8)
    hi = max(min(size, 2**62), 1)
    positions = d.ints((n,), d.choose((0,), (-2,)), d.choose((hi - 1,), (hi + 1,)), label="positions")
    values = d.array((d.choose((n,), (n + 1, max(n - 1, 0))),), label="values")
    return call("index", "scatter_add", index.scatter_add, shape, positions, values)


def fuzz_softmax(d):
    S = _c("softmax")
    kind = d.pick(("softmax", "log_softmax", "cross_entropy"), "kind")
    if kind != "cross_entropy":
        a = d.array(d.big_or_small_shape(), label="a")
        ndim = a.ndim if isinstance(a, np.ndarray) else 1
        axis = d.choose((0, ndim - 1), (-1, ndim, 2**31, "0"), "axis")
        return call("softmax", kind, getattr(S, kind), a, axis, d.threads())
    n, c = d.int(0, 6), d.choose((1, 3, 10, 300), (0,), "classes")
    logits = d.array((n, c), label="logits", fill=d.pick(("normal", "large", "special")))
    labels = d.ints((d.choose((n,), (n + 1,)),), d.choose((0,), (-1,)), d.choose((c - 1,), (c,)), label="labels")
    smoothing = d.choose((0.0, 0.1, 1.0), (-0.1, 1.5, float("nan")), "smoothing")
    ok, out = call("softmax", "cross_entropy_forward", S.cross_entropy_forward, logits, labels, smoothing,
                   d.threads())
    lse = out[1] if ok and not (d.mutate and d.flag("corrupt_lse")) else d.array((n, 2), "float64", "lse")
    grad_loss = d.array((n,), logits.dtype if isinstance(logits, np.ndarray) else None, "grad_loss")
    return call("softmax", "cross_entropy_backward", S.cross_entropy_backward, logits, labels, lse,
                grad_loss, smoothing, d.threads())


def fuzz_batchnorm(d):
    B = _c("batchnorm")
    c = d.int(1, 5)
    shape = (d.int(2, 6), c) if d.flag("2d") else (d.int(1, 4), c, d.pick((1, 3, 64, 130)))
    if d.mutate:
        shape = d.pick((shape, (1, c), (0, c), (1, c, 1), (0, 0), (3, 0, 2)), "bad_shape")
    dtype = d.pick(GOOD_DTYPES)
    x = d.array(shape, dtype, "x", fill=d.pick(("normal", "special", "large")))

    def vector(label):
        return d.array((d.choose((shape[1],), (shape[1] + 1,)),), dtype, label)

    w = None if d.flag("weight.none") else vector("weight")
    b = None if d.flag("bias.none") else vector("bias")
    # running stats: both or neither (forward_eval needs both); either when mutating
    running = d.choose(("both", "neither"), ("mean_only", "var_only"), "running")
    rm = vector("running_mean") if running in ("both", "mean_only") else None
    rv = vector("running_var") if running in ("both", "var_only") else None
    if rv is not None and not d.mutate:
        rv = np.abs(rv)
    momentum = d.choose((0.1, None, 0.0, 1.0), (-0.5, 2.0, float("nan"), "0.1"), "momentum")
    eps = d.choose((1e-5, 1e300), (0.0, -1.0, float("nan"), float("inf")), "eps")
    previous = B._set_schedule(d.pick((0, 1, 2), "schedule"))
    try:
        if d.flag("eval"):
            return call("batchnorm", "forward_eval", B.forward_eval, x, w, b, rm, rv, eps, d.threads())
        ok, out = call("batchnorm", "forward_train", B.forward_train, x, w, b, rm, rv, momentum, eps,
                       d.threads())
        if ok and not (d.mutate and d.flag("corrupt_stats")):
            mean, inv_std = out[1:]
        else:
            mean, inv_std = d.array((shape[1],), "float64", "mean"), d.array((shape[1],), "float64", "inv_std")
        grad_y = d.array(shape, dtype, "grad_y")
        return call("batchnorm", "backward", B.backward, x, grad_y, mean, inv_std, w, d.threads())
    finally:
        B._set_schedule(previous)


def fuzz_conv(d):
    C = _c("conv")
    ck = importlib.import_module("tinygrad_bn.conv_kernels")
    n, c, o = d.int(0, 3), d.int(1, 3), d.int(1, 3)
    kh, kw = d.int(1, 3), d.int(1, 3)
    h, w = d.int(kh, 7), d.int(kw, 7)
    if d.mutate:
        c, h, w = d.pick((c, 0)), d.pick((h, 0, 1)), d.pick((w, 0, 1))
    _, stride, padding, dilation = d.window()
    if not d.mutate:
        dilation = (1, 1)  # so that the kernel fits: h >= kh, w >= kw
    ikh, ikw = (d.pick(PARAMS, "kh"), d.pick(PARAMS, "kw")) if d.mutate and d.flag("kernel.odd") else (kh, kw)
    kind = d.pick(("im2col", "col2im", "conv2d", "conv1d"), "kind")
    dtype = d.pick(GOOD_DTYPES)
    if kind in ("im2col", "col2im"):
        x = d.array((n, c, h, w), dtype, "x")
        ok, cols = call("conv", "im2col", C.im2col, x, ikh, ikw, stride, padding, dilation, d.threads())
        if ok and d.flag("out"):  # again into a given buffer (maybe a wrong one)
            call("conv", "im2col", C.im2col, x, ikh, ikw, stride, padding, dilation, d.threads(),
                 out=d.array(cols.shape, dtype, "out"))
        if kind == "im2col":
            return None
        if not ok or (d.mutate and d.flag("corrupt_cols")):
            cols = d.array(d.shape(min_dims=3, max_dims=3, max_side=9), dtype, "cols")
        x_shape = d.choose(((n, c, h, w),), ((n, c, h + 1, w), (n, c, h), (-1, c, h, w), (n, c, HUGE, w)), "x_shape")
        out = d.array((n, c, h, w), dtype, "out") if d.flag("out") else None
        return call("conv", kind, C.col2im, cols, x_shape, ikh, ikw, stride, padding, dilation, d.threads(), out=out)
    if kind == "conv1d":
        x, wt = d.array((n, c, w), dtype, "x"), d.array((o, d.choose((c,), (c + 1,)), kw), dtype, "weight")
        stride, padding, dilation = (v[1] if isinstance(v, tuple) and len(v) == 2 else v
                                     for v in (stride, padding, dilation))
        fwd, bwd = ck.conv1d_forward, ck.conv1d_backward
    else:
        x = d.array((n, c, h, w), dtype, "x")
        wt = d.array((o, d.choose((c,), (c + 1,)), kh, kw), dtype, "weight")
        fwd, bwd = ck.conv2d_forward, ck.conv2d_backward
    bias = None if d.flag("no_bias") else d.array((d.choose((o,), (o + 1,)),), dtype, "bias")
    ok, y = call("conv", f"{kind}_forward", fwd, x, wt, bias, stride, padding, dilation)
    if not ok or (d.mutate and d.flag("corrupt_grad_y")):
        y = d.array(d.shape(min_dims=3, max_dims=4), dtype, "grad_y")
    else:
        y = make_array(dtype, y.shape, "C", "normal", d.rng)
    need = (d.flag("need_x"), d.flag("need_w"), d.flag("need_b"))
    call("conv", f"{kind}_backward", bwd, x, wt, y, stride, padding, dilation, *need)
    if kind == "conv2d":
        x_shape = d.choose(((n, c, h, w),), ((n, c, h), (-1, c, h, w)), "x_shape")
        call("conv", "conv2d_grad_input", ck.conv2d_grad_input, y, wt, x_shape, stride, padding, dilation)
        w_shape = getattr(wt, "shape", (o, c, kh, kw))
        call("conv", "conv2d_grad_weight", ck.conv2d_grad_weight, x, y, w_shape, stride, padding, dilation)
    return None


def fuzz_pool(d):
    P = _c("pool")
    n, c, h, w = d.int(0, 3), d.int(0, 3), d.int(3, 8), d.int(3, 8)
    kernel, stride, padding, dilation = d.window()
    if not d.mutate:
        padding = (min(padding[0], kernel[0] // 2), min(padding[1], kernel[1] // 2))
    else:
        h, w = d.pick((h, 0, 1)), d.pick((w, 0, 1))
    dtype = d.pick(GOOD_DTYPES)
    x = d.array((n, c, h, w), dtype, "x", fill=d.pick(("normal", "special")))
    x_shape = d.choose(((n, c, h, w),), ((n, c, h + 1, w), (n + 1, c, h, w), (n, c, h), (n, c, -1, w),
                                         (n, c, HUGE, w)), "x_shape")
    if d.flag("max"):
        ok, out = call("pool", "max_pool2d_forward", P.max_pool2d_forward, x, kernel, stride, padding, dilation,
                       d.threads())
        y_shape = out[0].shape if ok else d.shape(min_dims=4, max_dims=4)
        if ok and not (d.mutate and d.flag("corrupt_argmax")):
            argmax = out[1]
        else:
            argmax = d.ints(y_shape, -2, max(h * w, 1) + 1, label="argmax")
        grad_y = d.array(y_shape, dtype, "grad_y")
        return call("pool", "max_pool2d_backward", P.max_pool2d_backward, grad_y, argmax, x_shape, d.threads())
    include_pad = d.choose((True, False), (None, "no"), "count_include_pad")
    ok, y = call("pool", "avg_pool2d_forward", P.avg_pool2d_forward, x, kernel, stride, padding, include_pad,
                 d.threads())
    grad_y = d.array(y.shape if ok else d.shape(min_dims=4, max_dims=4), dtype, "grad_y")
    return call("pool", "avg_pool2d_backward", P.avg_pool2d_backward, grad_y, x_shape, kernel, stride, padding,
                include_pad, d.threads())


# ---------------------------------------------------------------------------- Tensor layer

def _tensor(d, shape, requires_grad=None, dtype=None, label="t"):
    import tinygrad_bn as tb
    dtype = dtype or d.pick(GOOD_DTYPES, f"{label}.dtype")
    a = make_array(dtype, shape, "C", d.pick(("normal", "special", "large"), f"{label}.fill"), d.rng)
    rg = d.flag(f"{label}.requires_grad") if requires_grad is None else requires_grad
    return tb.Tensor(a, requires_grad=rg and np.dtype(dtype).kind == "f")


def _leaves(t, limit=4):
    """Up to `limit` leaves that require grad and that t depends on."""
    found, seen, stack = [], set(), [t]
    while stack and len(found) < limit:
        u = stack.pop()
        if id(u) in seen:
            continue
        seen.add(id(u))
        if u._ctx is None:
            if u.requires_grad:
                found.append(u)
        elif u._ctx.inputs is not None:
            stack.extend(u._ctx.inputs)
    return found


def _backward(d, t):
    """A backward pass from t (the output of a forward that succeeded)."""
    import tinygrad_bn as tb
    if not t.requires_grad:
        return
    how = d.pick(("sum", "gradient", "grad", "grad_create_graph"), "backward")
    if how == "gradient":
        shape = d.choose((t.shape,), (d.shape(),), "gradient.shape")
        call("tensor", "backward", t.backward, _tensor(d, shape, False, label="gradient"), retain_graph=True)
        return
    ok, s = call("tensor", "sum", t.sum)
    if not ok:
        return
    if how == "sum":
        call("tensor", "backward", s.backward, retain_graph=d.flag("retain_graph"))
        return
    leaves = _leaves(t)
    create = how == "grad_create_graph"
    ok, grads = call("tensor", "grad", tb.grad, s, leaves, retain_graph=True, create_graph=create,
                     allow_unused=True)
    g = next((g for g in grads if g is not None and g.requires_grad), None) if ok and create else None
    if g is not None:  # a second derivative through the recorded backward pass
        ok, gs = call("tensor", "sum", (g * g).sum)
        if ok:
            call("tensor", "grad", tb.grad, gs, leaves, allow_unused=True)


def fuzz_tensor_ops(d):
    """One op on tensors from the pool (or fresh ones); successful outputs join the pool."""
    import tinygrad_bn as tb
    F = tb.nn.functional
    pool = d.pool
    t = pool[d.int(0, len(pool) - 1, "operand")]
    u = pool[d.int(0, len(pool) - 1, "other")]
    kind = d.pick(("binary", "unary", "reduce", "movement", "index", "matmul", "softmax", "where",
                   "cat", "cross_entropy", "conv", "pool", "batch_norm", "cast", "backward"), "op")
    if kind == "backward":
        return _backward(d, t)
    if kind == "binary":
        op = d.pick(("__add__", "__sub__", "__mul__", "__truediv__", "__pow__", "maximum", "minimum",
                     "__lt__", "__eq__", "__rsub__", "__matmul__"))
        other = u if d.flag("tensor_other") else d.choose((2.0, -1, 0, True, float("nan")), (1j, "a", None))
        ok, out = call("tensor", op, getattr(t, op), other)
    elif kind == "unary":
        op = d.pick(("exp", "log", "sqrt", "relu", "sigmoid", "tanh", "abs", "__neg__", "square", "pow", "clip"))
        if op == "pow":
            ok, out = call("tensor", "pow", t.__pow__, d.pick((2, 0.5, -1, 3.5, 0, float("nan"))))
        elif op == "clip":
            ok, out = call("tensor", "clip", t.clip, d.pick((-1.0, 0.5, None)), d.pick((1.0, float("nan"), None)))
        else:
            ok, out = call("tensor", op, getattr(t, op))
    elif kind == "reduce":
        op = d.pick(("sum", "mean", "max", "min", "var", "std", "logsumexp", "argmax", "argmin"))
        axis = d.choose((None, 0, -1, 1, (0, 1)), ((0, 0), 5, -6, (), True, 1.5), "axis")
        ok, out = call("tensor", op, getattr(t, op), axis, keepdims=d.flag("keepdims"))
    elif kind == "movement":
        op = d.pick(("reshape", "transpose", "permute", "expand", "squeeze", "unsqueeze", "flatten"))
        if op in ("reshape", "expand"):
            args = d(st.lists(st.sampled_from([-1, 0, 1, 2, 3, 4, 6, -2, HUGE]), max_size=4), "shape")
        else:
            args = d(st.lists(st.integers(-4, 4), max_size=4 if op in ("transpose", "permute") else 1), "axes")
        ok, out = call("tensor", op, getattr(t, op), *args)
    elif kind == "index":
        n = t.shape[0] if t.ndim else 1
        idx = d.choose(("int", "slice", "array", "mask", "tuple", "ellipsis", "none", "tensor"),
                       ("negative", "out_of_range", "bad_array", "bad_mask", "float"), "index")
        index = {"int": 0, "negative": -1, "out_of_range": n, "slice": slice(None, None, d.pick((1, 2, -1))),
                 "array": d.rng.integers(0, max(n, 1), size=d.int(0, 4)),
                 "bad_array": np.array([0, n + 3, -n - 3]), "mask": d.rng.random(t.shape) > 0.5,
                 "bad_mask": np.ones((n + 1,), bool), "tuple": (0, slice(None), [0, -1]),
                 "ellipsis": (Ellipsis, 0), "none": (None, Ellipsis), "float": 1.0,
                 "tensor": tb.Tensor(np.array([0, -1, n]))}[idx]
        ok, out = call("tensor", "getitem", t.__getitem__, index)
    elif kind == "matmul":
        ok, out = call("tensor", "matmul", t.matmul, u)
    elif kind == "softmax":
        op = d.pick(("softmax", "log_softmax"))
        ok, out = call("tensor", op, getattr(t, op), d.choose((-1, 0), (1, 4, -5)))
    elif kind == "where":
        cond = d.pick((t.data > 0, np.array(True), np.ones((7,), bool), u.data))
        ok, out = call("tensor", "where", tb.where, cond, t, d.pick((u, 0.0)))
    elif kind == "cat":
        op = d.pick((tb.cat, tb.stack))
        ok, out = call("tensor", op.__name__, op, [t, u], axis=d.pick((0, -1, 1, 3)))
    elif kind == "cross_entropy":
        logits = t if t.ndim == 2 and d.flag("pool_logits") else _tensor(d, (d.int(0, 5), d.int(1, 5)), True)
        n, c = logits.shape if logits.ndim == 2 else (1, 1)
        labels = d.choose((d.rng.integers(0, max(c, 1), size=n), tb.Tensor(np.zeros(n, np.int64))),
                          (np.full(n, c), np.full(n, -1), np.zeros(n + 1, np.int64), np.zeros(n)), "labels")
        ok, out = call("tensor", "cross_entropy", F.cross_entropy, logits, labels,
                       reduction=d.choose(("mean", "sum", "none"), ("avg",)),
                       label_smoothing=d.choose((0.0, 0.1, 1.0), (-0.1, 2.0)))
    elif kind == "conv":
        two = d.flag("conv2d")
        n, c, o = d.int(0, 3), d.int(1, 3), d.int(1, 3)
        ksize = (d.int(1, 3), d.int(1, 3)) if two else (d.int(1, 3),)
        spatial = tuple(d.int(k, 6) for k in ksize)
        x = t if t.ndim == len(spatial) + 2 and d.flag("pool_input") else _tensor(d, (n, c) + spatial, label="x")
        c = x.shape[1] if x.ndim > 1 else c
        w = _tensor(d, (o, d.choose((c,), (c + 1,))) + ksize, label="w")
        b = None if d.flag("no_bias") else _tensor(d, (d.choose((o,), (o + 1,)),), label="b")
        s, p, dl = d.choose((1, 2), (0, -1)), d.choose((0, 1, 2), (-1, 2**31)), d.choose((1,), (2, 0))
        ok, out = call("tensor", "conv", F.conv2d if two else F.conv1d, x, w, b, s, p, dl)
    elif kind == "pool":
        op = d.pick(("max_pool2d", "avg_pool2d", "max_pool1d"))
        spatial = (d.int(3, 7),) if op == "max_pool1d" else (d.int(3, 7), d.int(3, 7))
        x = t if t.ndim == len(spatial) + 2 and d.flag("pool_input") else \
            _tensor(d, (d.int(0, 3), d.int(1, 3)) + spatial, label="x")
        k, s, p = d.choose((1, 2, 3), (0, 9)), d.choose((None, 1, 2), (0,)), d.choose((0, 1), (2, -1))
        ok, out = call("tensor", op, getattr(F, op), x, k, s, p)
    elif kind == "batch_norm":
        c = d.int(1, 4)
        shape = d.choose(((d.int(2, 5), c), (d.int(1, 3), c, d.int(2, 5)), (d.int(1, 3), c, 2, d.int(1, 3))),
                         ((1, c), (0, c), (c,), (1, c, 1)), "shape")
        x = t if t.ndim in (2, 3, 4) and d.flag("pool_input") else _tensor(d, shape, label="x")
        c = x.shape[1] if x.ndim > 1 else c
        cc = d.choose((c,), (c + 1,), "channels")
        rm = _tensor(d, (cc,), False, x.dtype, "rm") if d.flag("running") else None
        rv = tb.Tensor(np.abs(rm.data) + 0.5) if rm is not None else None
        weight = _tensor(d, (cc,), label="weight") if d.flag("affine") else None
        bias = _tensor(d, (cc,), label="bias") if weight is not None else None
        ok, out = call("tensor", "batch_norm", F.batch_norm, x, rm, rv, weight, bias,
                       training=d.flag("training"), momentum=d.choose((0.1, 1.0), (-1.0,)),
                       eps=d.choose((1e-5,), (0.0, float("nan"))), impl=d.choose(("fused", "composed"), ("cuda",)))
    else:
        ok, out = call("tensor", "to", t.to, d.choose(("float32", "float64", "int64", "bool"), ("complex64",)))
    if ok and type(out).__name__ == "Tensor":
        if out.size <= 50_000:
            pool.append(out)
        if d.flag("backward_now"):
            _backward(d, out)
    return None


# ---------------------------------------------------------------------------- driver

FAMILIES = {
    "elementwise": fuzz_elementwise, "reduce": fuzz_reduce, "index": fuzz_index, "softmax": fuzz_softmax,
    "batchnorm": fuzz_batchnorm, "conv": fuzz_conv, "pool": fuzz_pool, "tensor": fuzz_tensor_ops,
}


def make_test(family, hyp_settings):
    fn = FAMILIES[family]

    @hyp_settings
    @given(st.data())
    def run_sequence(data):
        d = Draw(data)
        if family == "tensor":
            d.pool = [_tensor(d, d.shape(), label=f"pool{i}") for i in range(3)]
            d.pool.append(_tensor(d, d.shape(), False, "int64", "pool_int"))
        for _ in range(d.int(1, 20, "steps")):
            d.step()
            fn(d)

    run_sequence.__name__ = f"fuzz_{family}"
    return run_sequence


def main(argv=None):
    global STATS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--expect", required=True, help="tinygrad_bn/__init__.py that must be imported")
    p.add_argument("--settings", default="{}", help="Hypothesis settings (JSON)")
    p.add_argument("--log", required=True, help="file for the call log")
    p.add_argument("--summary", required=True, help="file for the JSON summary")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--selftest-crash", action="store_true", help="die by SIGSEGV inside a call (harness test)")
    args = p.parse_args(argv)

    faulthandler.enable()
    warnings.simplefilter("ignore")
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = ADDRESS_SPACE_BYTES if hard == resource.RLIM_INFINITY else min(hard, ADDRESS_SPACE_BYTES)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))  # no core files

    import tinygrad_bn
    got, want = os.path.realpath(tinygrad_bn.__file__), os.path.realpath(args.expect)
    if got != want:
        sys.exit(f"fuzz child imported {got}, expected {want}")

    STATS = Stats(args.log)
    sys.unraisablehook = STATS.hook
    if args.selftest_crash:
        call("selftest", "sigsegv", faulthandler._sigsegv)

    cfg = json.loads(args.settings)
    hyp = settings(deadline=None, suppress_health_check=list(HealthCheck), **cfg)
    start = time.perf_counter()
    for family in args.families.split(","):
        make_test(family, hyp)()
    summary = {"calls": STATS.calls, "ok": STATS.ok, "errors": STATS.errors, "module": got,
               "seconds": round(time.perf_counter() - start, 2),
               "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    with open(args.summary, "w") as f:
        json.dump(summary, f)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
