"""Two-spirals classification with a BatchNorm MLP, and its decision boundary.

    python examples/spirals.py            # writes out/spirals/spirals.png
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tinygrad_bn as tb  # noqa: E402
from _common import accuracy, base_parser, pyplot, setup, train_epochs  # noqa: E402

nn = tb.nn


def make_net(bn, impl, hidden=64):
    layers = []
    for n_in in (2, hidden, hidden):
        layers += [nn.Linear(n_in, hidden)] + ([nn.BatchNorm1d(hidden, impl=impl)] if bn else []) + [nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(hidden, 2))


def plot_boundary(model, x, y, path):
    plt = pyplot()
    if plt is None:
        return
    grid = np.linspace(-1.3, 1.3, 200, dtype=np.float32)
    gx, gy = np.meshgrid(grid, grid)
    model.eval()
    with tb.no_grad():
        prob = model(tb.Tensor(np.stack([gx.ravel(), gy.ravel()], 1))).softmax(1).numpy()[:, 1]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.contourf(gx, gy, prob.reshape(gx.shape), levels=20, cmap="RdBu", alpha=0.6)
    ax.scatter(x[:, 0], x[:, 1], c=y, cmap="RdBu", s=4, edgecolors="none")
    ax.set(title="decision boundary", xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    p = base_parser(__doc__.splitlines()[0], epochs=60, out="out/spirals")
    p.add_argument("--n", type=int, default=500, help="points per spiral")
    args = p.parse_args(argv)
    setup(args)
    x, y = tb.data.make_spirals(args.n, noise=0.02, seed=args.seed)
    x_test, y_test = tb.data.make_spirals(args.n, noise=0.02, seed=args.seed + 1)
    model = make_net(not args.no_bn, args.impl)
    opt = tb.optim.Adam(model.parameters(), lr=1e-2)
    loader = tb.data.DataLoader(x, y, batch_size=64, shuffle=True, drop_last=True, seed=args.seed)
    train_epochs(model, opt, loader, x_test, y_test, args.epochs, args.quiet, desc="spirals")
    acc = accuracy(model, x_test, y_test)
    plot_boundary(model, x, y, os.path.join(args.out, "spirals.png"))
    print(f"test accuracy {acc:.4f}")
    return acc


if __name__ == "__main__":
    main()
