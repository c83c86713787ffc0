"""Optimizer base: parameter groups, zero_grad, step and state dicts, as torch.optim.

Subclasses give their defaults, check one group's options in `_check_group`, and
update one parameter in `_update(param, grad, state, group)`, working on numpy
arrays in place: an optimiser step is not a Tensor op and records no graph.
"""
import numbers

import numpy as np

from ..grad_mode import enable_grad
from ..tensor import Tensor


def check_number(name, value, low=None, high=None, high_open=False):
    """Raise TypeError unless value is a real number, ValueError unless low <= value
    (and value < high or <= high). NaN fails every bound."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    ok = True
    if low is not None:
        ok = ok and value >= low
    if high is not None:
        ok = ok and (value < high if high_open else value <= high)
    if not ok:
        bounds = f"[{low}, {high})" if high_open else (f">= {low}" if high is None else f"[{low}, {high}]")
        raise ValueError(f"invalid {name}: {value!r} (expected {bounds})")


class Optimizer:
    """Base class of every optimiser.

    params: an iterable of Tensors, or of dicts {"params": [...], option: value, ...}
    (parameter groups); a group's options default to the constructor's (`defaults`).
    Attributes as in torch: `param_groups` (list of dicts), `state` (param -> dict),
    `defaults`.
    """

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self._check_group(self.defaults)
        self.state = {}
        self.param_groups = []
        if isinstance(params, (Tensor, dict)):
            raise TypeError(
                "params must be an iterable of Tensors or of dicts, got a single "
                f"{type(params).__name__}; wrap it in a list")
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list, expected at least one Tensor")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        for group in params:
            self.add_param_group(group)

    # ------------------------------------------------------------------ groups
    def _check_group(self, group):
        """Raise ValueError/TypeError for a bad option in `group` (subclasses)."""

    def add_param_group(self, param_group):
        """Add a group {"params": Tensor or list of Tensors, option: value, ...}.

        Missing options take the constructor's defaults. Raises TypeError for non-Tensor
        or non-float parameters and ValueError for non-leaves, duplicates and bad options;
        on error nothing is added.
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"a parameter group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("a parameter group needs a 'params' entry")
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError("parameters must be an ordered collection (a set's order changes between runs); use a list")
        else:
            params = list(params)
        seen = set()
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"parameter {i} of the group is a {type(p).__name__}, expected a Tensor")
            if p.dtype.kind != "f":
                raise TypeError(f"parameter {i} of the group has dtype {p.dtype}; only float tensors can be optimised")
            if not p.is_leaf:
                raise ValueError(f"parameter {i} of the group is not a leaf tensor; optimise leaves only")
            if id(p) in seen:
                raise ValueError(f"parameter {i} appears more than once in the group")
            seen.add(id(p))
        taken = {id(p) for g in self.param_groups for p in g["params"]}
        if seen & taken:
            raise ValueError("some parameters appear in more than one parameter group")
        group = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        self._check_group(group)
        group["params"] = params
        self.param_groups.append(group)

    # ------------------------------------------------------------------ stepping
    def zero_grad(self, set_to_none=True):
        """Forget every parameter's gradient: .grad = None (or zeros if set_to_none=False)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.grad = None if set_to_none else Tensor(np.zeros_like(p.grad.data))

    def _update(self, param, grad, state, group):
        """Update the array `param` in place from `grad`; `state` is its per-parameter dict."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _update")

    def step(self, closure=None):
        """Update every parameter that has a gradient; parameters with grad None are skipped.

        closure: optional callable that re-evaluates the model and returns the loss
        (run with gradients enabled); its result is returned. Raises ValueError, before
        any parameter changes, when a gradient's shape differs from its parameter's.
        """
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        todo = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.data
                if grad.shape != p.data.shape:
                    raise ValueError(f"gradient of shape {grad.shape} for a parameter of shape {p.data.shape}")
                todo.append((p, np.asarray(grad, dtype=p.data.dtype), group))
        for p, grad, group in todo:
            self._update(p.data, grad, self.state.setdefault(p, {}), group)
        return loss

    # ------------------------------------------------------------------ state dicts
    def state_dict(self):
        """A snapshot {"state": {index: {name: array or number}}, "param_groups": [...]}
        as torch: parameters are numbered in group order, each group lists its indices.
        Arrays are copies, so later steps do not change a saved state dict."""
        index = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        state = {}
        for p, s in self.state.items():
            if id(p) in index:
                state[index[id(p)]] = {k: np.array(v) if isinstance(v, np.ndarray) else v for k, v in s.items()}
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore options and per-parameter state saved by state_dict() (or tb.load of it).

        Raises ValueError, changing nothing, if the group count, a group's size, a state
        index or a state array's shape does not match this optimiser (message: expected
        vs got). Float state arrays are cast to their parameter's dtype (not "step").
        """
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("an optimizer state dict is a dict with keys 'state' and 'param_groups'")
        if not isinstance(state_dict["state"], dict):
            raise ValueError(f"state_dict['state'] must be a dict, got {type(state_dict['state']).__name__}")
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"loaded state dict has {len(saved_groups)} parameter groups, "
                f"expected {len(self.param_groups)} (this optimizer's)")
        by_index = {}
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if not isinstance(saved, dict) or "params" not in saved:
                raise ValueError(f"parameter group {i} of the loaded state dict has no 'params' list")
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"parameter group {i}: loaded state dict has {len(saved['params'])} parameters, "
                    f"expected {len(group['params'])}")
            for idx, p in zip(saved["params"], group["params"]):
                by_index[int(idx)] = p
        new_state = {}
        for key, entries in state_dict["state"].items():
            idx = int(key)
            if idx not in by_index:
                raise ValueError(f"loaded state for parameter index {idx}, which no parameter group lists")
            p = by_index[idx]
            new_state[p] = {name: _restore(value, p, idx, name) for name, value in entries.items()}
        new_groups = []
        for saved, group in zip(saved_groups, self.param_groups):
            options = {**{k: v for k, v in group.items() if k != "params"},
                       **{k: v for k, v in saved.items() if k != "params"}}
            self._check_group(options)
            new_groups.append({**options, "params": group["params"]})
        self.state = new_state
        self.param_groups = new_groups

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params"]
        return "\n".join(lines) + "\n)"


def _restore(value, param, idx, name):
    """A fresh copy of one saved state entry, cast to the parameter's dtype if a float array."""
    if isinstance(value, Tensor):
        value = value.data
    if not isinstance(value, np.ndarray):
        return value
    if value.ndim > 0 and value.shape != param.data.shape:
        raise ValueError(
            f"state {name!r} of parameter {idx} has shape {value.shape}, expected {param.data.shape}")
    if value.dtype.kind == "f" and name != "step":
        return np.array(value, dtype=param.data.dtype, order="C")
    return np.array(value)
