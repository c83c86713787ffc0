"""Experiment 2: BatchNorm enables higher learning rates (Section 3.3) and keeps
sigmoids out of their saturated regime (Section 3.3, Figure 1's net).

Sweeps the SGD learning rate over 3.5 decades for Figure 1's net (3 x 100 sigmoid units,
batch 60, same initialisation) with and without BatchNorm, 3 seeds each, and reports the
final test accuracy and whether training diverged (a non-finite loss, or a final
training loss, averaged over the last 50 steps, above the first step's loss + 0.05).
Then it follows the fraction of saturated sigmoids (output below 0.01 or above 0.99, i.e. |input| > 4.6)
over training at a few learning rates.

    python examples/paper/learning_rates.py                       # about 2-3 minutes on 2 cores
    python examples/paper/learning_rates.py --steps 5000 --dataset mnist1d
"""
import argparse
import copy
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tinygrad_bn as tb  # noqa: E402
from _common import minibatches, pyplot  # noqa: E402
from figure1 import DATASETS, accuracy, make_net  # noqa: E402

nn = tb.nn
F = tb.nn.functional
LRS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
SATURATED = math.log(0.99 / 0.01)  # |input| beyond which sigmoid(input) < 0.01 or > 0.99


@tb.no_grad()
def saturated_fraction(net, x):
    """Fraction of (sample, unit) sigmoid outputs below 0.01 or above 0.99 over all hidden
    layers for the batch x, as training sees them (BN with batch statistics), on a copy."""
    probe, h = copy.deepcopy(net).train(), tb.Tensor(x)
    saturated = total = 0
    for m in probe:
        if isinstance(m, nn.Sigmoid):
            z = h.numpy()
            saturated += int((np.abs(z) > SATURATED).sum())
            total += z.size
        h = m(h)
    return saturated / total


def train(net, data, steps, lr, batch_size=60, seed=0, every=None, probe_size=600):
    """SGD; returns dict(final_acc, diverged, losses, sat_steps, saturation)."""
    x_train, y_train, x_test, y_test = data
    rng = np.random.default_rng(seed)
    opt = tb.optim.SGD(net.parameters(), lr=lr)
    losses, sat_steps, saturation = [], [], []
    batches = minibatches(rng, len(x_train), batch_size)
    diverged = False
    for step in range(steps + 1):
        if every and step % every == 0:
            sat_steps.append(step)
            saturation.append(saturated_fraction(net, x_test[:probe_size]))
        if step == steps:
            break
        pick = next(batches)
        with np.errstate(all="ignore"):
            loss = F.cross_entropy(net(tb.Tensor(x_train[pick])), tb.Tensor(y_train[pick]))
            if not np.isfinite(loss.item()):
                diverged = True
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses.append(loss.item())
    tail = np.mean(losses[-50:]) if losses else np.inf
    # NOTE: a net that has not started learning yet sits near its first loss (about log 10);
    # one that blew up ends above it.
    diverged = diverged or not tail < losses[0] + 0.05
    with np.errstate(all="ignore"):
        acc = accuracy(net, x_test, y_test)
    return dict(final_acc=acc, diverged=diverged, final_loss=tail, sat_steps=np.array(sat_steps),
                saturation=np.array(saturation))


def sweep(data, lrs, seeds, steps, impl="fused", quiet=False):
    """results[(bn, lr)] = list over seeds of train() dicts."""
    results = {}
    for bn in (False, True):
        for lr in lrs:
            runs = []
            for seed in seeds:
                tb.manual_seed(seed)
                runs.append(train(make_net(data[0].shape[1], bn, impl, seed), data, steps, lr, seed=seed))
            results[(bn, lr)] = runs
            if not quiet:
                print(f"  {'BN' if bn else 'no BN':>5} lr {lr:<6g} accuracy "
                      + " ".join(f"{r['final_acc']:.3f}{'*' if r['diverged'] else ''}" for r in runs), flush=True)
    return results


