"""tb.data: DataLoader batching and shuffling, bundled and generated datasets."""
import random
import sys

import numpy as np
import pytest

import tinygrad_bn as tb
from tinygrad_bn.data import (
    DataLoader, load_digits, load_mnist1d, make_moons, make_spirals, train_test_split,
)


def toy(n=10):
    return np.arange(n * 2, dtype=np.float64).reshape(n, 2), np.arange(n, dtype=np.int32)


# ---------------------------------------------------------------- DataLoader
def test_batches_in_order_with_a_short_last_batch():
    x, y = toy(10)
    loader = DataLoader(x, y, batch_size=3)
    batches = list(loader)
    assert len(loader) == len(batches) == 4
    assert [len(yb) for _, yb in batches] == [3, 3, 3, 1]
    xb, yb = batches[0]
    assert isinstance(xb, tb.Tensor) and xb.dtype == np.float32 and yb.dtype == np.int64
    np.testing.assert_array_equal(np.concatenate([yb.numpy() for _, yb in batches]), y)
    np.testing.assert_array_equal(np.concatenate([xb.numpy() for xb, _ in batches]), x)


def test_drop_last_drops_the_short_batch():
    x, y = toy(10)
    loader = DataLoader(x, y, batch_size=3, drop_last=True)
    assert len(loader) == 3 and [len(yb) for _, yb in loader] == [3, 3, 3]
    assert len(DataLoader(x, y, batch_size=20, drop_last=True)) == 0
    assert len(DataLoader(x, y, batch_size=20)) == 1


def test_shuffle_is_a_new_permutation_each_epoch_and_reproducible():
    x, y = toy(50)

    def epochs(loader, n):
        return [np.concatenate([yb.numpy() for _, yb in loader]) for _ in range(n)]

    first = epochs(DataLoader(x, y, batch_size=8, shuffle=True, seed=3), 3)
    again = epochs(DataLoader(x, y, batch_size=8, shuffle=True, seed=3), 3)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
        assert sorted(a) == list(range(50))
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first[0], epochs(DataLoader(x, y, batch_size=8, shuffle=True, seed=4), 1)[0])


def test_shuffled_x_and_y_stay_paired():
    x, y = toy(20)
    for xb, yb in DataLoader(x, y, batch_size=6, shuffle=True, seed=0):
        np.testing.assert_array_equal(xb.numpy()[:, 0], 2 * yb.numpy())


def test_without_labels_yields_x_alone_and_float_targets_stay_float():
    x, _ = toy(5)
    assert [b.shape for b in DataLoader(x, batch_size=2)] == [(2, 2), (2, 2), (1, 2)]
    _, yb = next(iter(DataLoader(x, x[:, 0], batch_size=2)))
    assert yb.dtype == np.float32


def test_loader_validation():
    x, y = toy(10)
    with pytest.raises(ValueError, match="len\\(x\\)=10.*len\\(y\\)=9"):
        DataLoader(x, y[:9])
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(x, y, batch_size=0)
    with pytest.raises(TypeError, match="batch_size"):
        DataLoader(x, y, batch_size=2.5)
    with pytest.raises(TypeError, match="dtype"):
        DataLoader(np.array(["a", "b"]))


# ---------------------------------------------------------------- datasets
def test_train_test_split_is_a_seeded_partition():
    x, y = toy(10)
    x_tr, y_tr, x_te, y_te = train_test_split(x, y, test_size=0.25, seed=1)
    assert len(y_te) == 3 and len(y_tr) == 7
    assert sorted(np.concatenate([y_tr, y_te])) == list(range(10))
    np.testing.assert_array_equal(x_tr[:, 0], 2 * y_tr)
    np.testing.assert_array_equal(train_test_split(x, y, 0.25, seed=1)[3], y_te)
    with pytest.raises(ValueError, match="test_size"):
        train_test_split(x, y, test_size=1.0)


def test_load_digits_shapes_and_range():
    pytest.importorskip("sklearn")
    x_tr, y_tr, x_te, y_te = load_digits()
    assert x_tr.shape == (1437, 64) and x_te.shape == (360, 64)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int64
    assert x_tr.min() == 0.0 and x_tr.max() == 1.0
    assert set(np.unique(y_te)) == set(range(10))
    assert load_digits(flatten=False)[0].shape == (1437, 1, 8, 8)


def test_load_mnist1d_standard_split_and_global_rngs_untouched():
    pytest.importorskip("mnist1d")
    py_state, np_state = random.getstate(), np.random.get_state()[1].copy()
    x_tr, y_tr, x_te, y_te = load_mnist1d()
    assert (x_tr.shape, y_tr.shape, x_te.shape, y_te.shape) == ((4000, 40), (4000,), (1000, 40), (1000,))
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int64
    assert set(np.unique(y_tr)) == set(range(10))
    assert random.getstate() == py_state
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)


@pytest.mark.parametrize("module, loader", [("sklearn.datasets", load_digits), ("mnist1d.data", load_mnist1d)])
def test_missing_optional_package_says_how_to_install(monkeypatch, module, loader):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[examples\]"'):
        loader()


def test_make_spirals_and_moons():
    x, y = make_spirals(50, noise=0.05, seed=0)
    assert x.shape == (100, 2) and x.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [50, 50]
    np.testing.assert_array_equal(x, make_spirals(50, noise=0.05, seed=0)[0])
    assert make_spirals(10, 0.0, seed=0, n_classes=3)[1].tolist() == [0] * 10 + [1] * 10 + [2] * 10
    # noiseless arms lie on r = t / (3 pi) <= 1
    assert np.all(np.hypot(*make_spirals(30, 0.0, seed=1)[0].T) <= 1 + 1e-6)

    x, y = make_moons(101, noise=0.0, seed=0)
    assert x.shape == (101, 2) and np.bincount(y).tolist() == [50, 51]
    upper, lower = x[y == 0], x[y == 1]
    np.testing.assert_allclose(np.hypot(*upper.T), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.hypot(lower[:, 0] - 1, lower[:, 1] - 0.5), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="noise"):
        make_moons(10, noise=-1.0)
