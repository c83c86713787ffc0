"""Train a small CNN with BatchNorm2d on scikit-learn's bundled 8x8 digits.

    python examples/train_cnn_digits.py
    python examples/train_cnn_digits.py --impl composed --epochs 20
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tinygrad_bn as tb  # noqa: E402
from _common import base_parser, plot_history, setup, train_epochs  # noqa: E402

nn = tb.nn


def make_cnn(bn=True, impl="fused"):
    """conv3x3(1->16) [BN] ReLU, conv3x3(16->32) [BN] ReLU, maxpool 2, linear 512->10."""
    def block(c_in, c_out):
        layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not bn)]
        if bn:
            layers.append(nn.BatchNorm2d(c_out, impl=impl))
        return layers + [nn.ReLU()]
    return nn.Sequential(*block(1, 16), *block(16, 32), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 10))


def main(argv=None):
    p = base_parser(__doc__.splitlines()[0], epochs=15, out="out/cnn_digits")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=None, help="use only this many training samples (smoke tests)")
    args = p.parse_args(argv)
    setup(args)
    x_train, y_train, x_test, y_test = tb.data.load_digits(seed=args.seed, flatten=False)
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    model = make_cnn(bn=not args.no_bn, impl=args.impl)
    opt = tb.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loader = tb.data.DataLoader(x_train, y_train, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                seed=args.seed)
    start = time.perf_counter()
    history = train_epochs(model, opt, loader, x_test, y_test, args.epochs, args.quiet,
                           desc=f"CNN digits ({'no BN' if args.no_bn else args.impl + ' BN'})")
    plot_history(history, os.path.join(args.out, "cnn_digits.png"), "CNN on digits")
    print(f"test accuracy {history['test_acc'][-1]:.4f} after {args.epochs} epochs in "
          f"{time.perf_counter() - start:.1f} s ({tb.get_num_threads()} threads)")
    return history["test_acc"][-1]


if __name__ == "__main__":
    main()
