# NOTE: not named mnist1d.py: the script folder comes first on sys.path, and a file of
# that name would shadow the `mnist1d` package it imports.
"""MLP and CNN on MNIST-1D (Greydanus 2020), generated offline by the `mnist1d`
package (standard 4000/1000 split), mean test accuracy over 3 seeds printed beside
the MNIST-1D paper's published figures (MLP about 68%, CNN about 94%).

    python examples/train_mnist1d.py                  # with BatchNorm
    python examples/train_mnist1d.py --no-bn --epochs 30
"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tinygrad_bn as tb  # noqa: E402
from _common import base_parser, plot_history, setup, train_epochs  # noqa: E402

nn = tb.nn
PAPER = {"mlp": 0.68, "cnn": 0.94}  # MNIST-1D paper, Table 1 (test accuracy)


class Unsqueeze(nn.Module):
    """(N, L) -> (N, 1, L) so a Conv1d sees one input channel."""

    def forward(self, x):
        return x.unsqueeze(1)


def make_mlp(bn, impl):
    """40 -> 100 -> 100 -> 10 with ReLU (the paper's MLP), BN before each ReLU."""
    layers = []
    for n_in, n_out in ((40, 100), (100, 100)):
        layers += [nn.Linear(n_in, n_out)] + ([nn.BatchNorm1d(n_out, impl=impl)] if bn else []) + [nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(100, 10))


def make_cnn(bn, impl):
    """Three conv1d(k=5, stride 2, pad 1) layers of 25 channels with ReLU, then linear
    (the paper's CNN), BN before each ReLU. Lengths: 40 -> 19 -> 9 -> 4."""
    layers = [Unsqueeze()]
    for c_in in (1, 25, 25):
        layers += [nn.Conv1d(c_in, 25, 5, stride=2, padding=1)]
        layers += ([nn.BatchNorm1d(25, impl=impl)] if bn else []) + [nn.ReLU()]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(25 * 4, 10))


def main(argv=None):
    p = base_parser(__doc__.splitlines()[0], epochs=60, out="out/mnist1d")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--limit", type=int, default=None, help="use only this many training samples (smoke tests)")
    args = p.parse_args(argv)
    setup(args)
    x_train, y_train, x_test, y_test = tb.data.load_mnist1d()
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    results = {}
    for name, build in (("mlp", make_mlp), ("cnn", make_cnn)):
        accs = []
        for seed in range(args.seed, args.seed + args.seeds):
            tb.manual_seed(seed)
            model = build(not args.no_bn, args.impl)
            opt = tb.optim.Adam(model.parameters(), lr=args.lr)
            loader = tb.data.DataLoader(x_train, y_train, batch_size=args.batch_size, shuffle=True,
                                        drop_last=True, seed=seed)
            start = time.perf_counter()
            history = train_epochs(model, opt, loader, x_test, y_test, args.epochs, args.quiet,
                                   desc=f"{name} seed {seed}")
            accs.append(history["test_acc"][-1])
            if seed == args.seed:
                plot_history(history, os.path.join(args.out, f"mnist1d_{name}.png"), f"{name.upper()} on MNIST-1D")
            print(f"{name} seed {seed}: test accuracy {accs[-1]:.4f} ({time.perf_counter() - start:.1f} s)")
        results[name] = float(np.mean(accs))
    print(f"\n{'model':6s} {'ours (mean of %d seeds)' % args.seeds:>24s} {'MNIST-1D paper':>15s}")
    for name, acc in results.items():
        print(f"{name:6s} {acc:24.3f} {PAPER[name]:15.2f}")
    return results


if __name__ == "__main__":
    main()
