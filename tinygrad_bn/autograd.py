"""Reverse-mode differentiation: one walk over the graph in reverse topological
order. Used by Tensor.backward (accumulates into leaves' .grad) and by grad()
(returns the gradients of chosen inputs, like torch.autograd.grad)."""
import numpy as np

from . import kernels
from .grad_mode import state as _grad
from .tensor import Tensor

_FREED = ("Trying to backward through the graph a second time (or directly access saved "
          "tensors after they have already been freed). Saved intermediate values of the graph "
          "are freed when you call .backward() or tb.grad(). Specify retain_graph=True if you "
          "need to backward through the graph a second time.")
_ONE = {np.dtype(dt): np.ones((), dt) for dt in (np.float32, np.float64)}  # never handed out: seeds copy them


def _topological_order(roots, wanted=None):
    """Function nodes reachable from roots, each after every node it depends on.

    Nodes, not tensors, are the vertices: a node's output may be wrapped by more than
    one Tensor (Function.output() re-wraps it during create_graph). Iterative
    depth-first search (no recursion limit); inputs are tuples, so the order is
    deterministic. Also returns, per node, the non-leaf tensors it produced that were
    seen on the way (for retain_grad and tb.grad of non-leaves).
    """
    # NOTE: nodes and tensors go by id(): a Tensor's == is elementwise, and a user's
    # Function subclass may define __eq__ (leaving it unhashable) or a value-based
    # __hash__ that would merge distinct nodes. The walk keeps every node alive.
    order, seen, produced = [], set(), {}
    stack = []
    for r in roots:
        fn = r._ctx
        if fn is not None:
            stack.append(fn)
            if r._retains_grad or (wanted is not None and id(r) in wanted):
                produced.setdefault(id(fn), []).append(r)
    push, pop = stack.append, stack.pop
    while stack:
        fn = pop()
        if fn is None:  # marker pushed below a node's inputs: they are all done
            order.append(pop())
            continue
        key = id(fn)
        if key in seen:
            continue
        seen.add(key)
        inputs = fn.inputs
        if inputs is None:
            raise RuntimeError(_FREED)
        push(fn)
        push(None)
        for p in inputs:
            ctx = p._ctx
            if ctx is not None:
                if p._retains_grad or (wanted is not None and id(p) in wanted):
                    produced.setdefault(id(ctx), []).append(p)
                if id(ctx) not in seen:
                    push(ctx)
    return order, produced


def _root_gradients(outputs, grad_outputs):
    grads = []
    for i, (out, g) in enumerate(zip(outputs, grad_outputs)):
        if not isinstance(out, Tensor):
            raise TypeError(f"outputs[{i}] must be a Tensor, got {type(out).__name__}")
        if not out.requires_grad:
            raise RuntimeError(f"element {i} of tensors does not require grad and does not have a grad_fn")
        if g is None:
            data = out.data
            if data.size != 1:
                raise RuntimeError(f"grad can be implicitly created only for scalar outputs, got shape "
                                   f"{out.shape}; pass gradient= (a Tensor of that shape)")
            # NOTE: copying a stored 1 costs less than half of np.empty + fill (a tenth of
            # np.ones); every backward() of a scalar loss makes one. Fresh: it may become a .grad.
            one = _ONE[data.dtype]
            g = Tensor._make((one if data.ndim == 0 else one.reshape(data.shape)).copy(), None, False)
        else:
            g = g if isinstance(g, Tensor) else Tensor(g, dtype=out.dtype)
            if g.shape != out.shape:
                raise ValueError(f"gradient shape mismatch: expected {out.shape} (the output's shape), got {g.shape}")
            if g.dtype != out.dtype:
                g = g.to(out.dtype)
        grads.append(g)
    return grads


def _reduce_to(g, t):
    """Sum a broadcast gradient back to t's shape and cast it to t's dtype."""
    if g.data.shape != t.data.shape:
        g = g.sum_to(t.data.shape)
    if g.data.dtype is not t.data.dtype:
        g = g.to(t.data.dtype)
    return g


def _add(acc, g):
    """acc + g: two gradients of one tensor (g already has its shape and dtype).

    NOTE: unless the backward pass is being recorded (create_graph), the kernel is called
    directly: the sum is bookkeeping, no graph node is needed, and accumulating into .grad
    is a fixed cost of every backward. acc + g gives the same array (Add's forward).
    """
    if _grad.enabled or type(acc) is not Tensor or acc.data.dtype is not g.data.dtype:
        return acc + g  # recorded, or a .grad the user assigned (another dtype, an array)
    return Tensor._make(kernels.binary("add", acc.data, g.data), None, False)


