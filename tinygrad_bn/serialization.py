"""tb.save / tb.load: nested state dicts in an .npz file, with no pickled code.

The file is a plain numpy .npz: one entry per array ("a0", "a1", ...) plus the entry
"__structure__", UTF-8 JSON (stored as uint8 bytes) that rebuilds the object. Each
node of the JSON names its type, so dict keys keep their type (optimizer state dicts
use int keys), tuples stay tuples and Tensors come back as Tensors:

    {"format": "tinygrad_bn", "version": 1, "root": node}
    node = {"type": "dict", "items": [[key_node, node], ...]}
         | {"type": "list" | "tuple", "items": [node, ...]}
         | {"type": "tensor", "entry": "a0", "requires_grad": false}
         | {"type": "ndarray" | "npscalar", "entry": "a1"}
         | {"type": "int" | "float" | "str" | "bool", "value": ...} | {"type": "none"}
"""
import json
import numbers
import os
import struct
import zipfile
import zlib

import numpy as np

from .tensor import Tensor

_STRUCTURE = "__structure__"
_FORMAT = "tinygrad_bn"
_VERSION = 1
# What zipfile, numpy and json raise on a damaged file (zipfile: NotImplementedError for a
# garbled compression method or version field, RuntimeError for an "encrypted" flag).
_CORRUPT = (zipfile.BadZipFile, EOFError, ValueError, OSError, struct.error, zlib.error,
            NotImplementedError, RuntimeError)


def save(obj, path):
    """Write obj to exactly `path` (a str, os.PathLike or a binary file object) as .npz.

    obj: a Tensor, numpy array or scalar, Python int/float/bool/str/None, or a dict
    (keys str, int, float or bool), list or tuple nesting those. Raises TypeError
    naming the key path (e.g. obj['state'][0]['exp_avg']) for anything else, before
    the file is opened; ValueError for a circular reference.
    """
    arrays = {}
    root = _encode(obj, "obj", arrays, set())
    header = {"format": _FORMAT, "version": _VERSION, "root": root}
    arrays[_STRUCTURE] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    if hasattr(path, "write"):
        np.savez(path, **arrays)
        return
    # NOTE: through a file object, because np.savez appends ".npz" to a bare path.
    with open(os.fspath(path), "wb") as f:
        np.savez(f, **arrays)


def load(path):
    """Read an object written by save(); Tensors come back as Tensors of the same dtype.

    Raises FileNotFoundError for a missing file and ValueError naming the path for a
    file that is not a tinygrad_bn .npz (truncated, corrupt, another format).
    """
    name = repr(path) if hasattr(path, "read") else repr(os.fspath(path))
    if not hasattr(path, "read"):
        # NOTE: np.load calls any file it cannot place a pickle, which misleads for a text file.
        with open(os.fspath(path), "rb") as f:  # FileNotFoundError, IsADirectoryError as they are
            head = f.read(6)
        if not head.startswith((b"PK", b"\x93NUMPY")):
            raise ValueError(f"{name} is not a tinygrad_bn .npz file: expected a zip archive "
                             f"(first bytes b'PK'), got first bytes {head!r}")
    try:
        npz = np.load(path, allow_pickle=False)
    except _CORRUPT as e:
        if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise
        raise ValueError(f"{name} is not a readable tinygrad_bn .npz file ({type(e).__name__}: {e})") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{name} is a .npy array, not a tinygrad_bn .npz file")
    with npz:
        try:
            if _STRUCTURE not in npz.files:
                raise ValueError(f"no {_STRUCTURE!r} entry: not written by tb.save")
            header = json.loads(npz[_STRUCTURE].tobytes().decode("utf-8"))
            if not isinstance(header, dict) or header.get("format") != _FORMAT:
                raise ValueError("the structure entry is not tinygrad_bn's")
            if header.get("version") != _VERSION:
                raise ValueError(f"format version {header.get('version')!r}, this reader knows {_VERSION}")
            return _decode(header["root"], npz)
        except _CORRUPT + (KeyError, TypeError, IndexError, AttributeError) as e:
            raise ValueError(f"{name} is not a readable tinygrad_bn .npz file ({type(e).__name__}: {e})") from e


