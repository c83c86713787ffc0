"""Stochastic gradient descent with momentum, as torch.optim.SGD."""
import numpy as np

from .._C import optim as _optim
from ..threads import threads_for
from .optimizer import Optimizer, check_number


class SGD(Optimizer):
    """SGD(params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False).

    Per parameter, with g its gradient (torch.optim.SGD's formulas):

        g = g + weight_decay * p
        b = g                                     first step (no dampening)
        b = momentum * b + (1 - dampening) * g    later steps
        g = g + momentum * b   if nesterov   else   g = b      (when momentum != 0)
        p = p - lr * g

    Raises ValueError for lr, momentum or weight_decay < 0, and for nesterov without
    momentum > 0 and dampening == 0. State per parameter: "momentum_buffer".
    """

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=bool(nesterov))
        super().__init__(params, defaults)

    def _check_group(self, group):
        check_number("lr", group["lr"], low=0.0)
        check_number("momentum", group["momentum"], low=0.0)
        check_number("dampening", group["dampening"])
        check_number("weight_decay", group["weight_decay"], low=0.0)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "nesterov momentum requires momentum > 0 and dampening = 0, got "
                f"momentum={group['momentum']!r}, dampening={group['dampening']!r}")

    def _update(self, param, grad, state, group):
        # One fused pass (src_cy/optim.pyx), the formulas above in numpy's rounding order.
        momentum = group["momentum"]
        buf = state.get("momentum_buffer") if momentum != 0 else None
        first = momentum != 0 and buf is None
        if first:
            buf = state["momentum_buffer"] = np.empty_like(param)
        elif buf is not None and (buf.dtype != param.dtype or not buf.flags.c_contiguous):
            # (a loaded state dict may hold another dtype or layout)
            buf = state["momentum_buffer"] = np.ascontiguousarray(buf, dtype=param.dtype)
        _optim.sgd_step(param, np.ascontiguousarray(grad, dtype=param.dtype), buf, group["lr"], momentum,
                        group["dampening"], group["weight_decay"], group["nesterov"], first,
                        threads_for(param.size))
