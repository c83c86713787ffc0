"""Adam (Kingma & Ba, 2015) and AdamW (Loshchilov & Hutter, 2019), as torch.optim."""
import numpy as np

from .optimizer import Optimizer, check_number


class Adam(Optimizer):
    """Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False).

    Per parameter, with g its gradient and t its own step counter (torch.optim.Adam):

        g = g + weight_decay * p                          (L2 penalty; AdamW decouples it)
        m = m + (1 - beta1) * (g - m)                     (torch's lerp_)
        v = beta2 * v + (1 - beta2) * g * g
        v_max = max(v_max, v)                             (amsgrad only; used in place of v)
        p = p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    Raises ValueError for lr, eps or weight_decay < 0 and betas outside [0, 1).
    State per parameter: "step", "exp_avg", "exp_avg_sq" (and "max_exp_avg_sq").
    """

    _decoupled_weight_decay = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=bool(amsgrad))
        super().__init__(params, defaults)

    def _check_group(self, group):
        check_number("lr", group["lr"], low=0.0)
        check_number("eps", group["eps"], low=0.0)
        betas = group["betas"]
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        check_number("beta1 (betas[0])", betas[0], low=0.0, high=1.0, high_open=True)
        check_number("beta2 (betas[1])", betas[1], low=0.0, high=1.0, high_open=True)
        check_number("weight_decay", group["weight_decay"], low=0.0)

    def _update(self, param, grad, state, group):
        lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(param)
            state["exp_avg_sq"] = np.zeros_like(param)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = np.zeros_like(param)
        state["step"] += 1
        step = state["step"]
        if weight_decay != 0:
            if self._decoupled_weight_decay:
                param *= 1 - lr * weight_decay
            else:
                grad = grad + weight_decay * param
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg += (1 - beta1) * (grad - exp_avg)
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * grad * grad
        if group["amsgrad"]:
            if "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = np.zeros_like(param)
            np.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            exp_avg_sq = state["max_exp_avg_sq"]
        step_size = lr / (1 - beta1**step)
        denom = np.sqrt(exp_avg_sq) / (1 - beta2**step) ** 0.5 + eps
        # NOTE: (value * m) / denom, the evaluation order of torch's addcdiv_
        param += -step_size * exp_avg / denom


class AdamW(Adam):
    """AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False).

    Adam with decoupled weight decay (torch.optim.AdamW): each step first shrinks
    p = p * (1 - lr * weight_decay), then applies Adam with no L2 term in the gradient.
    """

    _decoupled_weight_decay = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
