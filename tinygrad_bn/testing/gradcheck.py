"""Finite-difference checks of the engine's derivatives.

`gradcheck` holds a function's analytic vector-Jacobian product (what backward
computes) to central differences; `gradgradcheck` does the same for the
backward pass itself, so second derivatives are checked too. Both work in
float64 only: with float32 the rounding error of a finite difference
(~1e-7 / eps) swamps the quantity being measured.

    v^T J[k]  (analytic)  ~=  sum(v * (f(x + eps e_k) - f(x - eps e_k))) / (2 eps)  (numeric)

for every flat index k of every input that requires grad, with one fixed random
upstream gradient v (a random v, not ones: sum(BN(x)) has zero gradient, and a
ones vector hides many wrong formulas).
"""
import numpy as np

import tinygrad_bn as tb

__all__ = ["GradcheckError", "gradcheck", "gradgradcheck", "assert_allclose"]


class GradcheckError(AssertionError):
    """Analytic and numeric derivatives disagree.

    Attributes: input_index (position in `inputs`), flat_index and index (the
    worst element, flat and as a multi-index into that input), analytic and
    numeric (the two values there). For a shape mismatch flat_index and index
    are None.
    """

    def __init__(self, message, input_index, flat_index=None, index=None, analytic=None, numeric=None):
        super().__init__(message)
        self.input_index = input_index
        self.flat_index = flat_index
        self.index = index
        self.analytic = analytic
        self.numeric = numeric


def _as_outputs(out, where):
    """The function's result as a tuple of Tensors (a single Tensor or a sequence of them)."""
    outs = (out,) if isinstance(out, tb.Tensor) else tuple(out) if isinstance(out, (tuple, list)) else None
    if outs is None or not outs or not all(isinstance(o, tb.Tensor) for o in outs):
        raise TypeError(f"{where}: fn must return a Tensor or a non-empty sequence of Tensors, got {type(out).__name__}")
    for o in outs:
        if o.dtype != np.float64:
            raise TypeError(f"{where}: fn must return float64 Tensors, got dtype {o.dtype}")
    return outs


def _check_inputs(inputs, where):
    """Validate inputs; return the positions of those that require grad."""
    inputs = tuple(inputs)
    for i, x in enumerate(inputs):
        if not isinstance(x, tb.Tensor):
            raise TypeError(f"{where}: input {i} must be a Tensor, got {type(x).__name__}")
        if np.issubdtype(x.dtype, np.floating) and x.dtype != np.float64:
            raise TypeError(
                f"{where}: input {i} has dtype {x.dtype}; finite differences need float64 "
                f"(float32 rounding error is larger than the derivative error being checked)"
            )
        if x.requires_grad and x.dtype != np.float64:
            raise TypeError(f"{where}: input {i} requires grad but has dtype {x.dtype}, expected float64")
    checked = [i for i, x in enumerate(inputs) if x.requires_grad]
    if not checked:
        raise ValueError(f"{where}: no input requires grad, nothing to check")
    return checked


def _analytic(outs, inputs, checked, vs, where):
    """v^T J for each checked input: a list of float64 arrays shaped like the inputs."""
    # Outputs that do not depend on any input contribute nothing (tb.grad rejects them).
    live = [k for k, o in enumerate(outs) if o.requires_grad]
    grads = [None] * len(checked)
    if live:
        grads = tb.grad(
            [outs[k] for k in live],
            [inputs[i] for i in checked],
            grad_outputs=[tb.Tensor(vs[k]) for k in live],
            allow_unused=True,
        )
    result = []
    for i, g in zip(checked, grads):
        if g is None:
            result.append(np.zeros(inputs[i].shape))
            continue
        if tuple(g.shape) != tuple(inputs[i].shape):
            raise GradcheckError(
                f"{where}: gradient of input {i} has shape {tuple(g.shape)}, expected {tuple(inputs[i].shape)}",
                input_index=i,
            )
        if g.dtype != np.float64:
            raise GradcheckError(f"{where}: gradient of input {i} has dtype {g.dtype}, expected float64", input_index=i)
        result.append(np.array(g.numpy(), dtype=np.float64))
    return result


def _numeric(fn, inputs, i, vs, eps, where):
    """Central differences of sum_k sum(v_k * out_k) w.r.t. every element of inputs[i]."""
    x = inputs[i]
    base = np.array(x.numpy(), dtype=np.float64)  # a copy: the caller's array is never touched
    grad = np.zeros(base.shape)
    flat, gflat = base.reshape(-1), grad.reshape(-1)
    for k in range(flat.size):
        orig = flat[k]
        flat[k] = orig + eps
        plus = _as_outputs(fn(*_replace(inputs, i, tb.Tensor(base.copy(), requires_grad=True))), where)
        flat[k] = orig - eps
        minus = _as_outputs(fn(*_replace(inputs, i, tb.Tensor(base.copy(), requires_grad=True))), where)
        flat[k] = orig
        # NOTE: difference outputs elementwise before summing; differencing the two sums
        # loses ~|sum| * 1e-16 / eps to cancellation.
        gflat[k] = sum(float(np.sum(v * (p.numpy() - m.numpy()))) for v, p, m in zip(vs, plus, minus)) / (2 * eps)
    return grad


def _replace(seq, i, value):
    return tuple(value if j == i else s for j, s in enumerate(seq))


