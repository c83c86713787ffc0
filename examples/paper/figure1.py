"""Experiment 1: the paper's Figure 1 (Ioffe & Szegedy 2015, Section 4.1).

The paper's MNIST net: 3 fully connected hidden layers of 100 sigmoid units and a
10-way softmax, trained with SGD on mini-batches of 60, the same initialisation and
learning rate, with and without BatchNorm before each nonlinearity. MNIST itself
cannot be downloaded here, so it runs on the 8x8 digits bundled with scikit-learn
(tb.data.load_digits) and on MNIST-1D generated locally (tb.data.load_mnist1d).

(a) test accuracy against training step, both nets;
(b, c) the 15th, 50th and 85th percentiles of the input to one sigmoid of the last
hidden layer over training (pre-activation of a fixed unit on a fixed test batch,
recorded at checkpoints), without and with BN.

    python examples/paper/figure1.py                   # about 3 minutes on 2 cores
    python examples/paper/figure1.py --steps 50000     # the paper's length
    python examples/paper/figure1.py --impl composed --datasets digits
"""
import argparse
import copy
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tinygrad_bn as tb  # noqa: E402
from _common import minibatches, pyplot, sgd_step  # noqa: E402

nn = tb.nn
F = tb.nn.functional
PERCENTILES = (15, 50, 85)
DATASETS = {"digits": lambda: tb.data.load_digits(seed=0), "mnist1d": lambda: tb.data.load_mnist1d()}


def make_net(n_in, bn, impl="fused", seed=0, hidden=100, n_classes=10):
    """3 x (Linear(hidden) [-> BatchNorm1d] -> Sigmoid) -> Linear(n_classes).

    Weights are "small random Gaussian values" (the paper): N(0, 1/fan_in), biases 0;
    the same seed gives both nets the same Linear weights. BN's Linear keeps its bias,
    which BN makes redundant (the paper drops it; it changes nothing but one add)."""
    rng = np.random.default_rng(seed)
    layers, n = [], n_in
    for _ in range(3):
        layers.append(nn.Linear(n, hidden))
        if bn:
            layers.append(nn.BatchNorm1d(hidden, impl=impl))
        layers.append(nn.Sigmoid())
        n = hidden
    layers.append(nn.Linear(n, n_classes))
    for m in layers:
        if isinstance(m, nn.Linear):
            m.weight.data[...] = rng.normal(0.0, 1.0 / np.sqrt(m.in_features), m.weight.shape)
            m.bias.data[...] = 0.0
    return nn.Sequential(*layers)


def last_sigmoid_index(net):
    return max(i for i, m in enumerate(net) if isinstance(m, nn.Sigmoid))


@tb.no_grad()
def sigmoid_inputs(net, x):
    """Inputs (N, hidden) to the sigmoids of the last hidden layer for the batch x, as
    training sees them (BN with the batch's own statistics). Runs on a copy, so the
    net's running statistics are not touched."""
    probe = copy.deepcopy(net).train()
    return probe[:last_sigmoid_index(net)](tb.Tensor(x)).numpy()


@tb.no_grad()
def accuracy(net, x, y):
    net.eval()
    pred = net(tb.Tensor(x)).numpy().argmax(1)
    net.train()
    return float((pred == y).mean())


def train(net, data, steps, lr, batch_size=60, every=100, probe_size=600, seed=0, log=None):
    """Plain SGD on random mini-batches (a fresh permutation each epoch). Every `every`
    steps (and at step 0) records test accuracy (eval mode) and the 15/50/85th
    percentiles of every last-layer sigmoid input on the first `probe_size` test samples.

    Returns a dict: steps (K,), test_acc (K,), percentiles (K, 3, hidden), seconds."""
    x_train, y_train, x_test, y_test = data
    probe = x_test[:probe_size]
    rng = np.random.default_rng(seed)
    opt = tb.optim.SGD(net.parameters(), lr=lr)
    hist = {"steps": [], "test_acc": [], "percentiles": []}

    def checkpoint(step):
        hist["steps"].append(step)
        hist["test_acc"].append(accuracy(net, x_test, y_test))
        hist["percentiles"].append(np.percentile(sigmoid_inputs(net, probe), PERCENTILES, axis=0))
        if log:
            log(step, hist["test_acc"][-1])

    start = time.perf_counter()
    net.train()
    batches = minibatches(rng, len(x_train), batch_size)
    checkpoint(0)
    for step in range(1, steps + 1):
        pick = next(batches)
        sgd_step(net, opt, x_train[pick], y_train[pick])
        if step % every == 0 or step == steps:
            checkpoint(step)
    hist["seconds"] = time.perf_counter() - start
    return {k: np.asarray(v) for k, v in hist.items()}


