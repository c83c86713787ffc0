"""Train an MLP with BatchNorm on scikit-learn's bundled 8x8 digits, save the
weights, reload them into a fresh model and check it scores the same.

    python examples/train_mlp_digits.py                 # fused BatchNorm
    python examples/train_mlp_digits.py --impl composed # BatchNorm from primitive ops
    python examples/train_mlp_digits.py --no-bn         # the same MLP without BatchNorm
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tinygrad_bn as tb  # noqa: E402
from _common import accuracy, base_parser, plot_history, setup, train_epochs  # noqa: E402

nn = tb.nn


def make_mlp(bn=True, impl="fused", hidden=128):
    """64 -> hidden -> hidden -> 10, BatchNorm before each ReLU (as in the paper)."""
    def block(n_in, n_out):
        layers = [nn.Linear(n_in, n_out)]
        if bn:
            layers.append(nn.BatchNorm1d(n_out, impl=impl))
        return layers + [nn.ReLU()]
    return nn.Sequential(*block(64, hidden), *block(hidden, hidden), nn.Linear(hidden, 10))


def main(argv=None):
    p = base_parser(__doc__.splitlines()[0], epochs=30, out="out/mlp_digits")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=None, help="use only this many training samples (smoke tests)")
    args = p.parse_args(argv)
    setup(args)
    x_train, y_train, x_test, y_test = tb.data.load_digits(seed=args.seed)
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    model = make_mlp(bn=not args.no_bn, impl=args.impl)
    opt = tb.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loader = tb.data.DataLoader(x_train, y_train, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                seed=args.seed)
    start = time.perf_counter()
    history = train_epochs(model, opt, loader, x_test, y_test, args.epochs, args.quiet,
                           desc=f"MLP digits ({'no BN' if args.no_bn else args.impl + ' BN'})")
    seconds = time.perf_counter() - start
    test_acc = history["test_acc"][-1]

    weights = os.path.join(args.out, "mlp_digits.npz")
    tb.save(model.state_dict(), weights)
    fresh = make_mlp(bn=not args.no_bn, impl=args.impl)
    fresh.load_state_dict(tb.load(weights))
    reloaded_acc = accuracy(fresh, x_test, y_test)
    plot_history(history, os.path.join(args.out, "mlp_digits.png"), "MLP on digits")
    print(f"test accuracy {test_acc:.4f} after {args.epochs} epochs in {seconds:.1f} s "
          f"({tb.get_num_threads()} threads); reloaded from {weights}: {reloaded_acc:.4f}")
    if reloaded_acc != test_acc:
        raise SystemExit("reloaded model scores differently: save/load is broken")
    return test_acc


if __name__ == "__main__":
    main()