def sweep_table(results, lrs):
    head = (f"{'lr':>6} | {'no BN: acc (mean, min)':>22} {'loss':>6} {'diverged':>8} | "
            f"{'BN: acc (mean, min)':>20} {'loss':>6} {'diverged':>8}")
    lines = [head, "-" * len(head)]
    for lr in lrs:
        cells = []
        for bn in (False, True):
            runs = results[(bn, lr)]
            acc = [r["final_acc"] for r in runs]
            loss = np.mean([r["final_loss"] for r in runs])
            cells.append((f"{np.mean(acc):.3f}, {np.min(acc):.3f}", f"{loss:.3g}",
                          f"{sum(r['diverged'] for r in runs)}/{len(runs)}"))
        lines.append(f"{lr:>6g} | {cells[0][0]:>22} {cells[0][1]:>6} {cells[0][2]:>8} | "
                     f"{cells[1][0]:>20} {cells[1][1]:>6} {cells[1][2]:>8}")
    return "\n".join(lines)


def plot(results, lrs, saturation, path):
    plt = pyplot()
    if plt is None:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for bn, style in ((False, "o--"), (True, "s-")):
        acc = np.array([[r["final_acc"] for r in results[(bn, lr)]] for lr in lrs])
        left.errorbar(lrs, acc.mean(1), yerr=[acc.mean(1) - acc.min(1), acc.max(1) - acc.mean(1)], fmt=style,
                      capsize=3, label="with BN" if bn else "without BN")
    left.set(xscale="log", xlabel="learning rate", ylabel="final test accuracy", title="learning-rate sweep (3 seeds)")
    left.legend(fontsize=8)
    for (bn, lr), run in saturation.items():
        right.plot(run["sat_steps"], run["saturation"], "-" if bn else "--",
                   label=f"{'BN' if bn else 'no BN'}, lr {lr:g}")
    right.set(xlabel="training step", ylabel="fraction of saturated sigmoids", title="saturation (|input| > 4.6)")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000, help="SGD steps per run")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="digits")
    p.add_argument("--lrs", type=float, nargs="+", default=list(LRS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--sat-lrs", type=float, nargs="+", default=[0.5, 5.0],
                   help="learning rates at which saturation is followed over training")
    p.add_argument("--impl", choices=["fused", "composed"], default="fused")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures"))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        tb.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    data = DATASETS[args.dataset]()
    start = time.perf_counter()
    results = sweep(data, args.lrs, range(args.seeds), args.steps, args.impl, args.quiet)
    saturation = {}
    for lr in args.sat_lrs:
        for bn in (False, True):
            saturation[(bn, lr)] = train(make_net(data[0].shape[1], bn, args.impl, 0), data, args.steps, lr,
                                         every=max(1, args.steps // 25))
    path = os.path.join(args.out, "learning_rates.png")
    plot(results, args.lrs, saturation, path)
    print(f"\nLearning-rate sweep on {args.dataset}: {args.steps} SGD steps of batch 60, {args.seeds} seeds, "
          f"{args.impl} BN ({time.perf_counter() - start:.0f} s). diverged = non-finite loss or final training "
          f"loss (mean of last 50 steps) > first step's loss + 0.05")
    print(sweep_table(results, args.lrs))
    print("\nFraction of saturated sigmoids (all 3 hidden layers, 600 test samples), seed 0:")
    print(f"{'net':>6} {'lr':>5} {'start':>7} {'middle':>7} {'end':>7} {'final acc':>9}")
    for (bn, lr), run in saturation.items():
        s = run["saturation"]
        print(f"{'BN' if bn else 'no BN':>6} {lr:>5g} {s[0]:>7.3f} {s[len(s) // 2]:>7.3f} {s[-1]:>7.3f} "
              f"{run['final_acc']:>9.3f}")
    print(f"figure: {path}")
    return results, saturation


if __name__ == "__main__":
    main()
