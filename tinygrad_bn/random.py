"""Random number state. Each thread has its own generator, so threads training
independent models do not disturb each other's draws."""
import threading

import numpy as np

_state = threading.local()


def manual_seed(seed):
    """Seed the calling thread's generator (used by randn, rand, dropout, shuffling).

    Raises TypeError if seed is not an int.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"manual_seed expects an int, got {type(seed).__name__}")
    _state.rng = np.random.default_rng(int(seed))


def generator():
    """The calling thread's numpy Generator (created unseeded on first use)."""
    rng = getattr(_state, "rng", None)
    if rng is None:
        rng = _state.rng = np.random.default_rng()
    return rng
