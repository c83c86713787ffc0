"""Reproducibility of whole training runs: 200 SGD steps of the digits MLP
(BatchNorm1d) and of the digits CNN (BatchNorm2d), built by the example scripts'
own `make_mlp` / `make_cnn` and trained with their optimiser, learning rate and
batch size, give bit-identical state dicts (parameters, running statistics and
`num_batches_tracked`) for 1 and 2 kernel threads, and for two runs with the same
seed (tb.manual_seed + DataLoader seed).

Design property 9 (every kernel is independent of the thread count) only shows in
a training run if the 2-thread run really takes the parallel paths, so each
variant lists the kernels that must run on more than one thread
(tinygrad_bn.threads.PARALLEL_MIN_ELEMENTS, blas.GEMM_PARALLEL_FLOPS) and a spy
asserts that they did. The example MLP's batch of 64 stays below every threshold,
so a full-batch variant takes the parallel paths instead. The CNN keeps the
example's batch of 64, the smallest that does: at 32, conv2's output (32, 32, 8, 8)
would hold 65536 elements, under the 131072 threshold. The test that thread counts
do not matter is this file's cost (about 15 s on 2 idle cores).
"""
import functools
import importlib.util
import os
import sys

import numpy as np
import pytest
from _training import run_steps, state_arrays

import tinygrad_bn as tb
from tinygrad_bn import blas, conv_kernels, kernels

pytest.importorskip("sklearn")

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
STEPS = 200


@functools.cache
def _example(name):
    """examples/<name>.py as a module (it puts examples/ on sys.path for its _common import)."""
    spec = importlib.util.spec_from_file_location(f"_example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def _digits(flatten):
    x, y, _, _ = tb.data.load_digits(seed=0, flatten=flatten)
    x.flags.writeable = y.flags.writeable = False  # shared by every run: nothing may change it
    return x, y


# The examples' settings: SGD(momentum=0.9), lr 0.1 (MLP) / 0.05 (CNN), shuffled batches with
# drop_last. `parallel`: kernels (named by the function that picks their thread count) that
# must get 2 threads in the 2-thread run (conv: its images split by blas.parallel_parts),
# "gemm" for a GEMM split by blas.matmul.
# fmt: off
VARIANTS = {
    # the example as written: (64, 128) activations = 8192 elements, GEMMs <= 2.1 MFLOP, all serial
    "mlp-b64-fused":      {"model": "mlp", "impl": "fused", "batch": 64, "parallel": ()},
    # full batch (1437 = the whole training split): BN1d input (1437, 128) = 183936 elements,
    # hidden GEMM 2*1437*128*128 = 47 MFLOP
    "mlp-b1437-fused":    {"model": "mlp", "impl": "fused", "batch": 1437,
                           "parallel": ("batch_norm_train", "batch_norm_backward", "gemm")},
    # the example's batch: conv2/BN2d/pool input (64, 32, 8, 8) = 131072 elements (conv1/BN1 at
    # 65536 stay serial), conv2 (im2col + GEMM) 2*64*32*64*144 = 38 MFLOP: its images are split
    # across the threads (_forward/_backward); the Linear GEMMs stay below the split threshold
    "cnn-b64-fused":      {"model": "cnn", "impl": "fused", "batch": 64,
                           "parallel": ("batch_norm_train", "batch_norm_backward", "_forward", "_backward",
                                        "max_pool2d_forward")},
    # composed BatchNorm's sums over the same 131072 elements stay serial (reductions start
    # at REDUCE_PARALLEL_MIN_ELEMENTS; test_kernels_reduce holds them to 1, 2, 3 threads)
    "cnn-b64-composed":   {"model": "cnn", "impl": "composed", "batch": 64,
                           "parallel": ("binary", "_forward", "_backward")},
}
# fmt: on


_RUNS = {}  # (variant name, threads, seed) -> (initial, final) of a run made by an earlier test


def train(variant, threads, seed=0):
    """STEPS steps of the example's training loop; returns (initial, final) state dicts as numpy."""
    tb.set_num_threads(threads)
    tb.manual_seed(seed)
    if variant["model"] == "mlp":
        model, lr = _example("train_mlp_digits").make_mlp(impl=variant["impl"]), 0.1
        x, y = _digits(True)
    else:
        model, lr = _example("train_cnn_digits").make_cnn(impl=variant["impl"]), 0.05
        x, y = _digits(False)
    initial = state_arrays(model)
    opt = tb.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loader = tb.data.DataLoader(x, y, batch_size=variant["batch"], shuffle=True, drop_last=True, seed=seed)
    model.train()
    return initial, run_steps(model, opt, loader, STEPS)


@pytest.fixture
def restore_threads():
    n = tb.get_num_threads()
    yield
    tb.set_num_threads(n)


@pytest.fixture
def thread_spy(monkeypatch):
    """{name: largest thread count it got}: kernels by the function that asked
    threads_for or blas.parallel_parts, "gemm" counting the GEMMs blas.matmul split
    across threads."""
    seen = {"gemm": 1}
    for module in (kernels, conv_kernels):
        def spy(n, *limit, real=module.threads_for):
            t = real(n, *limit)
            caller = sys._getframe(1).f_code.co_name
            seen[caller] = max(seen.get(caller, 1), t)
            return t
        monkeypatch.setattr(module, "threads_for", spy)

    def executor(n, real=blas._executor):
        # the calling thread computes one slice itself; blas.parallel_parts counts for the
        # function that called it (the conv kernels split their images that way)
        caller = sys._getframe(1)
        name = sys._getframe(2).f_code.co_name if caller.f_code.co_name == "parallel_parts" else "gemm"
        seen[name] = max(seen.get(name, 1), n + 1)
        return real(n)
    monkeypatch.setattr(blas, "_executor", executor)
    return seen


def assert_state_dicts_equal(a, b, what):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k]), (
            f"{what}: {k} differs in {np.count_nonzero(a[k] != b[k])} of {a[k].size} entries, "
            f"max |diff| = {np.abs(a[k].astype(np.float64) - b[k]).max()}")


