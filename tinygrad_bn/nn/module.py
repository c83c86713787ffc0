"""Module and Parameter: PyTorch's layer container semantics.

Attributes that are Parameters, Modules or registered buffers are tracked in
order of assignment; state_dict keys are dotted paths ("0.weight",
"1.running_mean"); load_state_dict validates everything before it copies
anything, so a failed load changes nothing.
"""
from collections import OrderedDict, namedtuple

import numpy as np

from ..tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module registers as learnable (requires_grad=True by default).

    Parameter(data, requires_grad=True): data is a Tensor (its array is shared, as
    torch's Parameter shares storage) or anything Tensor() accepts (copied).
    Raises TypeError for non-float data.
    """

    def __init__(self, data, requires_grad=True):
        if isinstance(data, Tensor):
            super().__init__(0.0)
            self.data = data.data
        else:
            super().__init__(data)
        if self.data.dtype.kind != "f":
            raise TypeError(f"Parameter data must be float32 or float64, got dtype {self.data.dtype}")
        self.requires_grad_(requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


def empty_param(shape, dtype=None):
    """A Parameter of zeros (float32 unless dtype is given) for an initialiser to fill."""
    return Parameter(np.zeros(shape, dtype=dtype or np.float32))


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Module:
    """Base class of every layer. Subclasses set attributes in __init__ (after
    super().__init__()) and define forward(*inputs); calling the module runs forward."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------ registration
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"cannot assign {name!r} before Module.__init__() is called")
        params, buffers, modules = self._parameters, self._buffers, self._modules
        if isinstance(value, Parameter):
            buffers.pop(name, None)
            modules.pop(name, None)
            self.__dict__.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            buffers.pop(name, None)
            self.__dict__.pop(name, None)
            modules[name] = value
        elif name in params:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as parameter {name!r} "
                                f"(expected a tb.nn.Parameter or None)")
            params[name] = None
        elif name in buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign {type(value).__name__} as buffer {name!r} (expected a Tensor or None)")
            buffers[name] = value
        elif name in modules:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as child module {name!r} (expected a Module or None)")
            modules[name] = None
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # Only called when normal lookup fails: look in the registries (like PyTorch,
        # parameters, buffers and submodules live only there, so every self.weight in a
        # forward() comes here; written out rather than as a loop: 10 % less per read).
        d = self.__dict__
        params = d.get("_parameters")
        if params is not None:
            if name in params:
                return params[name]
            buffers = d["_buffers"]
            if name in buffers:
                return buffers[name]
            modules = d["_modules"]
            if name in modules:
                return modules[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for registry in (self._parameters, self._buffers, self._modules):
            if name in registry:
                del registry[name]
                self._non_persistent.discard(name)
                return
        object.__delattr__(self, name)

    def register_parameter(self, name, param):
        """Register a Parameter (or None) under `name`."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter expects a Parameter or None, got {type(param).__name__}")
        self._parameters[name] = param
        self.__dict__.pop(name, None)

    def register_buffer(self, name, tensor, persistent=True):
        """Register a non-learnable Tensor (e.g. running statistics) kept in state_dict
        unless persistent=False."""
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"register_buffer expects a Tensor or None, got {type(tensor).__name__}")
        self._buffers[name] = tensor
        self.__dict__.pop(name, None)
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)

    def add_module(self, name, module):
        """Register a child module (or None) under `name`."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module expects a Module or None, got {type(module).__name__}")
        self._modules[name] = module
        self.__dict__.pop(name, None)

    # ------------------------------------------------------------ traversal
    def named_modules(self, prefix="", memo=None):
        """(dotted name, module) for this module and every descendant, each once."""
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(f"{prefix}.{name}" if prefix else name, memo)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        """(name, child) for each direct child; a child registered twice appears once."""
        seen = set()
        for name, child in self._modules.items():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def children(self):
        for _, child in self.named_children():
            yield child

    def _named_members(self, registry, recurse, include=lambda module, name: True):
        seen = set()
        modules = self.named_modules() if recurse else [("", self)]
        for prefix, module in modules:
            for name, value in getattr(module, registry).items():
                if value is None or id(value) in seen or not include(module, name):
                    continue
                seen.add(id(value))
                yield (f"{prefix}.{name}" if prefix else name), value

    def named_parameters(self, recurse=True):
        """(dotted name, Parameter) pairs; a parameter shared by two modules appears once."""
        return self._named_members("_parameters", recurse)

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse):
            yield p

    def named_buffers(self, recurse=True):
        return self._named_members("_buffers", recurse)

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse):
            yield b

    def apply(self, fn):
        """Call fn(module) on every child (recursively), then on self; returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # ------------------------------------------------------------ modes
    def train(self, mode=True):
        """Set training mode on this module and every descendant; returns self."""
        if not isinstance(mode, bool):
            raise TypeError(f"train(mode) expects a bool, got {type(mode).__name__}")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        """Evaluation mode (BatchNorm uses running statistics, Dropout is off); returns self."""
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        """Clear the .grad of every parameter (to None, as torch's default)."""
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad = Tensor._make(np.zeros_like(p.data), None, False)

    def requires_grad_(self, requires_grad=True):
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    # ------------------------------------------------------------ state
    def state_dict(self):
        """OrderedDict of dotted name -> Tensor for every parameter and persistent buffer.
        The Tensors share memory with the module (as torch's do)."""
        out = OrderedDict()
        self._save_to_state_dict(out, "")
        return out

    def _save_to_state_dict(self, out, prefix):
        # Every path is kept (a module registered twice is saved under both names, as torch).
        for name, p in self._parameters.items():
            if p is not None:
                out[prefix + name] = p.detach()
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent:
                out[prefix + name] = b.detach()
        for name, child in self._modules.items():
            if child is not None:
                child._save_to_state_dict(out, f"{prefix}{name}.")

    def load_state_dict(self, state_dict, strict=True):
        """Copy values (Tensors or numpy arrays) into this module's parameters and buffers.

        Everything is checked before anything is copied: with strict=True, missing or
        unexpected keys raise; a shape mismatch always raises. The error lists every
        problem (missing keys, unexpected keys, shape mismatches) and the module is left
        unchanged. Returns (missing_keys, unexpected_keys).
        Raises TypeError if state_dict is not a mapping or a value is not array-like,
        ValueError (KeyError-like problems included) listing the mismatches.
        """
        if not hasattr(state_dict, "items"):
            raise TypeError(f"load_state_dict expects a dict, got {type(state_dict).__name__}")
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        problems, staged = [], []
        for key, target in own.items():
            if key not in state_dict:
                continue
            value = state_dict[key]
            arr = value.data if isinstance(value, Tensor) else value
            if not isinstance(arr, (np.ndarray, np.generic, int, float)):
                raise TypeError(f"state_dict[{key!r}]: expected a Tensor or numpy array, got {type(value).__name__}")
            arr = np.asarray(arr)
            if arr.shape != target.shape:
                problems.append(f"size mismatch for {key}: expected shape {target.shape}, got {arr.shape}")
                continue
            if arr.dtype.kind not in "fiub":
                problems.append(f"dtype mismatch for {key}: expected a numeric array, got dtype {arr.dtype}")
                continue
            staged.append((target.data, arr))
        if strict and missing:
            problems.insert(0, "missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.insert(1 if strict and missing else 0, "unexpected keys: " + ", ".join(unexpected))
        if problems:
            raise ValueError(f"Error(s) in loading state_dict for {type(self).__name__}:\n  " + "\n  ".join(problems))
        for dest, src in staged:
            np.copyto(dest, src, casting="unsafe")
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------ calling
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def extra_repr(self):
        """One line of the module's own settings, shown in repr."""
        return ""

    def __repr__(self):
        lines = []
        for name, child in self._modules.items():
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child_repr}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n" + "\n".join(lines) + "\n)"
