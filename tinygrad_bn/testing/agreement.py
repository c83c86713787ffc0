"""Hold two implementations of the same function to each other: values, gradients,
second gradients.

    check_implementations_agree(f, g, inputs, rtol=..., atol=...)          one comparison
    assert_implementations_agree(f, g, strategy, rtol=..., atol=...)       over Hypothesis draws

What is compared, with the same random vectors for f and for g:

    outputs          f(*xs)[k]                      vs  g(*xs)[k]
    gradients        d <v, f(*xs)> / d xs[i]        vs  the same for g       (check_grad)
    second grads     d <u, grad> / d xs[i]          vs  the same for g       (check_gradgrad)
                     d <u, grad> / d v[k]

With check_gradgrad the first gradients are compared twice: from a plain backward
(what training uses) and from the backward recorded with create_graph=True (which
a fused Function may compute by another formula).

v is a random standard-normal upstream gradient per output, NOT ones: a plain
sum hides wrong formulas (the gradient of sum(BN(x)) w.r.t. x is exactly 0).
u is a random vector per first gradient, so the second derivatives are
Hessian-vector products plus the derivative of the backward pass in v (which
checks that backward is differentiable in its incoming gradient).

An element agrees when |a - b| <= atol + rtol * scale, where scale is |b| at
that element (relative_to="element", numpy's allclose) or max |b| over the
array (relative_to="max": a norm-wise comparison, for results such as a
batch-norm gradient whose small elements come from cancellation of large
terms). NaN never agrees; equal infinities do.

Hypothesis is imported only by assert_implementations_agree, so importing this
module does not need it.
"""
import numpy as np

import tinygrad_bn as tb

__all__ = ["DisagreementError", "check_implementations_agree", "assert_implementations_agree"]


class DisagreementError(AssertionError):
    """Two implementations disagree.

    Attributes: quantity (what was compared, e.g. "gradient w.r.t. input 0 of
    <v, outputs>"), index (the worst element as a multi-index, None for a shape or
    dtype mismatch), f_value and g_value (the two values there), tolerance.
    """

    def __init__(self, message, quantity, index=None, f_value=None, g_value=None, tolerance=None):
        super().__init__(message)
        self.quantity = quantity
        self.index = index
        self.f_value = f_value
        self.g_value = g_value
        self.tolerance = tolerance


def _fresh_inputs(inputs, dtype):
    """New leaf Tensors for one implementation (so f and g never share a graph or
    an array), numpy float arrays turned into Tensors that require grad; anything
    else (floats, dicts, strings) is passed through unchanged."""
    fresh = []
    for x in inputs:
        if isinstance(x, tb.Tensor):
            fresh.append(tb.Tensor(x.numpy().copy(), requires_grad=x.requires_grad, dtype=x.dtype))
        elif isinstance(x, np.ndarray) and x.dtype.kind == "f":
            fresh.append(tb.Tensor(x.copy(), requires_grad=True, dtype=dtype or x.dtype))
        elif isinstance(x, np.ndarray):
            fresh.append(tb.Tensor(x.copy(), dtype=x.dtype))
        else:
            fresh.append(x)
    return tuple(fresh)


def _as_outputs(out, name):
    outs = (out,) if isinstance(out, tb.Tensor) else tuple(out) if isinstance(out, (tuple, list)) else None
    if not outs or not all(isinstance(o, tb.Tensor) for o in outs):
        raise TypeError(f"{name} must return a Tensor or a non-empty sequence of Tensors, got {type(out).__name__}")
    return outs


def _tolerance(tol, inputs):
    return float(tol(inputs) if callable(tol) else tol)


