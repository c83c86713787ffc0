"""Mini-batching and small datasets (numpy arrays in, Tensors out of the loader)."""
from .datasets import load_digits, load_mnist1d, make_moons, make_spirals, train_test_split
from .loader import DataLoader

__all__ = ["DataLoader", "load_digits", "load_mnist1d", "make_moons", "make_spirals", "train_test_split"]