def _feeds_batchnorm(key, state):
    """A Linear bias just before a BatchNorm: BN cancels it, its gradient is ~0."""
    index, _, name = key.partition(".")
    return name == "bias" and f"{int(index) + 1}.running_mean" in state


def assert_trained(initial, final):
    """Every entry moved (but a bias that BN cancels): the runs did train, so equal
    results are not trivially equal."""
    for k, v in initial.items():
        if k.endswith("num_batches_tracked"):
            assert final[k] == STEPS
        elif not _feeds_batchnorm(k, initial):
            assert final[k].dtype == np.float32, k
            assert np.isfinite(final[k]).all(), k
            assert not np.array_equal(v, final[k]), f"{k} did not change in {STEPS} steps"


@pytest.mark.parametrize("name", list(VARIANTS))
def test_training_is_independent_of_thread_count(name, restore_threads, thread_spy):
    """200 steps on 1 and on 2 kernel threads give bit-identical state dicts, and the
    2-thread run gave 2 threads to every kernel listed in the variant's `parallel`."""
    variant = VARIANTS[name]
    initial, one = train(variant, threads=1)
    assert set(thread_spy.values()) == {1}
    _, two = _RUNS[name, 2, 0] = train(variant, threads=2)
    serial = [k for k in variant["parallel"] if thread_spy.get(k, 1) < 2]
    assert not serial, f"the 2-thread run did not parallelise {serial} (thread counts seen: {thread_spy})"
    assert_trained(initial, one)
    assert_state_dicts_equal(one, two, "1 vs 2 threads")


@pytest.mark.parametrize("name", ["mlp-b64-fused", "cnn-b64-fused"])
def test_same_seed_gives_bit_identical_training(name, restore_threads):
    """Two runs with the same seed (model init, shuffling) in one process give
    bit-identical state dicts: no state leaks from one run into the next. The first
    run is the 2-thread run of the test above when it ran first."""
    first_init, first = _RUNS.get((name, 2, 0)) or train(VARIANTS[name], threads=2, seed=0)
    second_init, second = train(VARIANTS[name], threads=2, seed=0)
    assert_trained(first_init, first)
    assert_state_dicts_equal(first_init, second_init, "same seed, initial")
    assert_state_dicts_equal(first, second, "same seed, final")


def test_seed_changes_the_run(restore_threads):
    """A different seed gives different weights: the comparisons above can fail."""
    _, a = train(VARIANTS["mlp-b64-fused"], threads=2, seed=0)
    _, b = train(VARIANTS["mlp-b64-fused"], threads=2, seed=1)
    assert not np.array_equal(a["0.weight"], b["0.weight"])
    assert not np.array_equal(a["1.running_mean"], b["1.running_mean"])
