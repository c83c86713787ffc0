"""tb.save / tb.load: round trips keep structure, key types and dtypes; bad files raise ValueError."""
import io
import math
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_bn as tb
from tinygrad_bn.serialization import load, save


def assert_same(a, b):
    """Equal structure, container and leaf types, dtypes and values (NaN equals NaN)."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, dict):
        assert list(a) == list(b) and [type(k) for k in a] == [type(k) for k in b]
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, tb.Tensor):
        assert a.dtype == b.dtype and a.requires_grad == b.requires_grad
        np.testing.assert_array_equal(a.data, b.data)
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


def round_trip(obj):
    buf = io.BytesIO()
    save(obj, buf)
    buf.seek(0)
    return load(buf)


def test_nested_state_dict_round_trip_keeps_dtypes_and_key_types(tmp_path):
    obj = {
        "model": {"0.weight": tb.Tensor(np.ones((2, 3), np.float32), requires_grad=True),
                  "0.bias": tb.Tensor(np.zeros(2, np.float64)),
                  "1.num_batches_tracked": tb.Tensor(np.array(7, np.int64)),
                  "mask": tb.Tensor(np.array([True, False]))},
        "optim": {"state": {0: {"step": 3, "exp_avg": np.full((2, 3), 0.5, np.float32)}},
                  "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "nesterov": False, "params": [0, 1]}]},
        "arrays": [np.arange(4, dtype=np.int8), np.array([1.5], np.float16), np.array(["a", "bc"]), np.float32(2.5)],
        "meta": {"name": "mlp", "note": None, "epoch": 12, "loss": float("nan"), 1.5: "float key", True: "bool key"},
    }
    path = tmp_path / "ckpt.npz"
    save(obj, path)
    back = load(path)
    assert_same(obj, back)
    assert isinstance(back["model"]["0.weight"], tb.Tensor) and back["model"]["0.weight"].requires_grad


def test_writes_exactly_the_given_path(tmp_path):
    save({"a": np.ones(2)}, tmp_path / "model")
    save({"a": np.ones(2)}, str(tmp_path / "weights.bin"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "weights.bin"]
    assert zipfile.is_zipfile(tmp_path / "model")
    np.testing.assert_array_equal(load(tmp_path / "weights.bin")["a"], np.ones(2))


def test_loaded_arrays_do_not_alias_the_saved_ones():
    t = tb.Tensor([1.0, 2.0])
    back = round_trip({"t": t})["t"]
    back.data[0] = 99.0
    assert t.data[0] == 1.0


@pytest.mark.parametrize("cut", [0, 10, 0.5, -10])
def test_truncated_file_raises_value_error_naming_the_path(tmp_path, cut):
    path = tmp_path / "ckpt.npz"
    save({"w": np.arange(100.0), "step": 3}, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(cut * len(data)) if isinstance(cut, float) else cut])
    with pytest.raises(ValueError, match="ckpt.npz"):
        load(path)


def test_corrupted_bytes_raise_value_error(tmp_path):
    path = tmp_path / "ckpt.npz"
    save({"w": np.arange(50.0)}, path)
    data = path.read_bytes()
    for i in range(0, len(data), 5):  # every flipped byte is caught (the zip CRCs cover the data)
        damaged = bytearray(data)
        damaged[i] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            back = load(path)
        except ValueError as e:
            assert "ckpt.npz" in str(e)
        else:  # a flip in a zip field nobody reads may pass, and then the data must be intact
            np.testing.assert_array_equal(back["w"], np.arange(50.0))


def test_other_files_raise_value_error(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an npz")
    with pytest.raises(ValueError, match="notes.txt"):
        load(text)
    npy = tmp_path / "array.npy"
    np.save(npy, np.ones(3))
    with pytest.raises(ValueError, match="array.npy"):
        load(npy)
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=np.ones(3))
    with pytest.raises(ValueError, match="__structure__"):
        load(plain)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nope.npz")


def test_unsupported_objects_raise_type_error_naming_the_key_path(tmp_path):
    path = tmp_path / "x.npz"
    with pytest.raises(TypeError, match=r"obj\['state'\]\[0\]\['fn'\]"):
        save({"state": {0: {"fn": print}}}, path)
    with pytest.raises(TypeError, match=r"obj\[1\].*object"):
        save([1, np.array([None])], path)
    with pytest.raises(TypeError, match="dict key"):
        save({(1, 2): 3}, path)
    assert not path.exists()  # checked before the file is opened
    loop = []
    loop.append(loop)
    with pytest.raises(ValueError, match="circular"):
        save(loop, path)


leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=5),
    hnp.arrays(st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_]),
               hnp.array_shapes(min_dims=0, max_dims=2, max_side=3)),
    hnp.arrays(st.sampled_from([np.float32, np.float64, np.int64]),
               hnp.array_shapes(min_dims=0, max_dims=2, max_side=3)).map(tb.Tensor),
)
keys = st.one_of(st.text(max_size=5), st.integers(-5, 50))
nested = st.recursive(
    leaves,
    lambda children: st.one_of(st.lists(children, max_size=3), st.lists(children, max_size=3).map(tuple),
                               st.dictionaries(keys, children, max_size=3)),
    max_leaves=10,
)


@given(nested)
def test_round_trip_of_any_nesting(obj):
    assert_same(obj, round_trip(obj))
