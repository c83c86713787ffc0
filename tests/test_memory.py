"""Memory: training does not leak, a graph is freed by reference counting as soon as
backward returns (no garbage collector needed) together with the tensors its Functions
saved, and no_grad inference records no graph at all."""
import gc
import json
import os
import subprocess
import sys
import textwrap
import warnings
import weakref

import numpy as np
import pytest

import tinygrad_bn as tb
from tinygrad_bn import function as function_module
from tinygrad_bn.function import Function

nn, F = tb.nn, tb.nn.functional
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The digits MLP of examples/train_mlp_digits.py (BatchNorm before each ReLU) trained with
# SGD + momentum on cross-entropy, the garbage collector off. Prints peak RSS (KiB) and the
# number of GC-tracked objects after the warm-up and after the measured steps.
TRAIN_CHILD = textwrap.dedent("""
    import gc, json, resource, sys
    import tinygrad_bn as tb

    nn, F = tb.nn, tb.nn.functional
    warmup, steps = int(sys.argv[1]), int(sys.argv[2])

    def peak_rss_kib():
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux

    x_train, y_train, _, _ = tb.data.load_digits(seed=0)
    tb.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(),
                          nn.Linear(128, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 10))
    opt = tb.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = tb.data.DataLoader(x_train, y_train, batch_size=64, shuffle=True, drop_last=True, seed=0)

    def batches():
        while True:
            yield from loader

    def train(n, it=batches()):
        for _ in range(n):
            xb, yb = next(it)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss.item()

    gc.disable()
    first_loss = train(warmup)
    before = peak_rss_kib(), len(gc.get_objects())
    last_loss = train(steps)
    after = peak_rss_kib(), len(gc.get_objects())
    print(json.dumps({"peak_kib": [before[0], after[0]], "objects": [before[1], after[1]],
                      "loss": [first_loss, last_loss], "module": tb.__file__}))
""")


def test_training_steps_do_not_grow_peak_rss():
    """After 200 warm-up steps, 2,000 training steps of the digits MLP with BatchNorm (SGD
    with momentum, cross-entropy) run with the garbage collector disabled grow the peak RSS
    of the process by less than 20 MB and leave no GC-tracked objects behind."""
    pytest.importorskip("sklearn")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.realpath(tb.__file__))) + os.pathsep + \
        env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", TRAIN_CHILD, "200", "2000"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert os.path.realpath(out["module"]) == os.path.realpath(tb.__file__)
    growth_mib = (out["peak_kib"][1] - out["peak_kib"][0]) / 1024
    assert growth_mib < 20, f"peak RSS grew by {growth_mib:.1f} MiB over 2000 steps: {out}"
    assert out["objects"][1] - out["objects"][0] < 100, f"GC-tracked objects piled up: {out}"
    assert out["loss"][1] < 0.5, f"the model did not train: {out}"  # the steps really ran


# ------------------------------------------------------------------ graphs freed by refcounting

def conv_bn_model():
    """Conv2d -> BatchNorm2d -> ReLU -> MaxPool2d -> Linear -> BatchNorm1d -> ReLU -> Linear."""
    tb.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return (tb.Tensor(rng.standard_normal((n, 1, 8, 8)).astype(np.float32)),
            tb.Tensor(rng.integers(0, 10, size=n)))


def graph_refs(root, keep):
    """Weak references to what the graph under `root` holds: its Function nodes, its
    non-leaf tensors and the arrays its nodes saved, as (Function name, attribute, ref).
    Arrays of the tensors in `keep` (inputs, parameters, buffers) are not the graph's."""
    owned = {id(t.data) for t in keep}
    nodes, tensors, saved = [], [], []
    seen, stack = set(), [root]
    while stack:
        t = stack.pop()
        fn = t._ctx
        if fn is None or id(t) in seen:
            continue
        seen.add(id(t))
        tensors.append(weakref.ref(t))
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        nodes.append((type(fn).__name__, weakref.ref(fn)))
        for name, value in vars(fn).items():
            if isinstance(value, np.ndarray) and id(value) not in owned:
                saved.append((type(fn).__name__, name, weakref.ref(value)))
        stack.extend(fn.inputs)
    return nodes, tensors, saved


def model_tensors(model, *extra):
    return list(model.parameters()) + [b for b in model.buffers() if b is not None] + list(extra)


@pytest.fixture
def no_gc():
    """Run the test with the cyclic garbage collector off: only reference counting frees."""
    was_enabled = gc.isenabled()
    gc.disable()
    yield
    if was_enabled:
        gc.enable()


