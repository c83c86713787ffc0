"""BatchNorm, training mode, affine, float32: fused vs composed vs a numpy reference vs
torch (when installed), 1 and 2 threads, forward and forward+backward, at the shapes of
BASELINES.md.

    python bench/batchnorm.py
    python bench/batchnorm.py --shapes 64x64x32x32 --threads 2
    python bench/batchnorm.py --runs 3 --pause 30   # keep each cell's best of 3 spaced runs

GB/s counts the minimum traffic: forward reads x and writes y (8 B per value),
forward+backward also reads grad_y and writes grad_x (16 B per value). "of copy" is
that rate as a fraction of a plain copy's bandwidth (read + write) measured in this run
on an array of the same size.

This machine's memory bandwidth can move by 2-4x over minutes (other tenants): with
--runs K the whole table is measured K times, --pause seconds apart, and each cell
keeps its fastest time (the copy bandwidth its highest), the least disturbed estimate
of each candidate; the ratios then compare candidates at their best.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _timing import best_time, interleaved_times, try_import_torch  # noqa: E402

import tinygrad_bn as tb  # noqa: E402

SHAPES = ["256x1024", "4096x512", "64x64x32x32", "32x256x14x14", "8x16x224x224"]
EPS = 1e-5


def numpy_reference(x, gamma, beta, dy):
    """The straightforward numpy implementation (float64 statistics) with its backward."""
    axes = (0,) + tuple(range(2, x.ndim))
    view = (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(axes, dtype=np.float64, keepdims=True)
    var = ((x - mean) ** 2).mean(axes, keepdims=True)
    inv_std = 1.0 / np.sqrt(var + EPS)
    x_hat = ((x - mean) * inv_std).astype(x.dtype)
    y = x_hat * gamma.reshape(view) + beta.reshape(view)
    if dy is None:
        return y
    m = x.size // x.shape[1]
    grad_beta = dy.sum(axes, dtype=np.float64)
    grad_gamma = (dy * x_hat).sum(axes, dtype=np.float64)
    grad_x = (gamma.reshape(view) * inv_std) * (dy - (grad_beta.reshape(view) + x_hat * grad_gamma.reshape(view)) / m)
    return y, grad_x.astype(x.dtype), grad_gamma, grad_beta


def copy_bandwidth(n_values):
    src = np.random.default_rng(0).standard_normal(n_values, dtype=np.float32)
    dst = np.empty_like(src)
    t = best_time(lambda: np.copyto(dst, src), 0.2)
    return 2 * src.nbytes / t


def time_shape(shape, threads, torch, min_time):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape, dtype=np.float32) * 2 + 1).astype(np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    c = shape[1]
    gamma = rng.standard_normal(c, dtype=np.float32)
    beta = rng.standard_normal(c, dtype=np.float32)
    fns = {}
    F = tb.nn.functional
    for impl in ("fused", "composed"):
        xt = tb.Tensor(x, requires_grad=True)
        w = tb.Tensor(gamma, requires_grad=True)
        b = tb.Tensor(beta, requires_grad=True)
        rm, rv = tb.zeros(c), tb.ones(c)
        dyt = tb.Tensor(dy)

        def fwd(xt=xt, w=w, b=b, rm=rm, rv=rv, impl=impl):
            with tb.no_grad():
                F.batch_norm(xt, rm, rv, w, b, training=True, impl=impl)

        def fwd_bwd(xt=xt, w=w, b=b, rm=rm, rv=rv, dyt=dyt, impl=impl):
            xt.grad = w.grad = b.grad = None
            F.batch_norm(xt, rm, rv, w, b, training=True, impl=impl).backward(dyt)
        fns[impl] = (fwd, fwd_bwd)
    if threads == 1:
        fns["numpy"] = (lambda: numpy_reference(x, gamma, beta, None),
                        lambda: numpy_reference(x, gamma, beta, dy))
    if torch is not None:
        tx = torch.from_numpy(x.copy()).requires_grad_()
        tw = torch.from_numpy(gamma.copy()).requires_grad_()
        tbias = torch.from_numpy(beta.copy()).requires_grad_()
        trm, trv = torch.zeros(c), torch.ones(c)
        tdy = torch.from_numpy(dy)

        def tfwd():
            with torch.no_grad():
                torch.nn.functional.batch_norm(tx, trm, trv, tw, tbias, training=True)

        def tfwd_bwd():
            tx.grad = tw.grad = tbias.grad = None
            torch.nn.functional.batch_norm(tx, trm, trv, tw, tbias, training=True).backward(tdy)
        fns["torch"] = (tfwd, tfwd_bwd)
    # every candidate timed round-robin with the others (see _timing.interleaved_times)
    times = interleaved_times({(impl, k): pair[k] for impl, pair in fns.items() for k in (0, 1)}, min_time)
    return {impl: (times[(impl, 0)], times[(impl, 1)]) for impl in fns}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="*", default=SHAPES)
    p.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per candidate, over all rounds")
    p.add_argument("--runs", type=int, default=1, help="measure the whole table this many times, keep each cell's best")
    p.add_argument("--pause", type=float, default=0.0, help="seconds between runs")
    args = p.parse_args()
    torch = try_import_torch()
    print(f"BatchNorm training forward / forward+backward, float32, ms; torch "
          f"{torch.__version__ if torch else 'not installed'}")
    best = {}  # (shape_text, threads) -> (copy bandwidth, {impl: (fwd, f+b)}), best over runs
    for run in range(args.runs):
        if run:
            time.sleep(args.pause)
        for shape_text in args.shapes:
            shape = tuple(int(s) for s in shape_text.split("x"))
            for threads in args.threads:
                tb.set_num_threads(threads)
                if torch is not None:
                    torch.set_num_threads(threads)
                bw = copy_bandwidth(int(np.prod(shape)))
                rows = time_shape(shape, threads, torch, args.min_time)
                old_bw, old_rows = best.get((shape_text, threads), (0.0, rows))
                best[(shape_text, threads)] = (max(bw, old_bw), {
                    impl: (min(f, old_rows[impl][0]), min(fb, old_rows[impl][1])) for impl, (f, fb) in rows.items()})
    if args.runs > 1:
        print(f"(best of {args.runs} runs, {args.pause:g} s apart)")
    scaling = {}
    for shape_text in args.shapes:
        size = int(np.prod(tuple(int(s) for s in shape_text.split("x"))))
        for threads in args.threads:
            bw, rows = best[(shape_text, threads)]
            fused_fb = rows["fused"][1]
            scaling.setdefault(shape_text, {})[threads] = fused_fb
            print(f"\n{shape_text}, {threads} thread(s); copy bandwidth {bw / 1e9:.1f} GB/s")
            print(f"  {'impl':9s} {'fwd ms':>8s} {'GB/s':>6s} {'of copy':>7s} {'f+b ms':>8s} {'GB/s':>6s} "
                  f"{'of copy':>7s} {'fused/this f+b':>15s}")
            for impl, (f, fb) in rows.items():
                gf, gfb = 8 * size / f / 1e9, 16 * size / fb / 1e9
                print(f"  {impl:9s} {f * 1e3:8.3f} {gf:6.1f} {gf * 1e9 / bw:7.2f} {fb * 1e3:8.3f} "
                      f"{gfb:6.1f} {gfb * 1e9 / bw:7.2f} {fused_fb / fb:15.2f}")
    if all(len(v) > 1 for v in scaling.values()) and 1 in args.threads and 2 in args.threads:
        print("\nfused forward+backward, 1 thread / 2 threads:")
        for shape_text, t in scaling.items():
            print(f"  {shape_text:14s} {t[1] / t[2]:.2f}x")


if __name__ == "__main__":
    main()
