"""Function: one differentiable op. `forward` works on numpy arrays (calling a
kernel); `backward` works on Tensors, so the backward pass is itself recorded
when create_graph=True and higher-order gradients come for free."""
from .grad_mode import is_grad_enabled
from .grad_mode import state as _grad
from .tensor import Tensor

_make = Tensor._make


class Function:
    """Base class of every op in functions.py.

    Subclasses define:
      forward(self, *arrays) -> array        arrays are the inputs' .data; keyword
                                              arguments of apply() are attributes of self
      backward(self, grad_out) -> Tensor | tuple of (Tensor | None)
                                              one gradient per input, with the output's
                                              shape or the input's (the engine sums a
                                              broadcast gradient back to the input shape)
    Inside backward, self.inputs are the input Tensors and self.output() the result.
    """

    # Set by apply when the graph is recorded; cleared when backward frees the graph.
    inputs = None
    needs_input_grad = ()

    @classmethod
    def apply(cls, *inputs, **attrs):
        """Run forward on the inputs' arrays; record the node if any input requires grad."""
        # NOTE: this runs for every op of every step, the backward pass's ops included;
        # toy nets are dominated by this per-op Python cost, not by kernels. One- and
        # two-input ops (nearly all) are unrolled: on tiny tensors the two list
        # comprehensions of the general case cost about as much as the kernel.
        fn = object.__new__(cls)
        if attrs:
            fn.__dict__ = attrs  # a fresh dict on every call: it becomes the node's own
        n = len(inputs)
        if n == 2:
            x, y = inputs
            out = fn.forward(x.data, y.data)
            if not (_grad.enabled and (x.requires_grad or y.requires_grad)):
                return _make(out, None, False)  # nothing to record (the backward pass's own ops)
            needs = (x.requires_grad, y.requires_grad)
        elif n == 1:
            x = inputs[0]
            out = fn.forward(x.data)
            if not (_grad.enabled and x.requires_grad):
                return _make(out, None, False)
            needs = (True,)
        else:
            out = fn.forward(*[t.data for t in inputs])
            needs = tuple([t.requires_grad for t in inputs])
            if not (_grad.enabled and True in needs):
                return _make(out, None, False)
        fn.inputs = inputs
        fn.needs_input_grad = needs
        fn.out_data = out
        return _make(out, fn, True)

    def output(self):
        """The forward result as a Tensor. Differentiable (it is this node's output)
        when the backward pass is itself being recorded (create_graph=True), a
        constant otherwise."""
        if is_grad_enabled():
            return Tensor._make(self.out_data, self, True)
        return Tensor._make(self.out_data, None, False)

    def forward(self, *arrays):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, grad_out):
        raise NotImplementedError(f"{type(self).__name__} has no derivative")

    def __repr__(self):
        return f"<{type(self).__name__}>"