def percentile_drift(hist, unit=None):
    """How far the sigmoid-input distribution moves over training: the path length
    sum over checkpoints t of sum_k |p_k(t+1) - p_k(t)| for k = 15th, 50th, 85th
    percentile, for one unit or averaged over all units of the last hidden layer."""
    p = hist["percentiles"]  # (K, 3, hidden)
    per_unit = np.abs(np.diff(p, axis=0)).sum(axis=(0, 1))
    return float(per_unit[unit]) if unit is not None else float(per_unit.mean())


def steps_to(hist, target):
    """First checkpoint step whose test accuracy reaches target (None if never)."""
    hit = np.nonzero(hist["test_acc"] >= target)[0]
    return int(hist["steps"][hit[0]]) if len(hit) else None


def run(dataset, steps, lr, impl="fused", seed=0, every=None, quiet=False):
    """Train both nets on one dataset; returns {"no BN": hist, "BN": hist}."""
    data = DATASETS[dataset]() if isinstance(dataset, str) else dataset
    every = every or max(1, steps // 50)
    out = {}
    for name, bn in (("no BN", False), ("BN", True)):
        net = make_net(data[0].shape[1], bn, impl, seed)

        def log(step, acc, name=name):
            if not quiet and (step % max(every, steps // 10) == 0):
                print(f"  {dataset:>8} {name:>5} step {step:>6}: test accuracy {acc:.4f}", flush=True)
        out[name] = train(net, data, steps, lr, every=every, seed=seed, log=log)
    return out


def table(results, unit):
    head = (f"{'dataset':>8} {'net':>6} {'acc@10%':>8} {'acc@50%':>8} {'final':>7} {'steps to 90% of best':>21} "
            f"{'drift, unit ' + str(unit):>15} {'drift, all units':>17} {'sec':>5}")
    lines = [head, "-" * len(head)]
    for dataset, res in results.items():
        best = max(h["test_acc"].max() for h in res.values())
        for name, h in res.items():
            k = len(h["steps"]) - 1
            reach = steps_to(h, 0.9 * best)
            lines.append(f"{dataset:>8} {name:>6} {h['test_acc'][k // 10]:>8.4f} {h['test_acc'][k // 2]:>8.4f} "
                         f"{h['test_acc'][-1]:>7.4f} {str(reach):>21} {percentile_drift(h, unit):>15.3f} "
                         f"{percentile_drift(h):>17.3f} {h['seconds']:>5.0f}")
    return "\n".join(lines)


def plot(res, dataset, unit, path):
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for name, style in (("no BN", "--"), ("BN", "-")):
        h = res[name]
        axes[0].plot(h["steps"], h["test_acc"], style, label=f"{'Without' if name == 'no BN' else 'With'} BN")
    axes[0].set(xlabel="training step", ylabel="test accuracy", title=f"(a) {dataset}")
    axes[0].legend(fontsize=8)
    ranges = [res[n]["percentiles"][:, :, unit] for n in ("no BN", "BN")]
    lo, hi = min(r.min() for r in ranges), max(r.max() for r in ranges)
    pad = 0.05 * (hi - lo + 1e-9)
    for ax, name, letter in ((axes[1], "no BN", "b"), (axes[2], "BN", "c")):
        h = res[name]
        for k, q in enumerate(PERCENTILES):
            ax.plot(h["steps"], h["percentiles"][:, k, unit], color="k", lw=1.2 if q == 50 else 0.8,
                    ls="-" if q == 50 else ":", label=f"{q}th pct")
        ax.set(xlabel="training step", ylim=(lo - pad, hi + pad),
               title=f"({letter}) {'without' if name == 'no BN' else 'with'} BN: sigmoid input")
    axes[1].set_ylabel(f"input to sigmoid, unit {unit}, last hidden layer")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8000, help="SGD steps per net (the paper: 50000)")
    p.add_argument("--lr", type=float, default=0.5, help="the same learning rate for both nets")
    p.add_argument("--impl", choices=["fused", "composed"], default="fused", help="BatchNorm implementation")
    p.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=["digits", "mnist1d"])
    p.add_argument("--unit", type=int, default=0, help="which sigmoid of the last hidden layer to follow")
    p.add_argument("--every", type=int, default=None, help="checkpoint interval (default steps/50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures"))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        tb.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    results = {}
    for dataset in args.datasets:
        results[dataset] = run(dataset, args.steps, args.lr, args.impl, args.seed, args.every, args.quiet)
        path = os.path.join(args.out, f"figure1_{dataset}.png")
        plot(results[dataset], dataset, args.unit, path)
        print(f"figure: {path}")
    print(f"\nFigure 1 reproduced: {args.steps} SGD steps of batch 60, lr {args.lr}, {args.impl} BN, seed {args.seed}, "
          f"{tb.get_num_threads()} threads.\ndrift = sum over checkpoints of |change| of the 15/50/85th percentiles "
          f"of the sigmoid input (last hidden layer, first 600 test samples)")
    print(table(results, args.unit))
    return results


if __name__ == "__main__":
    main()
