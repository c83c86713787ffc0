"""Per-op speed: ours vs numpy vs torch (when installed), same thread count, 1 and 2 threads.

    python bench/ops.py            # all cases
    python bench/ops.py --quick    # shorter timing loops
    python bench/ops.py --runs 3 --pause 20   # each cell the best of 3 spaced runs

Prints one table per thread count; ratio columns are ours/torch and ours/numpy
(below 1 means we are faster). Each case is timed at every thread count in one
round-robin, so the tables and the closing scaling ratios share the same conditions. numpy has no backward, so its fwd+bwd column is empty.
This machine's speed can move by 2-4x over minutes: with --runs K every table is
measured K times, --pause seconds apart, and each cell keeps its fastest time.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _timing import fmt, interleaved_times, ratio, try_import_torch  # noqa: E402

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


def _blas_setter():
    """A function setting numpy's BLAS thread count (threadpoolctl, the bench extra), or
    one that does nothing when threadpoolctl is missing."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return lambda n: None
    controller = ThreadpoolController()
    return lambda n: controller.limit(limits=n, user_api="blas")


def run(thread_counts, min_time, torch):
    """{threads: rows}: every candidate of a case at every thread count timed in one
    round-robin, so the 1-thread and 2-thread times (and the scaling between them) are
    measured under the same conditions."""
    rng = np.random.default_rng(0)
    set_blas = _blas_setter()
    rows = {n: [] for n in thread_counts}

    blas_now = [1]

    def at(n, blas_n):
        # untimed, before each batch of a candidate: its thread counts. Ours runs its
        # GEMM slices on one BLAS thread each (as tinygrad_bn.blas sets it); numpy's
        # matmul gets n BLAS threads.
        def setup():
            if blas_now[0] > 1:
                # NOTE: OpenBLAS's workers spin for about 0.1 s after a threaded call; the
                # next candidate would share the cores with them (ours' 2-thread matmul
                # f+b measured 38 ms instead of 25 right after numpy's 2-thread matmul).
                time.sleep(0.3)
            tb.set_num_threads(n)
            if torch is not None:
                torch.set_num_threads(n)
            set_blas(blas_n)
            blas_now[0] = blas_n
        return setup

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
        per_n = {"ours": lambda ours=ours, ts=ts: ours(*ts), "numpy": lambda npf=npf: npf(*arrays),
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
            per_n["torch"] = lambda tf=tf, tt=tt: tf(*tt)
            per_n["torch_fb"] = torch_fb
        fns, before = {}, {}
        for n in thread_counts:
            for kind, fn in per_n.items():
                fns[(kind, n)] = fn
                # only the GEMM case calls the BLAS
                before[(kind, n)] = at(n, n if kind == "numpy" and name.startswith("matmul") else 1)
        # all candidates of a case, at all thread counts, timed round-robin
        # (see _timing.interleaved_times)
        t = interleaved_times(fns, min_time * len(thread_counts), before=before)
        for n in thread_counts:
            rows[n].append((name, t[("ours", n)], t[("numpy", n)], t.get(("torch", n)),
                            t[("ours_fb", n)], t.get(("torch_fb", n))))
    set_blas(1)
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
        measured = run(args.threads, min_time, torch)
        for n in args.threads:
            rows = measured[n]
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
