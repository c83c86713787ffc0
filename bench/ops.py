"""Per-op speed: ours vs numpy vs torch (when installed), same thread count, 1 and 2 threads.

    python bench/ops.py            # all cases
    python bench/ops.py --quick    # shorter timing loops
    python bench/ops.py --runs 3 --pause 20   # each cell the best of 3 spaced runs

Prints one table per thread count; ratio columns are ours/torch and ours/numpy
(below 1 means we are faster). numpy has no backward, so its fwd+bwd column is empty.
This machine's speed can move by 2-4x over minutes: with --runs K every table is
measured K times, --pause seconds apart, and each cell keeps its fastest time.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _timing import blas_threads, fmt, interleaved_times, ratio, try_import_torch  # noqa: E402

import tinygrad_bn as tb  # noqa: E402


def cases(rng):
    """(name, shapes, ours(fwd), numpy(fwd), torch(fwd), grad_wanted)"""
    big = rng.standard_normal((4096, 1024), dtype=np.float32)
    row = rng.standard_normal(1024, dtype=np.float32)
    big2 = rng.standard_normal((4096, 1024), dtype=np.float32)
    m1 = rng.standard_normal((1024, 1024), dtype=np.float32)
    m2 = rng.standard_normal((1024, 1024), dtype=np.float32)
    tiny_a = np.array([1.0, 2.0], np.float32)
    tiny_b = np.array([3.0, 4.0], np.float32)
    return [
        ("add (4096,1024)+(1024,)", (big, row), lambda a, b: a + b, np.add, lambda a, b: a + b),
        ("mul (4096,1024)", (big, big2), lambda a, b: a * b, np.multiply, lambda a, b: a * b),
        ("exp (4096,1024)", (big,), lambda a: a.exp(), np.exp, lambda a: a.exp()),
        ("sum axis 0 (4096,1024)", (big,), lambda a: a.sum(0), lambda a: a.sum(0), lambda a: a.sum(0)),
        ("sum axis 1 (4096,1024)", (big,), lambda a: a.sum(1), lambda a: a.sum(1), lambda a: a.sum(1)),
        ("softmax last (4096,1024)", (big,), lambda a: a.softmax(-1),
         lambda a: (lambda e: e / e.sum(-1, keepdims=True))(np.exp(a - a.max(-1, keepdims=True))),
         lambda a: a.softmax(-1)),
        ("matmul 1024^3", (m1, m2), lambda a, b: a @ b, np.matmul, lambda a, b: a @ b),
        ("tiny a+b (2,)", (tiny_a, tiny_b), lambda a, b: a + b, np.add, lambda a, b: a + b),
        ("tiny (a*b).sum()", (tiny_a, tiny_b), lambda a, b: (a * b).sum(), lambda a, b: (a * b).sum(),
         lambda a, b: (a * b).sum()),
    ]


def run(threads, min_time, torch):
    tb.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    rows = []
    with blas_threads(threads):
        for name, arrays, ours, npf, tf in cases(rng):
            ts = [tb.Tensor(a) for a in arrays]
            tsg = [tb.Tensor(a, requires_grad=True) for a in arrays]
            # the upstream gradient is made once, outside the timed loop, for both libraries
            ones = tb.ones(*ours(*tsg).shape)

            def ours_fb(ours=ours, tsg=tsg, ones=ones):
                for t in tsg:
                    t.grad = None
                out = ours(*tsg)
                out.backward(None if out.size == 1 else ones)
            fns = {"ours": lambda ours=ours, ts=ts: ours(*ts), "numpy": lambda npf=npf: npf(*arrays),
                   "ours_fb": ours_fb}
            if torch is not None:
                tt = [torch.from_numpy(a) for a in arrays]
                ttg = [torch.from_numpy(a.copy()).requires_grad_() for a in arrays]
                tones = torch.ones_like(tf(*tt))

                def torch_fb(tf=tf, ttg=ttg, tones=tones):
                    for t in ttg:
                        t.grad = None
                    out = tf(*ttg)
                    out.backward(None if out.numel() == 1 else tones)
                fns["torch"] = lambda tf=tf, tt=tt: tf(*tt)
                fns["torch_fb"] = torch_fb
            # all candidates of a case timed round-robin (see _timing.interleaved_times)
            t = interleaved_times(fns, min_time)
            t_ours, t_np, t_ours_fb = t["ours"], t["numpy"], t["ours_fb"]
            t_t, t_t_fb = t.get("torch"), t.get("torch_fb")
            rows.append((name, t_ours, t_np, t_t, t_ours_fb, t_t_fb))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    p.add_argument("--runs", type=int, default=1, help="measure every table this many times, keep each cell's best")
    p.add_argument("--pause", type=float, default=0.0, help="seconds between runs")
    args = p.parse_args()
    torch = try_import_torch()
    min_time = 0.2 if args.quick else 1.0
    print(f"float32; torch {'%s' % torch.__version__ if torch else 'not installed'}; numpy {np.__version__}")
    results = {}
    for k in range(args.runs):
        if k:
            time.sleep(args.pause)
        for n in args.threads:
            rows = run(n, min_time, torch)
            old = results.get(n, rows)
            results[n] = [(r[0],) + tuple(None if a is None else min(a, b) for a, b in zip(r[1:], o[1:]))
                          for r, o in zip(rows, old)]
    if args.runs > 1:
        print(f"(best of {args.runs} runs, {args.pause:g} s apart)")
    for n in args.threads:
        print(f"\n== {n} thread(s) ==")
        print(f"{'op':28s} {'ours':>10s} {'numpy':>10s} {'torch':>10s} {'o/t':>5s} {'o/np':>5s} | "
              f"{'ours f+b':>10s} {'torch f+b':>10s} {'o/t':>5s}")
        for name, o, npt, t, ofb, tfb in results[n]:
            print(f"{name:28s} {fmt(o):>10s} {fmt(npt):>10s} {fmt(t):>10s} {ratio(o, t):>5s} {ratio(o, npt):>5s} | "
                  f"{fmt(ofb):>10s} {fmt(tfb):>10s} {ratio(ofb, tfb):>5s}")
    if 1 in results and 2 in results:
        print("\n== scaling: ours 1 thread / ours 2 threads (forward) ==")
        for (name, o1, *_), (_, o2, *_) in zip(results[1], results[2]):
            print(f"{name:28s} {o1 / o2:5.2f}x")


if __name__ == "__main__":
    main()
