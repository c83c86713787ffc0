"""Small datasets as numpy arrays: x float32, y int64.

load_digits and load_mnist1d return a train/test split (x_train, y_train, x_test,
y_test); make_spirals and make_moons generate (x, y) like scikit-learn's make_*.
"""
import math
import numbers
import random

import numpy as np

_EXAMPLES_HINT = 'install the examples extra: pip install -e ".[examples]"'


def train_test_split(x, y, test_size=0.2, seed=0):
    """Shuffle with np.random.default_rng(seed) and split off ceil(test_size * n) test samples.

    Returns x_train, y_train, x_test, y_test. Raises ValueError unless 0 < test_size < 1,
    x and y have the same length and both parts are non-empty.
    """
    if not isinstance(test_size, numbers.Real) or not 0 < test_size < 1:
        raise ValueError(f"test_size must be a fraction in (0, 1), got {test_size!r}")
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got len(x)={len(x)} and len(y)={len(y)}")
    n = len(x)
    n_test = math.ceil(test_size * n)
    if not 0 < n_test < n:
        raise ValueError(f"test_size={test_size} leaves an empty split of {n} samples")
    order = np.random.default_rng(seed).permutation(n)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def load_digits(test_size=0.2, seed=0, flatten=True):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), scaled to [0, 1].

    Returns x_train, y_train, x_test, y_test (split by train_test_split): x float32 of
    shape (n, 64), or (n, 1, 8, 8) for Conv2d when flatten=False; y int64.
    Raises ImportError if scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:
        raise ImportError(f"load_digits needs scikit-learn; {_EXAMPLES_HINT}") from e
    bunch = sk_load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    if not flatten:
        x = x.reshape(-1, 1, 8, 8)
    return train_test_split(x, bunch.target.astype(np.int64), test_size, seed)


def load_mnist1d(seed=42):
    """MNIST-1D (Greydanus, 2020) generated locally by the `mnist1d` package's
    make_dataset with its default arguments (5000 sequences of length 40, 10 classes,
    zero mean and unit std overall); `seed` replaces its default seed 42. Never downloads.

    Returns its standard split x_train (4000, 40), y_train (4000,), x_test (1000, 40),
    y_test (1000,): x float32, y int64. The package seeds Python's and numpy's global
    generators; their states are restored afterwards. Raises ImportError if mnist1d is
    missing.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:
        raise ImportError(f"load_mnist1d needs the mnist1d package; {_EXAMPLES_HINT}") from e
    args = get_dataset_args()
    args.seed = seed
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return (data["x"].astype(np.float32), data["y"].astype(np.int64),
            data["x_test"].astype(np.float32), data["y_test"].astype(np.int64))


def _check_sizes(name, n, noise):
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
    if not isinstance(noise, numbers.Real) or not noise >= 0:
        raise ValueError(f"noise must be a number >= 0, got {noise!r}")


def make_spirals(n_per_class=100, noise=0.02, seed=None, n_classes=2):
    """Interleaved spiral arms, one per class, each turning 1.5 times around the origin.

    Arm k is the curve r(t) = t / (3 pi) (cos t, sin t), t = 3 pi sqrt(u), u ~ U(0, 1),
    rotated by 2 pi k / n_classes; Gaussian noise of std `noise` is added. Returns
    x float32 (n_per_class * n_classes, 2), y int64 in class order.
    """
    _check_sizes("n_per_class", n_per_class, noise)
    if not isinstance(n_classes, numbers.Integral) or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.random((n_classes, n_per_class))) * 3 * np.pi
    angle = t + 2 * np.pi * np.arange(n_classes)[:, None] / n_classes
    x = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=-1).reshape(-1, 2) / (3 * np.pi)
    x = x + noise * rng.normal(size=x.shape)
    y = np.repeat(np.arange(n_classes, dtype=np.int64), n_per_class)
    return x.astype(np.float32), y


def make_moons(n=200, noise=0.1, seed=None):
    """Two interleaving half circles (as sklearn.datasets.make_moons, shuffled).

    n // 2 points on the upper moon (label 0), the rest on the lower one (label 1),
    plus Gaussian noise of std `noise`. Returns x float32 (n, 2), y int64 (n,).
    """
    _check_sizes("n", n, noise)
    rng = np.random.default_rng(seed)
    n_out, n_in = n // 2, n - n // 2
    t_out, t_in = np.linspace(0, np.pi, n_out), np.linspace(0, np.pi, n_in)
    x = np.concatenate([np.stack([np.cos(t_out), np.sin(t_out)], axis=1),
                        np.stack([1 - np.cos(t_in), 0.5 - np.sin(t_in)], axis=1)])
    y = np.concatenate([np.zeros(n_out, np.int64), np.ones(n_in, np.int64)])
    x = x + noise * rng.normal(size=x.shape)
    order = rng.permutation(n)
    return x[order].astype(np.float32), y[order]
