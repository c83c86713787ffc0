"""Inference with BatchNorm (Algorithm 2): running averages vs exact population
statistics, and the folded network's speed.

Trains Figure 1's net with BN (3 x 100 sigmoid units, batch 60) and, at a few points
in training, compares the test accuracy with
  * running averages (momentum 0.1, what BatchNorm tracks during training),
  * exact population statistics from tb.nn.utils.update_bn over the training set in
    batches of 60 (Algorithm 2's E[x] and m/(m-1) E_B[var_B]),
  * the population model folded by tb.nn.utils.fold_batch_norm (each BN merged into
    the Linear before it: the net becomes three Linear + Sigmoid layers),
then times eval-mode inference of the unfolded and folded nets.

    python examples/paper/inference.py                 # under a minute on 2 cores
    python examples/paper/inference.py --lr 5 --dataset mnist1d
"""
import argparse
import copy
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tinygrad_bn as tb  # noqa: E402
from tinygrad_bn.nn import utils  # noqa: E402
from _common import minibatches, sgd_step  # noqa: E402
from figure1 import DATASETS, accuracy, make_net  # noqa: E402

nn = tb.nn
F = tb.nn.functional


def batchnorms(net):
    return [m for m in net.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]


def stats_gap(a, b):
    """max over BN layers and channels of |mean_a - mean_b| / sqrt(var_b), and of |var_a / var_b - 1|."""
    dm = dv = 0.0
    for p, q in zip(batchnorms(a), batchnorms(b)):
        sd = np.sqrt(q.running_var.numpy())
        dm = max(dm, float(np.max(np.abs(p.running_mean.numpy() - q.running_mean.numpy()) / sd)))
        dv = max(dv, float(np.max(np.abs(p.running_var.numpy() / q.running_var.numpy() - 1))))
    return dm, dv


@tb.no_grad()
def time_inference(net, x, batch_size, repeats):
    """Best-of-`repeats` seconds for one eval-mode pass over x in batches."""
    net.eval()
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(x), batch_size):
            net(tb.Tensor(x[i:i + batch_size]))
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(DATASETS), default="digits")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--checkpoints", type=int, nargs="+", default=[50, 300, 1000, 3000])
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--impl", choices=["fused", "composed"], default="fused")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-samples", type=int, default=4000, help="samples per timed pass (batch 1: a quarter)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        tb.set_num_threads(args.threads)
    tb.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = DATASETS[args.dataset]()
    net = make_net(x_train.shape[1], bn=True, impl=args.impl, seed=args.seed)
    opt = tb.optim.SGD(net.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    population_batches = [x_train[i:i + 60] for i in range(0, len(x_train) - 59, 60)]

    rows = []
    batches = minibatches(rng, len(x_train), 60)
    for step in range(1, args.steps + 1):
        pick = next(batches)
        sgd_step(net, opt, x_train[pick], y_train[pick])
        if step in args.checkpoints or step == args.steps:
            population = copy.deepcopy(net)
            utils.update_bn(population_batches, population)
            folded = utils.fold_batch_norm(population)
            dm, dv = stats_gap(net, population)
            rows.append((step, accuracy(net, x_test, y_test), accuracy(population, x_test, y_test),
                         accuracy(folded, x_test, y_test), dm, dv))

    print(f"Inference statistics, Figure 1's net with {args.impl} BN on {args.dataset}, lr {args.lr}, "
          f"seed {args.seed}:")
    head = (f"{'step':>6} {'acc, running avg':>16} {'acc, population':>15} {'acc, folded':>11} "
            f"{'max |dmean|/sd':>14} {'max |var ratio-1|':>17}")
    print(head + "\n" + "-" * len(head))
    for step, acc_run, acc_pop, acc_fold, dm, dv in rows:
        print(f"{step:>6} {acc_run:>16.4f} {acc_pop:>15.4f} {acc_fold:>11.4f} {dm:>14.3f} {dv:>17.3f}")

    population.eval()
    with tb.no_grad():
        want = population(tb.Tensor(x_test)).numpy()
        got = folded(tb.Tensor(x_test)).numpy()
    print(f"\nfolded vs unfolded (eval) logits: max |difference| {np.abs(got - want).max():.2e} (float32)")
    x_big = np.concatenate([x_test] * (args.time_samples // len(x_test) + 1))[:args.time_samples]
    print(f"{'batch':>6} {'unfolded ms':>12} {'folded ms':>10} {'speed-up':>9}   (one pass over {len(x_big)} samples, "
          f"best of 5, {tb.get_num_threads()} threads)")
    for batch_size in (1, 60, 1000):
        reps = 2 if batch_size == 1 else 5
        x = x_big[:len(x_big) // 4] if batch_size == 1 else x_big
        t_unfolded = time_inference(population, x, batch_size, reps)
        t_folded = time_inference(folded, x, batch_size, reps)
        note = f"  (first {len(x)} samples)" if batch_size == 1 else ""
        print(f"{batch_size:>6} {1e3 * t_unfolded:>12.1f} {1e3 * t_folded:>10.1f} {t_unfolded / t_folded:>9.2f}{note}")
    return rows


if __name__ == "__main__":
    main()