def _key_node(key, where):
    if isinstance(key, (bool, np.bool_)):
        return {"type": "bool", "value": bool(key)}
    if isinstance(key, numbers.Integral):
        return {"type": "int", "value": int(key)}
    if isinstance(key, numbers.Real):
        return {"type": "float", "value": float(key)}
    if isinstance(key, str):
        return {"type": "str", "value": key}
    raise TypeError(f"cannot save {where}: dict key {key!r} of type {type(key).__name__} (use str, int, float, bool)")


def _encode(obj, where, arrays, active):
    """JSON node for obj; arrays gain its array leaves. `where` is the key path for errors."""
    if obj is None:
        return {"type": "none"}
    if isinstance(obj, bool):
        return {"type": "bool", "value": obj}
    if isinstance(obj, Tensor):
        entry = _add_array(obj.data, where, arrays)
        return {"type": "tensor", "entry": entry, "requires_grad": bool(obj.requires_grad)}
    if isinstance(obj, np.ndarray):
        return {"type": "ndarray", "entry": _add_array(obj, where, arrays)}
    if isinstance(obj, np.generic):
        return {"type": "npscalar", "entry": _add_array(np.asarray(obj), where, arrays)}
    if isinstance(obj, int):
        return {"type": "int", "value": int(obj)}
    if isinstance(obj, float):
        return {"type": "float", "value": float(obj)}
    if isinstance(obj, str):
        return {"type": "str", "value": obj}
    if isinstance(obj, (dict, list, tuple)):
        if id(obj) in active:
            raise ValueError(f"cannot save {where}: it contains itself (circular reference)")
        active.add(id(obj))
        if isinstance(obj, dict):
            node = {"type": "dict", "items": [[_key_node(k, where), _encode(v, f"{where}[{k!r}]", arrays, active)]
                                              for k, v in obj.items()]}
        else:
            node = {"type": "tuple" if isinstance(obj, tuple) else "list",
                    "items": [_encode(v, f"{where}[{i}]", arrays, active) for i, v in enumerate(obj)]}
        active.discard(id(obj))
        return node
    raise TypeError(f"cannot save {where}: unsupported type {type(obj).__name__} "
                    "(use Tensors, numpy arrays, numbers, strings, None, and dicts/lists/tuples of them)")


def _add_array(arr, where, arrays):
    if arr.dtype.hasobject:
        raise TypeError(f"cannot save {where}: numpy arrays of dtype object would need pickle")
    entry = f"a{len(arrays)}"
    arrays[entry] = arr
    return entry


def _decode(node, npz):
    kind = node["type"]
    if kind == "none":
        return None
    if kind in ("int", "float", "str", "bool"):
        value = node["value"]
        expected = {"int": int, "float": (int, float), "str": str, "bool": bool}[kind]
        if not isinstance(value, expected):
            raise ValueError(f"a {kind} node holds {value!r}")
        return float(value) if kind == "float" else value
    if kind == "dict":
        return {_decode(k, npz): _decode(v, npz) for k, v in node["items"]}
    if kind == "list":
        return [_decode(v, npz) for v in node["items"]]
    if kind == "tuple":
        return tuple(_decode(v, npz) for v in node["items"])
    if kind in ("tensor", "ndarray", "npscalar"):
        arr = npz[node["entry"]]
        if kind == "ndarray":
            return arr
        if kind == "npscalar":
            return arr[()]
        return Tensor(arr, dtype=arr.dtype, requires_grad=bool(node.get("requires_grad", False)))
    raise ValueError(f"unknown node type {kind!r}")


__all__ = ["save", "load"]
