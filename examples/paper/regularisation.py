"""Experiment 4: BatchNorm's mini-batch noise as a regulariser (Section 3.4; the paper
removes Dropout from BN-Inception).

Trains the same ReLU MLP on a small part of the 8x8 digits long enough to overfit, three
ways: with BN and without Dropout, without BN and with Dropout, and with neither.
Reports train and test accuracy and loss, and the train/test gap, over 3 seeds.

    python examples/paper/regularisation.py                 # about 2.5 minutes on 2 cores
    python examples/paper/regularisation.py --train-size 1437 --steps 6000
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tinygrad_bn as tb  # noqa: E402
from _common import minibatches, pyplot, sgd_step  # noqa: E402

nn = tb.nn
F = tb.nn.functional
VARIANTS = (("BN, no dropout", True, 0.0), ("dropout, no BN", False, 0.5), ("neither", False, 0.0))


def make_net(bn, dropout, impl="fused", hidden=256):
    """64 -> hidden -> hidden -> 10 with ReLU; BN before each ReLU and/or Dropout after it."""
    layers, n = [], 64
    for _ in range(2):
        layers.append(nn.Linear(n, hidden))
        if bn:
            layers.append(nn.BatchNorm1d(hidden, impl=impl))
        layers.append(nn.ReLU())
        if dropout:
            layers.append(nn.Dropout(dropout))
        n = hidden
    return nn.Sequential(*layers, nn.Linear(n, 10))


@tb.no_grad()
def evaluate(net, x, y):
    """(accuracy, mean cross-entropy) in eval mode."""
    net.eval()
    logits = net(tb.Tensor(x))
    net.train()
    return float((logits.numpy().argmax(1) == y).mean()), F.cross_entropy(logits, tb.Tensor(y)).item()


def train(net, x, y, steps, lr, batch_size=60, seed=0):
    rng = np.random.default_rng(seed)
    opt = tb.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    batches = minibatches(rng, len(x), batch_size)
    for _ in range(steps):
        pick = next(batches)
        sgd_step(net, opt, x[pick], y[pick])
    return net


def run(train_size, steps, lr, seeds, impl="fused"):
    """rows[name] = list over seeds of (train_acc, test_acc, train_loss, test_loss)."""
    x_train, y_train, x_test, y_test = tb.data.load_digits(seed=0)
    x_train, y_train = x_train[:train_size], y_train[:train_size]
    rows = {}
    for name, bn, dropout in VARIANTS:
        rows[name] = []
        for seed in seeds:
            tb.manual_seed(seed)
            net = train(make_net(bn, dropout, impl), x_train, y_train, steps, lr, seed=seed)
            rows[name].append(evaluate(net, x_train, y_train) + evaluate(net, x_test, y_test))
    return rows


def table(rows):
    head = (f"{'net':>16} {'train acc':>9} {'test acc':>9} {'acc gap':>8} {'train loss':>10} {'test loss':>9} "
            f"{'test acc per seed':>24}")
    lines = [head, "-" * len(head)]
    for name, runs in rows.items():
        r = np.array(runs)  # (seeds, 4): train_acc, train_loss, test_acc, test_loss
        lines.append(f"{name:>16} {r[:, 0].mean():>9.4f} {r[:, 2].mean():>9.4f} {(r[:, 0] - r[:, 2]).mean():>8.4f} "
                     f"{r[:, 1].mean():>10.4f} {r[:, 3].mean():>9.4f} "
                     f"{' '.join(f'{a:.3f}' for a in r[:, 2]):>24}")
    return "\n".join(lines)


def plot(rows, path):
    plt = pyplot()
    if plt is None:
        return
    names = list(rows)
    r = np.array([np.mean(rows[n], axis=0) for n in names])
    pos = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.bar(pos - 0.2, r[:, 0], 0.4, label="train")
    ax.bar(pos + 0.2, r[:, 2], 0.4, label="test")
    ax.set(xticks=pos, xticklabels=names, ylim=(min(0.8, r[:, 2].min() - 0.02), 1.005), ylabel="accuracy",
           title="overfitting 8x8 digits (mean of seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-size", type=int, default=300, help="training samples (fewer overfit sooner)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--impl", choices=["fused", "composed"], default="fused")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures"))
    args = p.parse_args(argv)
    if args.threads:
        tb.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = run(args.train_size, args.steps, args.lr, range(args.seeds), args.impl)
    print(f"Regularisation on digits: {args.train_size} training samples, {args.steps} SGD steps (momentum 0.9, "
          f"lr {args.lr}, batch 60), {args.seeds} seeds, 360 test samples ({time.perf_counter() - start:.0f} s)")
    print(table(rows))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "regularisation.png")
    plot(rows, path)
    print(f"figure: {path}")
    return rows


if __name__ == "__main__":
    main()