def _compare(a, b, quantity, rtol, atol, relative_to, names):
    """Raise DisagreementError at the element of a (from f) and b (from g) that most
    exceeds the tolerance."""
    fa, ga = names
    a = a.numpy() if isinstance(a, tb.Tensor) else np.asarray(a)
    b = b.numpy() if isinstance(b, tb.Tensor) else np.asarray(b)
    if a.shape != b.shape:
        raise DisagreementError(f"{quantity}: shape {a.shape} from {fa} but {b.shape} from {ga}", quantity)
    if a.dtype != b.dtype:
        raise DisagreementError(f"{quantity}: dtype {a.dtype} from {fa} but {b.dtype} from {ga}", quantity)
    if a.size == 0:
        return
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        if relative_to == "max":
            finite = np.abs(b64[np.isfinite(b64)])
            scale = np.full(b64.shape, finite.max() if finite.size else 0.0)
        else:
            scale = np.abs(b64)
        tol = atol + rtol * scale
        excess = np.abs(a64 - b64) - tol
        excess[a64 == b64] = -np.inf  # equal infinities agree
    bad = ~(excess <= 0)  # NaN is a disagreement
    if not bad.any():
        return
    flat = int(np.argmax(np.where(np.isnan(excess), np.inf, excess).reshape(-1)))
    index = tuple(int(j) for j in np.unravel_index(flat, a.shape))
    av, bv, tv = float(a64.reshape(-1)[flat]), float(b64.reshape(-1)[flat]), float(tol.reshape(-1)[flat])
    raise DisagreementError(
        f"{quantity} (shape {a.shape}, {a.dtype}): {int(bad.sum())} of {bad.size} elements disagree; "
        f"worst at index {index}: {fa}={av!r}, {ga}={bv!r}, |diff|={abs(av - bv):.3g} > "
        f"atol + rtol*{'max|' + ga + '|' if relative_to == 'max' else '|' + ga + '|'} = {tv:.3g}",
        quantity, index, av, bv, tv,
    )


def _arrays(grads, like):
    return [np.zeros(x.shape, x.dtype) if g is None else g.numpy().copy() for x, g in zip(like, grads)]


def _derivatives(outs, inputs, vs, us, check_grad, check_gradgrad):
    """The outputs and, as lists of arrays (None where not taken):
    grads           first gradients under vs, as a plain backward computes them;
    recorded_grads  the same with create_graph=True (a Function may take another
                    path when its backward is recorded);
    gradgrads       second gradients under us, w.r.t. the inputs and the vs."""
    leaves = [x for x in inputs if isinstance(x, tb.Tensor) and x.requires_grad]
    result = {"outputs": [o.numpy().copy() for o in outs], "grads": None, "recorded_grads": None,
              "gradgrads": None, "n_outputs": len(outs)}
    if not (check_grad or check_gradgrad) or not leaves:
        return result
    live = [k for k, o in enumerate(outs) if o.requires_grad]
    v_leaves = [tb.Tensor(vs[k].astype(outs[k].dtype), requires_grad=True) for k in range(len(outs))]

    def first(create_graph):
        if not live:
            return [None] * len(leaves)
        return list(tb.grad([outs[k] for k in live], leaves, grad_outputs=[v_leaves[k] for k in live],
                            retain_graph=True, create_graph=create_graph, allow_unused=True))

    result["grads"] = _arrays(first(create_graph=False), leaves)
    if not check_gradgrad:
        return result
    grads = first(create_graph=True)
    result["recorded_grads"] = _arrays(grads, leaves)
    wrt = leaves + [v_leaves[k] for k in live]
    second = [None] * len(wrt)
    diff = [j for j, gr in enumerate(grads) if gr is not None and gr.requires_grad]
    if diff:
        second = tb.grad([grads[j] for j in diff], wrt,
                         grad_outputs=[tb.Tensor(us[j].astype(grads[j].dtype)) for j in diff], allow_unused=True)
    result["gradgrads"] = _arrays(second, wrt)
    result["live"] = live
    return result


