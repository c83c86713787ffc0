"""Kernel-level timing of the fused batch-norm kernels (src_cy/batchnorm.pyx).

Compares, per shape and thread count, training-mode forward and forward+backward of
  * ours:  tinygrad_bn._C.batchnorm.forward_train + backward (x reshaped to (N, C, H*W))
  * numpy: a straightforward float64-statistics numpy implementation (one thread)
  * torch: F.batch_norm(training=True) + y.backward(dy), when `import torch` works
GB/s counts the minimum traffic: forward reads x and writes y (8 B per float32 value),
forward+backward also reads grad_y and writes grad_x (16 B per float32 value).

Functions are timed in interleaved batches and the minimum is reported by default: on a
shared machine the least disturbed batch is the most repeatable figure (--stat median
for the median). --runs K repeats the whole table K times, --pause seconds apart, and
keeps each cell's minimum over the runs (for a machine that is busy in spells).

    python bench/batchnorm_kernels.py                 # the five reference shapes, 1 and 2 threads
    python bench/batchnorm_kernels.py --threads 2 --shapes 8x16x224x224 --dtype float64
    python bench/batchnorm_kernels.py --runs 5 --pause 60
"""
import argparse
import glob
import importlib.util
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = ["256x1024", "4096x512", "64x64x32x32", "32x256x14x14", "8x16x224x224"]


def load_kernels():
    """The compiled module, without importing the tinygrad_bn package (the engine may be mid-edit)."""
    try:
        from tinygrad_bn._C import batchnorm
        return batchnorm
    except Exception:
        paths = glob.glob(os.path.join(HERE, "..", "tinygrad_bn", "_C", "batchnorm*.so"))
        if not paths:
            sys.exit("build first: TB_EXTENSIONS=batchnorm python setup.py build_ext --inplace")
        spec = importlib.util.spec_from_file_location("batchnorm", paths[0])
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


def _calls_per_batch(fn, target=0.02):
    fn()
    t0 = time.perf_counter()
    fn()
    return max(1, int(target / max(time.perf_counter() - t0, 1e-7)))


def race(fns, repeats=9, stat=min):
    """Seconds per call of each function, timed in interleaved batches (so a busy spell on
    a shared machine hits all of them alike); `stat` (min or median) over the batches."""
    numbers = [_calls_per_batch(f) for f in fns]
    times = [[] for _ in fns]
    for _ in range(repeats):
        for f, n, ts in zip(fns, numbers, times):
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            ts.append((time.perf_counter() - t0) / n)
    return [stat(ts) for ts in times]