def _compare(analytic, numeric, i, atol, rtol, where):
    """Raise GradcheckError at the element that most exceeds atol + rtol * |numeric|."""
    excess = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
    bad = ~(excess <= 0)  # NaN counts as a failure
    if not bad.any():
        return
    flat = int(np.argmax(np.where(np.isnan(excess), np.inf, excess).reshape(-1)))
    index = tuple(int(j) for j in np.unravel_index(flat, analytic.shape))
    a, n = float(analytic.reshape(-1)[flat]), float(numeric.reshape(-1)[flat])
    raise GradcheckError(
        f"{where}: input {i} (shape {analytic.shape}): {int(bad.sum())} of {bad.size} elements differ; "
        f"worst at flat index {flat}, index {index}: analytic={a!r}, numeric={n!r}, "
        f"|diff|={abs(a - n):.3g} > atol + rtol*|numeric| = {atol + rtol * abs(n):.3g}",
        input_index=i, flat_index=flat, index=index, analytic=a, numeric=n,
    )


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0):
    """Check fn's first derivatives against central differences.

    fn: called as fn(*inputs); returns a float64 Tensor of any shape (or a
        sequence of them, each contracted with its own random v).
    inputs: sequence of Tensors. Those with requires_grad are checked; all
        floating-point inputs must be float64. Integer Tensors (labels,
        indices) are passed through. Inputs are never modified: perturbations
        go to copies.
    eps: finite-difference step. atol, rtol: element passes when
        |analytic - numeric| <= atol + rtol * |numeric|.
    seed: seeds the random upstream gradient v (standard normal, float64).

    Returns True. Raises GradcheckError (an AssertionError) naming the input
    index, the worst element and both values (or a gradient of the wrong
    shape or dtype); TypeError for a non-Tensor input,
    a non-float64 floating input or a non-float64 output; ValueError when no
    input requires grad.
    """
    where = "gradcheck"
    inputs = tuple(inputs)
    checked = _check_inputs(inputs, where)
    rng = np.random.default_rng(seed)
    outs = _as_outputs(fn(*inputs), where)
    vs = [rng.standard_normal(o.shape) for o in outs]
    analytic = _analytic(outs, inputs, checked, vs, where)
    for i, a in zip(checked, analytic):
        _compare(a, _numeric(fn, inputs, i, vs, eps, where), i, atol, rtol, where)
    return True


def gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0):
    """Check fn's second derivatives: gradcheck of fn's backward pass.

    With a random upstream gradient v (as a float64 Tensor that requires grad),
    the backward pass is the function

        (*inputs, v) -> tb.grad(fn(*inputs), checked inputs, grad_outputs=v, create_graph=True)

    and it is gradchecked (contracted with a second random vector, as
    torch.autograd.gradgradcheck does) w.r.t. the inputs and v. Checking v too
    makes sure backward formulas are differentiable in the incoming gradient,
    which higher-order gradients of composite functions need.

    fn, inputs, eps, atol, rtol, seed: as in gradcheck; fn must return a single
    Tensor. Inputs that the first derivative does not depend on (a linear fn)
    get a zero analytic second derivative, which the numeric one must match.

    Returns True. Raises GradcheckError, whose input_index counts v as input
    len(inputs); TypeError and ValueError as gradcheck.
    """
    where = "gradgradcheck"
    inputs = tuple(inputs)
    checked = _check_inputs(inputs, where)
    out = fn(*inputs)
    if not isinstance(out, tb.Tensor):
        raise TypeError(f"{where}: fn must return a Tensor, got {type(out).__name__}")
    v = tb.Tensor(np.random.default_rng(seed + 1).standard_normal(out.shape), requires_grad=True)

    def backward_pass(*args):
        xs, v_ = args[:-1], args[-1]
        y = fn(*xs)
        if not y.requires_grad:
            return tuple(tb.Tensor(np.zeros(xs[i].shape)) for i in checked)
        grads = tb.grad(y, [xs[i] for i in checked], grad_outputs=v_, create_graph=True, allow_unused=True)
        return tuple(tb.Tensor(np.zeros(xs[i].shape)) if g is None else g for i, g in zip(checked, grads))

    try:
        return gradcheck(backward_pass, inputs + (v,), eps=eps, atol=atol, rtol=rtol, seed=seed)
    except GradcheckError as e:
        raise GradcheckError(
            str(e).replace("gradcheck:", "gradgradcheck (gradcheck of the backward pass):", 1)
            + ("" if e.input_index < len(inputs) else " (input len(inputs) is the upstream gradient v)"),
            e.input_index, e.flat_index, e.index, e.analytic, e.numeric,
        ) from None


def assert_allclose(actual, desired, rtol=1e-7, atol=0.0, check_dtype=True, err_msg=""):
    """Assert a Tensor (or array) equals a reference array elementwise within tolerance.

    actual, desired: Tensors, numpy arrays or scalars. Shapes must match exactly
    (no broadcasting); with check_dtype the dtypes must match too. NaNs compare
    equal to NaNs. Raises AssertionError.
    """
    a = actual.numpy() if isinstance(actual, tb.Tensor) else np.asarray(actual)
    d = desired.numpy() if isinstance(desired, tb.Tensor) else np.asarray(desired)
    if a.shape != d.shape:
        raise AssertionError(f"shape mismatch: actual {a.shape}, desired {d.shape}. {err_msg}")
    if check_dtype and a.dtype != d.dtype:
        raise AssertionError(f"dtype mismatch: actual {a.dtype}, desired {d.dtype}. {err_msg}")
    if a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer):
        np.testing.assert_array_equal(a, d, err_msg=err_msg)
    else:
        np.testing.assert_allclose(a, d, rtol=rtol, atol=atol, equal_nan=True, err_msg=err_msg)