def test_training_step_graph_is_freed_when_backward_returns(no_gc):
    """In a conv + BatchNorm + cross-entropy training step, every Function node, non-leaf
    tensor and saved array of the graph is alive before backward and dead when backward
    returns (with the GC off), except the loss's own node, which the loss still references
    and which holds nothing any more; it dies with the loss."""
    model = conv_bn_model()
    x, y = batch()
    loss = F.cross_entropy(model(x), y)
    nodes, tensors, saved = graph_refs(loss, model_tensors(model, x, y))
    assert len(nodes) >= 12 and len(tensors) == len(nodes)
    assert all(r() is not None for _, r in nodes) and all(r() is not None for r in tensors)

    loss.backward()
    root = loss._ctx
    alive_nodes = [name for name, r in nodes if r() is not None and r() is not root]
    assert alive_nodes == [], f"nodes outlived backward: {alive_nodes}"
    alive_tensors = [r() for r in tensors if r() is not None and r() is not loss]
    assert alive_tensors == [], f"{len(alive_tensors)} intermediate tensors outlived backward"
    alive_saved = [(fn, name) for fn, name, r in saved if r() is not None and r() is not loss.data]
    assert alive_saved == [], f"saved arrays outlived backward: {alive_saved}"
    assert root.inputs is None and set(vars(root)) <= {"inputs"}
    assert all(p.grad is not None for p in model.parameters())

    del root, loss
    assert all(r() is None for _, r in nodes) and all(r() is None for r in tensors)


def test_fused_functions_release_their_saved_tensors_after_the_last_backward(no_gc):
    """The tensors the fused Functions save for their backward (BatchNormTrain's mean and
    inv_std, CrossEntropy's lse_parts, MaxPool2d's argmax, Conv2d's output) survive a backward
    with retain_graph=True, so a second backward gives the same gradients, and are freed
    when that second backward, without retain_graph, returns (GC off)."""
    model = conv_bn_model()
    x, y = batch(seed=1)
    loss = F.cross_entropy(model(x), y)
    _, _, saved = graph_refs(loss, model_tensors(model, x, y))
    fused = [("BatchNormTrain", "mean"), ("BatchNormTrain", "inv_std"), ("CrossEntropy", "lse_parts"),
             ("MaxPool2d", "argmax"), ("Conv2d", "out_data")]
    assert set(fused) <= {(fn, name) for fn, name, _ in saved}

    loss.backward(retain_graph=True)
    assert [(fn, name) for fn, name, r in saved if r() is None] == []
    first = [p.grad.numpy().copy() for p in model.parameters()]
    model.zero_grad()
    loss.backward()
    for g, p in zip(first, model.parameters()):
        np.testing.assert_array_equal(p.grad.numpy(), g)
    assert [(fn, name) for fn, name, r in saved if r() is not None and r() is not loss.data] == []


def count_functions():
    """Live Function nodes. (isinstance on every object also touches lazy attributes of
    other libraries' modules, e.g. torch's deprecated aliases, whose warnings are noise.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sum(isinstance(o, Function) for o in gc.get_objects())


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_no_grad_inference_records_nothing(no_gc, monkeypatch, mode):
    """Under no_grad no op records a node (every output Function.apply makes has no grad_fn,
    although the parameters require grad), the outputs do not require grad, and no Function
    object is left alive afterwards; the same forward with grad enabled records the graph."""
    model = conv_bn_model().train(mode == "train")
    x, y = batch(seed=2)
    recorded = []
    make = function_module._make  # what Function.apply wraps each output with

    def counting_make(data, ctx, requires_grad):
        recorded.append(ctx is not None)
        return make(data, ctx, requires_grad)

    monkeypatch.setattr(function_module, "_make", counting_make)
    before = count_functions()
    with tb.no_grad():
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        probs = logits.softmax(-1)
    assert len(recorded) >= 12 and not any(recorded)
    for t in (logits, loss, probs):
        assert t.grad_fn is None and not t.requires_grad
    assert count_functions() == before
    np.testing.assert_allclose(probs.numpy().sum(-1), 1.0, rtol=1e-5)

    recorded.clear()
    with_grad = F.cross_entropy(model(x), y)
    assert any(recorded) and with_grad.grad_fn is not None and count_functions() > before
    np.testing.assert_allclose(with_grad.item(), loss.item(), rtol=1e-6)
