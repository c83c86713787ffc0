"""Train a small MLP on two synthetic spirals using only Tensor ops and a
hand-written SGD loop: the whole engine on one screen.

    python examples/spirals_tensor.py --epochs 300 --seed 0
"""
import argparse
import time

import numpy as np

import tinygrad_bn as tb


def make_spirals(n_per_class, noise, rng):
    """Two interleaved spirals: x (2n, 2) float32, y (2n,) int64 labels 0/1."""
    t = np.sqrt(rng.random(n_per_class)) * 3 * np.pi
    arm = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / (3 * np.pi)
    x = np.concatenate([arm, -arm]) + noise * rng.normal(size=(2 * n_per_class, 2))
    y = np.concatenate([np.zeros(n_per_class), np.ones(n_per_class)]).astype(np.int64)
    return x.astype(np.float32), y


def init_layer(n_in, n_out, rng):
    """PyTorch's default Linear init: U(-1/sqrt(n_in), 1/sqrt(n_in))."""
    bound = 1.0 / np.sqrt(n_in)
    w = tb.Tensor(rng.uniform(-bound, bound, (n_out, n_in)).astype(np.float32), requires_grad=True)
    b = tb.Tensor(rng.uniform(-bound, bound, n_out).astype(np.float32), requires_grad=True)
    return w, b


def forward(params, x):
    h = x
    for i, (w, b) in enumerate(params):
        h = h @ w.T + b
        if i < len(params) - 1:
            h = h.tanh()
    return h


def cross_entropy(logits, labels):
    """mean over the batch of -log softmax(logits)[label]."""
    logp = logits.log_softmax(axis=1)
    return -logp[np.arange(len(labels)), labels].mean()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--n", type=int, default=500, help="points per spiral")
    args = p.parse_args(argv)
    if args.threads:
        tb.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    x_train, y_train = make_spirals(args.n, 0.02, rng)
    x_test, y_test = make_spirals(args.n, 0.02, rng)
    params = [init_layer(2, args.hidden, rng), init_layer(args.hidden, args.hidden, rng), init_layer(args.hidden, 2, rng)]
    flat = [t for layer in params for t in layer]
    start = time.perf_counter()
    for epoch in range(args.epochs):
        loss = cross_entropy(forward(params, tb.Tensor(x_train)), y_train)
        for t in flat:
            t.grad = None
        loss.backward()
        with tb.no_grad():
            for t in flat:
                t.data -= args.lr * t.grad.data
        if epoch % max(1, args.epochs // 10) == 0 or epoch == args.epochs - 1:
            print(f"epoch {epoch:4d}  loss {loss.item():.4f}")
    with tb.no_grad():
        pred = forward(params, tb.Tensor(x_test)).argmax(axis=1).numpy()
    acc = float((pred == y_test).mean())
    print(f"test accuracy {acc:.3f}  ({time.perf_counter() - start:.1f} s)")
    return acc


if __name__ == "__main__":
    main()