def run_backward(outputs, grad_outputs, retain_graph, create_graph, inputs=None):
    """Propagate gradients from `outputs` to the leaves.

    inputs=None: accumulate into .grad of every leaf that requires grad (and of
    non-leaves that called retain_grad()). Otherwise return a list with the gradient
    of each tensor in `inputs` (None where unreachable), touching no .grad.
    """
    roots_grad = _root_gradients(outputs, grad_outputs)
    wanted = None if inputs is None else {id(t): i for i, t in enumerate(inputs)}
    order, produced = _topological_order(outputs, wanted)
    found = [None] * (0 if inputs is None else len(inputs))

    def deliver(t, g):
        # A gradient reaching a tensor whose own grad is wanted (leaf or retain_grad).
        if wanted is None:
            t.grad = g if t.grad is None else _add(t.grad, g)
        else:
            i = wanted.get(id(t))
            if i is not None:
                found[i] = g if found[i] is None else _add(found[i], g)

    pending = {}  # id(node) -> the sum so far of the gradients reaching its output
    for out, g in zip(outputs, roots_grad):
        fn = out._ctx
        if fn is None:
            deliver(out, g)
        else:
            key = id(fn)
            pending[key] = g if key not in pending else pending[key] + g

    # NOTE: the loop below runs once per node of every backward pass; it is written for
    # the common case (a leaf's .grad, a gradient of the input's own shape and dtype)
    # with the general paths (deliver, _reduce_to) behind one test each.
    prev = _grad.enabled
    _grad.enabled = bool(create_graph)
    try:
        for fn in reversed(order):
            g = pending.pop(id(fn), None)
            if g is None:
                continue
            if produced:
                delivered = set()
                for t in produced.get(id(fn), ()):
                    if id(t) not in delivered:
                        delivered.add(id(t))
                        deliver(t, g)
            grads = fn.backward(g)
            if not isinstance(grads, tuple):
                grads = (grads,)
            for p, pg, need in zip(fn.inputs, grads, fn.needs_input_grad):
                if not need or pg is None:
                    continue
                data = p.data
                if pg.data.shape != data.shape or pg.data.dtype is not data.dtype:
                    pg = _reduce_to(pg, p)
                ctx = p._ctx
                if ctx is None:
                    if wanted is None and p.grad is None:
                        p.grad = pg
                    else:
                        deliver(p, pg)
                else:
                    key = id(ctx)
                    pending[key] = pg if key not in pending else _add(pending[key], pg)
            if not retain_graph:
                # Free the node: its inputs (and any saved arrays) go with the reference.
                fn.__dict__.clear()
                fn.inputs = None
    finally:
        _grad.enabled = prev
    return found


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False, allow_unused=False):
    """Gradients of `outputs` with respect to `inputs`, like torch.autograd.grad.

    outputs: Tensor or sequence of Tensors; inputs: Tensor or sequence of Tensors
    that require grad; grad_outputs: matching sequence (None entries only for
    single-element outputs). Returns a tuple of Tensors, one per input (None for an
    input the outputs do not depend on when allow_unused=True). .grad is untouched.
    retain_graph defaults to create_graph.
    Raises RuntimeError if an input does not require grad, if an input is unused and
    allow_unused is False, or when the graph was already freed.
    """
    outputs, inputs = _as_tuple(outputs), _as_tuple(inputs)
    grad_outputs = (None,) * len(outputs) if grad_outputs is None else _as_tuple(grad_outputs)
    if len(grad_outputs) != len(outputs):
        raise ValueError(f"grad_outputs: expected {len(outputs)} entries (one per output), got {len(grad_outputs)}")
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor):
            raise TypeError(f"inputs[{i}] must be a Tensor, got {type(t).__name__}")
        if not t.requires_grad:
            raise RuntimeError(f"inputs[{i}] does not require grad (shape {t.shape}); call requires_grad_() on it")
    if retain_graph is None:
        retain_graph = create_graph
    found = run_backward(outputs, grad_outputs, retain_graph, create_graph, inputs)
    for i, g in enumerate(found):
        if g is None and not allow_unused:
            raise RuntimeError(f"inputs[{i}] (shape {inputs[i].shape}) was not used to compute the outputs; "
                               f"pass allow_unused=True if this is expected")
    return tuple(found)
