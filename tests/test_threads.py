"""Python threads: independent models trained at once in several threads give the
results they give one after another; grad mode and the random generator are
per thread; kernels release the GIL while they run.

Overlap is forced, not hoped for: concurrent training runs in lockstep through a
threading.Barrier at every step, and the grad-mode and generator tests hand control
back and forth with Events so each step of one thread happens between two steps of
the other.
"""
import sys
import threading
import time

import numpy as np
import pytest
from _training import run_steps

import tinygrad_bn as tb
from tinygrad_bn import conv_kernels, kernels
from tinygrad_bn.threads import PARALLEL_MIN_ELEMENTS

nn, F = tb.nn, tb.nn.functional
TIMEOUT = 60  # seconds any thread waits for another before the test fails instead of hanging


@pytest.fixture
def restore_threads():
    n = tb.get_num_threads()
    yield
    tb.set_num_threads(n)


def run_in_threads(targets):
    """Start one thread per callable, join them all; return their results in order,
    re-raising the first exception a thread raised."""
    results, errors = [None] * len(targets), [None] * len(targets)

    def wrap(i, fn):
        try:
            results[i] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            errors[i] = e

    threads = [threading.Thread(target=wrap, args=(i, fn), daemon=True) for i, fn in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive(), "a thread did not finish (deadlock?)"
    for e in errors:
        if e is not None:
            raise e
    return results


# ---------------------------------------------------------------- independent models at once
def synthetic_task(seed, n, features=16, classes=4):
    """x ~ N(0, 1) (n, features) float32, labels = argmax of a random linear teacher plus noise."""
    rng = np.random.default_rng(1000 + seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    y = (x @ rng.standard_normal((features, classes)) + 0.5 * rng.standard_normal((n, classes))).argmax(1)
    return x, y.astype(np.int64)


def train_mlp(seed, impl, batch, hidden, steps=40, barrier=None):
    """MLP with BatchNorm1d and Dropout (draws from the thread's generator every step),
    SGD with momentum; seeded inside the calling thread. Returns the state dict as numpy."""
    tb.manual_seed(seed)
    x, y = synthetic_task(seed, 4 * batch)
    model = nn.Sequential(nn.Linear(16, hidden), nn.BatchNorm1d(hidden, impl=impl), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden, impl=impl), nn.ReLU(),
                          nn.Linear(hidden, 4))
    opt = tb.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = tb.data.DataLoader(x, y, batch_size=batch, shuffle=True, drop_last=True, seed=seed)
    # with a barrier every thread finishes step k before any starts step k + 1
    return run_steps(model, opt, loader, steps, None if barrier is None else lambda: barrier.wait(TIMEOUT))


# (seed, impl) of the four models; each thread trains a different one
MODELS = [(0, "fused"), (1, "composed"), (2, "fused"), (3, "composed")]


@pytest.mark.parametrize("batch, hidden, parallel", [(64, 32, False), (2048, 64, True)],
                         ids=["small", "parallel-kernels"])
def test_four_threads_training_at_once_match_training_one_after_another(batch, hidden, parallel,
                                                                         restore_threads):
    """Four threads, each training its own MLP with BatchNorm (fused or composed) and
    Dropout from its own seed, in lockstep (a Barrier at every step), end with state
    dicts bit-identical to the same four trainings run one after another in the main
    thread. "parallel-kernels": BN activations (2048, 64) = 131072 elements reach
    PARALLEL_MIN_ELEMENTS, so four Python threads start OpenMP teams at the same time."""
    tb.set_num_threads(2)
    assert (batch * hidden >= PARALLEL_MIN_ELEMENTS) == parallel
    sequential = [train_mlp(seed, impl, batch, hidden) for seed, impl in MODELS]
    barrier = threading.Barrier(len(MODELS))

    def job(seed, impl):
        def run():
            try:
                return train_mlp(seed, impl, batch, hidden, barrier=barrier)
            except BaseException:
                barrier.abort()  # release the others instead of leaving them waiting
                raise
        return run

    concurrent = run_in_threads([job(seed, impl) for seed, impl in MODELS])
    for (seed, impl), seq, conc in zip(MODELS, sequential, concurrent):
        assert seq.keys() == conc.keys()
        for k in seq:
            assert np.array_equal(seq[k], conc[k]), f"model {seed} ({impl}): {k} differs when trained concurrently"
    # the four models differ from each other: a shared generator or shared state would show
    assert not np.array_equal(sequential[0]["0.weight"], sequential[2]["0.weight"])
    assert all(s["1.num_batches_tracked"] == 40 for s in sequential)


# ---------------------------------------------------------------- grad mode per thread
def test_no_grad_in_one_thread_does_not_stop_another_recording():
    """While thread A sits inside no_grad, thread B records a graph, backpropagates
    through it and gets the float64 reference gradient; A's outputs meanwhile require
    no grad, and B's backward (which turns recording off in its own thread) leaves A
    inside no_grad. Each numbered step waits for the previous one in the other thread."""
    rng = np.random.default_rng(0)
    x_np, w_np = rng.standard_normal((5, 3)), rng.standard_normal((3, 2))
    steps = [threading.Event() for _ in range(5)]
    seen = {}

    def wait(i):
        assert steps[i].wait(TIMEOUT), f"timed out waiting for step {i}"

    def thread_a():
        x = tb.Tensor(x_np, requires_grad=True)
        with tb.no_grad():
            steps[0].set()  # 0: A is inside no_grad
            wait(1)
            z = (x * 2.0).tanh()  # 2: A computes while B's graph is alive
            seen["a_out"] = (z.requires_grad, z.is_leaf, tb.is_grad_enabled())
            steps[2].set()
            wait(3)
            seen["a_after_b_backward"] = tb.is_grad_enabled()  # 4: B's backward has run
            seen["a_late_out"] = (x * 3.0).requires_grad
        seen["a_after_exit"] = tb.is_grad_enabled()
        steps[4].set()

    def thread_b():
        x, w = tb.Tensor(x_np, requires_grad=True), tb.Tensor(w_np, requires_grad=True)
        wait(0)
        h = (x @ w).tanh()  # 1: B records while A is inside no_grad
        loss = (h * h).sum()
        seen["b_out"] = (h.requires_grad, loss.requires_grad, tb.is_grad_enabled())
        steps[1].set()
        wait(2)
        loss.backward()  # 3
        seen["b_grads"] = (x.grad.numpy(), w.grad.numpy())
        seen["b_after_backward"] = tb.is_grad_enabled()
        steps[3].set()
        wait(4)

    run_in_threads([thread_a, thread_b])
    assert seen["b_out"] == (True, True, True)
    assert seen["a_out"] == (False, True, False)
    assert seen["a_after_b_backward"] is False and seen["a_late_out"] is False
    assert seen["a_after_exit"] is True and seen["b_after_backward"] is True
    # d/dx sum(tanh(xw)^2) = (2 h (1 - h^2)) w^T, d/dw = x^T (2 h (1 - h^2))
    h = np.tanh(x_np @ w_np)
    g = 2 * h * (1 - h * h)
    np.testing.assert_allclose(seen["b_grads"][0], g @ w_np.T, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(seen["b_grads"][1], x_np.T @ g, rtol=1e-12, atol=1e-14)


def test_main_thread_grad_mode_is_not_inherited_by_a_new_thread():
    """A thread started from inside no_grad records graphs (grad mode starts enabled in
    every thread, like torch), and the main thread stays in no_grad meanwhile."""
    x = tb.Tensor([1.0, 2.0], requires_grad=True)
    with tb.no_grad():
        (inside,) = run_in_threads([lambda: ((x * x).requires_grad, tb.is_grad_enabled())])
        main = (x * x).requires_grad
    assert inside == (True, True)
    assert main is False


# ---------------------------------------------------------------- random generator per thread
def test_manual_seed_in_one_thread_does_not_change_another_threads_draws():
    """Two threads seed and draw (randn, rand, dropout masks) in strict alternation —
    each seeds after the other, then each draws between two draws of the other — and
    each gets exactly what its seed gives when replayed alone in the main thread."""
    turn = [threading.Event() for _ in range(8)]

    def wait(i):
        assert turn[i].wait(TIMEOUT), f"timed out waiting for turn {i}"

    def draws(seed, first):
        # turns: first thread takes the even ones, the other the odd ones
        def run():
            mine = range(0 if first else 1, 8, 2)
            out = []
            for k, i in enumerate(mine):
                if i > 0:
                    wait(i - 1)
                if k == 0:
                    tb.manual_seed(seed)
                else:
                    out.append(_draw(k))
                turn[i].set()
            return out
        return run

    a, b = run_in_threads([draws(11, True), draws(22, False)])
    assert_draws_equal(a, replay(11))
    assert_draws_equal(b, replay(22))
    assert not np.array_equal(a[0], b[0])


def _draw(k):
    """k-th draw of the sequence: randn, rand, then a dropout mask."""
    if k == 1:
        return tb.randn(4, 3).numpy()
    if k == 2:
        return tb.rand(5, dtype=tb.float64).numpy()
    return F.dropout(tb.ones(64), p=0.5).numpy()


def replay(seed):
    tb.manual_seed(seed)
    return [_draw(k) for k in (1, 2, 3)]


def assert_draws_equal(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and np.array_equal(g, w)


def test_seeding_a_thread_leaves_the_main_threads_sequence_alone():
    """The main thread seeds and draws once; a thread seeds with another seed and
    draws (and a second thread draws unseeded); the main thread's next draw is the
    second draw of its own seed."""
    tb.manual_seed(5)
    first = tb.randn(6).numpy()
    run_in_threads([lambda: (tb.manual_seed(9), tb.randn(6))[1], lambda: tb.randn(100)])
    second = tb.randn(6).numpy()
    tb.manual_seed(5)
    assert np.array_equal(first, tb.randn(6).numpy())
    assert np.array_equal(second, tb.randn(6).numpy())


# ---------------------------------------------------------------- GEMM thread pool shared by threads
def test_gemm_pool_grown_by_one_thread_still_serves_another(monkeypatch, restore_threads):
    """Thread X gets the GEMM pool for 2 threads and pauses before submitting; the main
    thread raises the thread count to 3 and runs a GEMM, which replaces the pool; X then
    submits to the pool it holds and gets the numpy product. (The replaced pool used to
    be shut down: X failed with "cannot schedule new futures after shutdown".)"""
    from tinygrad_bn import blas

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((400, 300)).astype(np.float32), rng.standard_normal((300, 300)).astype(np.float32)
    assert 2 * 400 * 300 * 300 >= blas.GEMM_PARALLEL_FLOPS
    has_pool, grown = threading.Event(), threading.Event()
    real = blas._executor

    def pausing_executor(n):
        pool = real(n)
        if threading.current_thread().name == "X":
            has_pool.set()
            assert grown.wait(TIMEOUT)
        return pool

    monkeypatch.setattr(blas, "_executor", pausing_executor)
    monkeypatch.setattr(blas, "_pool", None)  # a fresh pool for 2 threads, restored afterwards
    monkeypatch.setattr(blas, "_pool_size", 0)
    tb.set_num_threads(2)
    result = {}
    x = threading.Thread(target=lambda: result.setdefault("x", blas.matmul(a, b)), name="X", daemon=True)
    x.start()
    assert has_pool.wait(TIMEOUT)
    tb.set_num_threads(3)
    main = blas.matmul(a, b)
    grown.set()
    x.join(TIMEOUT)
    assert "x" in result, "the GEMM in thread X failed"
    assert np.array_equal(result["x"], main)
    np.testing.assert_allclose(main, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- kernels release the GIL
def _progress_during(call, attempts=30, budget_s=20.0):
    """Most increments a Python counter thread made while `call()` ran, over a few calls.

    NOTE: the switch interval is raised to 30 s, so a thread holding the GIL is not
    forced to give it up to the waiting counter (even when a loaded machine stretches a
    50 ms call to seconds): the counter only moves between reading `before` and `after`
    if `call` releases the GIL itself. The counter sleeps 0.5 ms between increments, so
    it gives the GIL up on its own and the caller gets it back as soon as the kernel
    ends. Stops at the first call that saw progress (a loaded machine may not schedule
    the counter during one particular call)."""
    counter, stop, started = [0], threading.Event(), threading.Event()

    def count():
        started.set()
        while not stop.is_set():
            counter[0] += 1
            time.sleep(0.0005)

    previous = sys.getswitchinterval()
    sys.setswitchinterval(30.0)
    thread = threading.Thread(target=count, daemon=True)
    best = 0
    try:
        thread.start()
        started.wait(TIMEOUT)
        deadline = time.monotonic() + budget_s
        for _ in range(attempts):
            before = counter[0]
            call()
            best = max(best, counter[0] - before)
            if best > 0 or time.monotonic() > deadline:
                break
    finally:
        stop.set()
        sys.setswitchinterval(previous)
        thread.join(TIMEOUT)
    return best


def _kernel_calls():
    """name -> a single-threaded call of a large kernel (tens of milliseconds)."""
    rng = np.random.default_rng(0)
    big = rng.standard_normal(8_000_000).astype(np.float32)
    rows = big.reshape(8000, 1000)
    ncl = big.reshape(1000, 8, 1000)
    gamma, beta = np.ones(8, np.float32), np.zeros(8, np.float32)
    _, mean, inv_std = kernels.batch_norm_train(ncl, gamma, beta, None, None, 0.1, 1e-5)
    image = big[:2_000_000].reshape(20, 4, 125, 200)
    return {
        "elementwise exp": lambda: kernels.unary("exp", big),
        "binary mul": lambda: kernels.binary("mul", big, big),
        "sum": lambda: kernels.sum(rows, (0,), False),
        "softmax": lambda: kernels.softmax(rows, 1),
        "transpose copy": lambda: kernels.contiguous(rows.T),
        "batch_norm forward": lambda: kernels.batch_norm_train(ncl, gamma, beta, None, None, 0.1, 1e-5),
        "batch_norm backward": lambda: kernels.batch_norm_backward(ncl, ncl, mean, inv_std, gamma),
        "max_pool2d": lambda: conv_kernels.max_pool2d_forward(image, (3, 3), (1, 1), (1, 1)),
        "cross_entropy": lambda: kernels.cross_entropy_forward(rows, np.zeros(8000, np.int64), 0.0),
    }


KERNELS = ["elementwise exp", "binary mul", "sum", "softmax", "transpose copy", "batch_norm forward",
           "batch_norm backward", "max_pool2d", "cross_entropy"]


@pytest.fixture(scope="module")
def kernel_calls():
    return _kernel_calls()


@pytest.mark.parametrize("name", KERNELS)
def test_kernel_releases_the_gil(name, kernel_calls, restore_threads):
    """While one thread is inside a large single-threaded kernel call, another thread
    runs Python code (its counter moves between the caller's reads just before and
    just after the call)."""
    tb.set_num_threads(1)
    assert _progress_during(kernel_calls[name]) > 0, f"{name} held the GIL for its whole run"


def test_gil_probe_detects_a_call_that_holds_the_gil():
    """The probe above can fail: a C call that keeps the GIL (sorting a large list of
    ints, ~50 ms) lets the counter thread make no progress at all."""
    data = np.random.default_rng(0).integers(0, 2**62, 400_000).tolist()
    assert _progress_during(lambda: sorted(data), attempts=3) == 0


def test_reductions_use_threads_from_a_larger_size_than_elementwise_ops(restore_threads, monkeypatch):
    # waking the sleeping team costs a reduction twice (partials, then their combine):
    # below REDUCE_PARALLEL_MIN_ELEMENTS it runs on one thread, elementwise ops do not wait
    from tinygrad_bn.threads import REDUCE_PARALLEL_MIN_ELEMENTS
    assert REDUCE_PARALLEL_MIN_ELEMENTS > PARALLEL_MIN_ELEMENTS
    tb.set_num_threads(2)
    asked = []

    class Spy:
        def __getattr__(self, name):
            return lambda *args: asked.append((name, args[-1]))

    monkeypatch.setattr(kernels, "_reduce", Spy())
    monkeypatch.setattr(kernels, "_elementwise", Spy())
    for size in (PARALLEL_MIN_ELEMENTS, REDUCE_PARALLEL_MIN_ELEMENTS):
        a = np.zeros(size, np.float32)
        kernels.sum(a, (0,), False)
        kernels.max(a, (0,), False)
        kernels.argmax(a, None)
        kernels.unary("exp", a)
    assert asked == [("sum_axes", 1), ("max_axes", 1), ("argmax_axis", 1), ("unary", 2),
                     ("sum_axes", 2), ("max_axes", 2), ("argmax_axis", 2), ("unary", 2)]
