"""Shared timing helpers for the bench scripts (not part of the library)."""
import time


def best_time(fn, min_time=0.2, repeats=5):
    """Median over `repeats` runs of the mean time per call (seconds), each run
    looping long enough (>= min_time / repeats) to be above timer noise."""
    fn()  # warm-up: allocations, caches, lazy imports
    n, t0 = 1, time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    n = max(1, int(min_time / repeats / one))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t0) / n)
    samples.sort()
    return samples[len(samples) // 2]


def interleaved_times(fns, min_time=0.3, rounds=7, before=None):
    """{name: seconds per call} for a dict of callables timed round-robin.

    This machine's speed drifts by 20-50 % over seconds (a shared host's memory
    bandwidth); timing one candidate after another turns that drift into a false
    ratio. Here every round times each candidate for about min_time / rounds, in
    turn, and each candidate keeps its fastest round: the candidates see the same
    conditions, and the minimum is the least disturbed estimate of each.
    before: optional {name: callable} run, untimed, before each of that candidate's
    batches (e.g. setting the thread count it is measured at).
    """
    before = before or {}
    noop = lambda: None  # noqa: E731
    loops = {}
    for name, fn in fns.items():
        before.get(name, noop)()
        fn()  # warm-up: allocations, caches, lazy imports
        t0 = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t0, 1e-7)
        loops[name] = max(1, int(min_time / rounds / one))
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            before.get(name, noop)()
            n = loops[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / n)
    return best


def try_import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def fmt(seconds):
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    return f"{seconds * 1e3:.3f} ms"


def ratio(a, b):
    return "-" if a is None or b is None else f"{a / b:.2f}"