def check_implementations_agree(f, g, inputs, *, rtol, atol, check_grad=True, check_gradgrad=False,
                                relative_to="element", dtype=np.float64, seed=0, names=("f", "g")):
    """Assert f(*inputs) and g(*inputs) agree in value, gradient and (optionally)
    second gradient; one comparison, no Hypothesis.

    f, g: callables returning a Tensor or a sequence of Tensors (the same number,
        shapes and dtypes). Outputs that do not require grad (e.g. running
        statistics) are compared by value only.
    inputs: a sequence (or a single item) of Tensors, numpy arrays and anything
        else. Each implementation gets its own fresh copy of every Tensor (same
        dtype and requires_grad); numpy float arrays become Tensors of `dtype`
        (None keeps the array's dtype) that require grad; integer arrays become
        integer Tensors; other objects (eps, a dict of settings) are passed as is.
    rtol, atol: floats, or callables taking the inputs tuple (as given) and
        returning a float, for tolerances that depend on the data.
    check_grad: compare d<v, outputs>/d input for every input that requires grad,
        v a random standard-normal upstream gradient (one per output, seeded by
        `seed`, in the output's dtype).
    check_gradgrad: also compare the first gradients taken with create_graph=True,
        and d<u, grad>/d input and d<u, grad>/d v (u random, one per gradient).
    relative_to: "element" (rtol * |g's value| elementwise) or "max" (rtol *
        max |g's value| over the array).
    names: how f and g are called in the error message.

    Returns None. Raises DisagreementError (an AssertionError) naming the
    output/gradient, the worst index and both values; exceptions raised by f or g
    propagate.
    """
    if relative_to not in ("element", "max"):
        raise ValueError(f"relative_to must be 'element' or 'max', got {relative_to!r}")
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    rtol, atol = _tolerance(rtol, inputs), _tolerance(atol, inputs)
    fin, gin = _fresh_inputs(inputs, dtype), _fresh_inputs(inputs, dtype)
    f_outs = _as_outputs(f(*fin), names[0])
    g_outs = _as_outputs(g(*gin), names[1])
    # The same random vectors for both, drawn from f's shapes (a shape mismatch is reported below).
    rng = np.random.default_rng(seed)
    vs = [rng.standard_normal(o.shape) for o in f_outs]
    us = [rng.standard_normal(x.shape) for x in fin if isinstance(x, tb.Tensor) and x.requires_grad]
    if len(f_outs) == len(g_outs) and all(a.shape == b.shape for a, b in zip(f_outs, g_outs)):
        rf = _derivatives(f_outs, fin, vs, us, check_grad, check_gradgrad)
        rg = _derivatives(g_outs, gin, vs, us, check_grad, check_gradgrad)
    else:
        rf = _derivatives(f_outs, fin, vs, us, False, False)
        rg = _derivatives(g_outs, gin, vs, us, False, False)
    cmp = dict(rtol=rtol, atol=atol, relative_to=relative_to, names=names)
    if rf["n_outputs"] != rg["n_outputs"]:
        raise DisagreementError(f"{names[0]} returned {rf['n_outputs']} outputs, {names[1]} {rg['n_outputs']}",
                                "number of outputs")
    for k, (a, b) in enumerate(zip(rf["outputs"], rg["outputs"])):
        _compare(a, b, f"output {k}", **cmp)
    if check_grad or check_gradgrad:
        for k, (a, b) in enumerate(zip(f_outs, g_outs)):
            if a.requires_grad != b.requires_grad:
                raise DisagreementError(f"output {k} requires grad in {names[0] if a.requires_grad else names[1]} "
                                        f"only: the two differ in what their gradients depend on", f"output {k}")
    positions = [i for i, x in enumerate(fin) if isinstance(x, tb.Tensor) and x.requires_grad]
    for key, how in (("grads", ""), ("recorded_grads", " (create_graph=True)")):
        if rf[key] is not None:
            for i, a, b in zip(positions, rf[key], rg[key]):
                _compare(a, b, f"gradient w.r.t. input {i} of <v, outputs>{how}", **cmp)
    if rf["gradgrads"] is not None:
        wrt = [f"input {i}" for i in positions] + [f"the upstream gradient v of output {k}" for k in rf["live"]]
        for what, a, b in zip(wrt, rf["gradgrads"], rg["gradgrads"]):
            _compare(a, b, f"second gradient w.r.t. {what} of <u, d<v, outputs>/d inputs>", **cmp)


def assert_implementations_agree(f, g, inputs_strategy, *, rtol, atol, check_grad=True, check_gradgrad=False,
                                 max_examples=None, **kwargs):
    """check_implementations_agree over every example that a Hypothesis strategy draws.

    inputs_strategy: a strategy drawing a tuple of inputs (Tensors, numpy arrays,
        pass-through objects) or a single Tensor/array.
    max_examples: overrides the active Hypothesis profile's max_examples (its other
        settings, e.g. derandomize, are kept). Settings on the calling test do not
        reach the inner @given: pass max_examples here.
    rtol, atol, check_grad, check_gradgrad and **kwargs (relative_to, dtype, seed,
        names): as in check_implementations_agree; tolerances may be callables of
        the drawn inputs.

    Runs the Hypothesis search and raises the (shrunk) DisagreementError on failure.
    """
    from hypothesis import given, settings

    @given(inputs_strategy)
    def agree(inputs):
        check_implementations_agree(f, g, inputs, rtol=rtol, atol=atol, check_grad=check_grad,
                                    check_gradgrad=check_gradgrad, **kwargs)

    if max_examples is not None:
        agree = settings(max_examples=max_examples)(agree)
    agree()
