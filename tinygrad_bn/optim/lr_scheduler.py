"""Learning-rate schedules, as torch.optim.lr_scheduler.

A scheduler sets every group's "lr" when constructed (epoch 0) and at each step().
Like torch they are chainable: each step updates the group's *current* lr (so a
change made by hand carries on), which for integer epochs equals the closed forms
given in the docstrings.
"""
import math
import numbers

from .optimizer import Optimizer, check_number


class LRScheduler:
    """Base class: subclasses give get_lr(), the new lr of each group at self.last_epoch.

    last_epoch=-1 starts a fresh schedule (sets each group's "initial_lr" from its lr);
    another value resumes one and needs "initial_lr" in every group (KeyError otherwise).
    """

    def __init__(self, optimizer, last_epoch=-1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__} needs a tb.optim.Optimizer, got {type(optimizer).__name__}")
        if not isinstance(last_epoch, numbers.Integral) or last_epoch < -1:
            raise ValueError(f"last_epoch must be an integer >= -1, got {last_epoch!r}")
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(f"'initial_lr' is not set in param_groups[{i}] when resuming a schedule")
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = int(last_epoch)
        self._step_count = 0
        self.step()

    def get_lr(self):
        raise NotImplementedError(f"{type(self).__name__} does not implement get_lr")

    def step(self):
        """Advance one epoch and write the new lr into every parameter group."""
        self._step_count += 1
        self.last_epoch += 1
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self):
        """The lr of each group as last set by this scheduler."""
        return list(self._last_lr)

    def state_dict(self):
        """Every attribute except the optimizer (numbers and lists: tb.save can store it)."""
        return {k: list(v) if isinstance(v, list) else v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict):
        """Restore a state_dict(); ValueError (changing nothing) for unknown keys or a
        base_lrs list whose length is not the optimizer's number of groups."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        unknown = set(state_dict) - set(self.state_dict())
        if unknown:
            raise ValueError(f"unknown keys for {type(self).__name__}: {sorted(unknown)}")
        n_groups = len(self.optimizer.param_groups)
        if "base_lrs" in state_dict and len(state_dict["base_lrs"]) != n_groups:
            raise ValueError(
                f"loaded base_lrs has {len(state_dict['base_lrs'])} entries, expected {n_groups} (parameter groups)")
        self.__dict__.update({k: list(v) if isinstance(v, (list, tuple)) else v for k, v in state_dict.items()})


class StepLR(LRScheduler):
    """StepLR(optimizer, step_size, gamma=0.1): lr = initial_lr * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        if not isinstance(step_size, numbers.Integral) or isinstance(step_size, bool) or step_size < 1:
            raise ValueError(f"step_size must be an integer >= 1, got {step_size!r}")
        check_number("gamma", gamma)
        self.step_size = int(step_size)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return [group["lr"] for group in self.optimizer.param_groups]
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]


class CosineAnnealingLR(LRScheduler):
    """CosineAnnealingLR(optimizer, T_max, eta_min=0) (SGDR without restarts):

        lr = eta_min + (initial_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2

    Past T_max the lr rises again along the same cosine (period 2 * T_max), as torch.
    """

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        check_number("T_max", T_max)
        if not T_max > 0:
            raise ValueError(f"T_max must be > 0, got {T_max!r}")
        check_number("eta_min", eta_min)
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        groups, t, T, eta_min = self.optimizer.param_groups, self.last_epoch, self.T_max, self.eta_min
        if t == 0:
            return [group["lr"] for group in groups]
        if self._step_count == 1:  # resuming at last_epoch > 0: closed form
            return [eta_min + (base - eta_min) * (1 + math.cos(t * math.pi / T)) / 2 for base in self.base_lrs]
        if (t - 1 - T) % (2 * T) == 0:  # the recursion divides by zero here: step up from the minimum
            return [group["lr"] + (base - eta_min) * (1 - math.cos(math.pi / T)) / 2
                    for base, group in zip(self.base_lrs, groups)]
        ratio = (1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
        return [ratio * (group["lr"] - eta_min) + eta_min for group in groups]


__all__ = ["LRScheduler", "StepLR", "CosineAnnealingLR"]