def numpy_forward(x, weight, bias, eps):
    """Reference: per-channel stats in float64, two passes; x is (N, C, L)."""
    mean = x.mean(axis=(0, 2), dtype=np.float64)
    centred = x - mean[None, :, None].astype(x.dtype)
    var = np.einsum("ncl,ncl->c", centred, centred, dtype=np.float64) / (x.size // x.shape[1])
    inv_std = 1.0 / np.sqrt(var + eps)
    alpha = (weight * inv_std).astype(x.dtype)
    y = centred * alpha[None, :, None] + bias[None, :, None]
    return y, mean, inv_std, centred


def numpy_backward(centred, grad_y, inv_std, weight):
    M = centred.size // centred.shape[1]
    grad_beta = grad_y.sum(axis=(0, 2), dtype=np.float64)
    sum_dy_xmu = np.einsum("ncl,ncl->c", centred, grad_y, dtype=np.float64)
    a = weight * inv_std
    b = (-a * inv_std * inv_std * sum_dy_xmu / M).astype(centred.dtype)
    d = (-a * grad_beta / M).astype(centred.dtype)
    grad_x = grad_y * a.astype(centred.dtype)[None, :, None] + (centred * b[None, :, None] + d[None, :, None])
    return grad_x, inv_std * sum_dy_xmu, grad_beta


def measure(bnk, torch, F, shape_s, threads, dt, args, stat, rng):
    """{(threads, name): seconds} for one shape; names: ours fwd, ours f+b, numpy f+b,
    torch fwd, torch f+b."""
    shape = tuple(int(v) for v in shape_s.split("x"))
    C = shape[1]
    eps = 1e-5
    x4 = rng.standard_normal(shape, dtype=np.float32).astype(dt) * 2 + 3
    dy4 = rng.standard_normal(shape, dtype=np.float32).astype(dt)
    x = x4.reshape(shape[:2] + ((int(np.prod(shape[2:])),) if len(shape) > 2 else ()))
    dy = dy4.reshape(x.shape)
    x3 = x if x.ndim == 3 else x[:, :, None]
    dy3 = dy if dy.ndim == 3 else dy[:, :, None]
    w = rng.standard_normal(C).astype(dt)
    b = rng.standard_normal(C).astype(dt)
    rm = np.zeros(C, dt)
    rv = np.ones(C, dt)
    out = {}
    if not args.no_numpy:
        def np_fwd_bwd():
            y, mean, inv_std, centred = numpy_forward(x3, w, b, eps)
            numpy_backward(centred, dy3, inv_std, w)
        out[(1, "numpy f+b")] = race([np_fwd_bwd], 3, stat)[0]
    for nt in threads:
        def fwd():
            return bnk.forward_train(x, w, b, rm, rv, 0.1, eps, nt)

        def fwd_bwd():
            y, mean, inv_std = bnk.forward_train(x, w, b, rm, rv, 0.1, eps, nt)
            bnk.backward(x, dy, mean, inv_std, w, nt)

        fns = {"ours fwd": fwd, "ours f+b": fwd_bwd}
        if torch is not None:
            torch.set_num_threads(nt)
            tx = torch.from_numpy(x4.copy()).requires_grad_(True)
            tdy = torch.from_numpy(dy4.copy())
            tw = torch.from_numpy(w.copy()).requires_grad_(True)
            tb = torch.from_numpy(b.copy()).requires_grad_(True)
            trm = torch.zeros(C, dtype=tx.dtype)
            trv = torch.ones(C, dtype=tx.dtype)

            def t_fwd():
                with torch.no_grad():
                    F.batch_norm(tx, trm, trv, tw, tb, training=True, momentum=0.1, eps=eps)

            def t_fwd_bwd():
                tx.grad = tw.grad = tb.grad = None
                y = F.batch_norm(tx, trm, trv, tw, tb, training=True, momentum=0.1, eps=eps)
                y.backward(tdy)

            fns.update({"torch fwd": t_fwd, "torch f+b": t_fwd_bwd})
        for name, t in zip(fns, race(list(fns.values()), args.repeats, stat)):
            out[(nt, name)] = t
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--no-numpy", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--repeats", type=int, default=9, help="timed batches per function")
    ap.add_argument("--stat", default="min", choices=["min", "median"],
                    help="min (default: the least disturbed batch on a shared machine) or median")
    ap.add_argument("--runs", type=int, default=1, help="repeat the table; keep each cell's minimum")
    ap.add_argument("--pause", type=float, default=0.0, help="seconds between runs")
    args = ap.parse_args()

    bnk = load_kernels()
    torch = F = None
    if not args.no_torch:
        try:
            import torch
            import torch.nn.functional as F
        except ImportError:
            pass
    stat = min if args.stat == "min" else statistics.median
    dt = np.dtype(args.dtype)
    threads = [int(t) for t in args.threads.split(",")]
    shapes = args.shapes.split(",")
    best = {}
    for run in range(args.runs):
        if run:
            time.sleep(args.pause)
        for shape_s in shapes:
            res = measure(bnk, torch, F, shape_s, threads, dt, args, stat, np.random.default_rng(0))
            for key, t in res.items():
                best[(shape_s,) + key] = min(t, best.get((shape_s,) + key, float("inf")))

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "?") if os.path.exists("/proc/cpuinfo") else "?"
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else "?"
    cols = ["shape", "thr", "ours fwd", "GB/s fwd", "ours f+b", "GB/s f+b"]
    if not args.no_numpy:
        cols += ["numpy f+b"]
    if torch is not None:
        cols += ["torch fwd", "torch f+b", "ours/torch f+b"]
    print(f"# {cpu}; dtype {dt}; ms, {args.stat} of {args.repeats} interleaved batches"
          f"{f', min over {args.runs} runs' if args.runs > 1 else ''}; load average at end {' '.join(load)}")
    print(f"# GB/s: fwd {2 * dt.itemsize} B/value (read x, write y), f+b {4 * dt.itemsize} B/value "
          "(read x, grad_y; write y, grad_x)")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for shape_s in shapes:
        n = int(np.prod([int(v) for v in shape_s.split("x")]))
        for nt in threads:
            t_f, t_fb = best[(shape_s, nt, "ours fwd")], best[(shape_s, nt, "ours f+b")]
            row = [shape_s, str(nt), f"{t_f * 1e3:.3f}", f"{2 * n * dt.itemsize / t_f / 1e9:.1f}",
                   f"{t_fb * 1e3:.3f}", f"{4 * n * dt.itemsize / t_fb / 1e9:.1f}"]
            if not args.no_numpy:
                row.append(f"{best[(shape_s, 1, 'numpy f+b')] * 1e3:.2f}" if nt == 1 else "-")
            if torch is not None:
                tt_f, tt_fb = best[(shape_s, nt, "torch fwd")], best[(shape_s, nt, "torch f+b")]
                row += [f"{tt_f * 1e3:.3f}", f"{tt_fb * 1e3:.3f}", f"{t_fb / tt_fb:.2f}"]
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
