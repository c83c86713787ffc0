"""One training step (zero_grad, forward, cross-entropy, backward, SGD step): ours vs
torch (when installed), same thread count, 1 and 2 threads, with peak memory.

    python bench/train.py                # all nets, 1 and 2 threads
    python bench/train.py --nets paper   # one net
    python bench/train.py --impl composed

Each (framework, net, threads) runs in a fresh subprocess so its peak RSS is its own;
"peak MB" is the peak resident set (model, data, steps) minus the resident set after imports.
"""
import argparse
import json
import os
import subprocess
import sys
import time

NETS = {
    "paper": "paper MLP 64-100-100-100-10, BN+sigmoid, batch 60",
    "wide": "wide MLP 64-1024x3-10, BN+sigmoid, batch 512",
    "cnn": "CNN conv3x3 1-16 BN ReLU, 16-32 BN ReLU, maxpool2, linear 6272-10, 28x28, batch 64",
}


def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _reset_peak():
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def build_ours(net, impl):
    import numpy as np

    import tinygrad_bn as tb
    nn = tb.nn
    rng = np.random.default_rng(0)
    if net == "cnn":
        model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16, impl=impl), nn.ReLU(),
                              nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32, impl=impl), nn.ReLU(),
                              nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 14 * 14, 10))
        x = rng.standard_normal((64, 1, 28, 28), dtype=np.float32)
        y = rng.integers(0, 10, 64)
    else:
        width, batch = (100, 60) if net == "paper" else (1024, 512)
        layers, n_in = [], 64
        for _ in range(3):
            layers += [nn.Linear(n_in, width), nn.BatchNorm1d(width, impl=impl), nn.Sigmoid()]
            n_in = width
        model = nn.Sequential(*layers, nn.Linear(width, 10))
        x = rng.standard_normal((batch, 64), dtype=np.float32)
        y = rng.integers(0, 10, batch)
    opt = tb.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xt, yt = tb.Tensor(x), tb.Tensor(y)

    def step():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
    return step


def build_torch(net, impl):
    import torch
    nn = torch.nn
    torch.manual_seed(0)
    if net == "cnn":
        model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                              nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                              nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 14 * 14, 10))
        x = torch.randn(64, 1, 28, 28)
        y = torch.randint(0, 10, (64,))
    else:
        width, batch = (100, 60) if net == "paper" else (1024, 512)
        layers, n_in = [], 64
        for _ in range(3):
            layers += [nn.Linear(n_in, width), nn.BatchNorm1d(width), nn.Sigmoid()]
            n_in = width
        model = nn.Sequential(*layers, nn.Linear(width, 10))
        x = torch.randn(batch, 64)
        y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return step


def child(framework, net, threads, impl, min_time):
    if framework == "torch":
        import torch
        torch.set_num_threads(threads)
        build = build_torch
    else:
        import numpy  # noqa: F401
        import tinygrad_bn as tb
        tb.set_num_threads(threads)
        build = build_ours
    base = _rss_mb()  # after imports: the peak below is the model, data and training steps
    _reset_peak()
    step = build(net, impl)
    for _ in range(3):  # warm-up: caches, lazy allocations
        step()
    times = []
    end = time.perf_counter() + min_time
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    print(json.dumps({"ms": 1e3 * times[len(times) // 2], "peak_mb": max(0.0, _peak_mb() - base)}))


def run_child(framework, net, threads, impl, min_time):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--child", framework, net, str(threads), impl, str(min_time)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def alternate(net, threads, impl, min_time, rounds, have_torch):
    """Ours and torch in alternating child processes, `rounds` times each; keeps each
    framework's fastest round (median step time) and its largest peak memory. The
    machine's speed drifts over seconds: alternating lets both see the same drift."""
    best = {"ours": None, "torch": None}
    for _ in range(rounds):
        for framework in ("ours", "torch") if have_torch else ("ours",):
            r = run_child(framework, net, threads, impl, min_time / rounds)
            if r is None:
                continue
            b = best[framework]
            best[framework] = r if b is None else {"ms": min(b["ms"], r["ms"]),
                                                   "peak_mb": max(b["peak_mb"], r["peak_mb"])}
    return best["ours"], best["torch"]


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, framework, net, threads, impl, min_time = sys.argv
        child(framework, net, int(threads), impl, float(min_time))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", nargs="*", default=list(NETS), choices=list(NETS))
    p.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    p.add_argument("--impl", choices=["fused", "composed"], default="fused")
    p.add_argument("--min-time", type=float, default=3.0, help="seconds of steps per framework, over all rounds")
    p.add_argument("--rounds", type=int, default=3, help="alternating ours/torch child processes per framework")
    args = p.parse_args()
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    print(f"training step, float32, BatchNorm impl={args.impl}; median ms per step (fastest of "
          f"{args.rounds} alternating rounds); torch "
          f"{'installed' if have_torch else 'not installed'}")
    print(f"{'net':7s} {'thr':>3s} {'ours ms':>9s} {'torch ms':>9s} {'ours/torch':>10s} {'ours peak MB':>13s} "
          f"{'torch peak MB':>14s}")
    for net in args.nets:
        for threads in args.threads:
            ours, theirs = alternate(net, threads, args.impl, args.min_time, args.rounds, have_torch)
            o = f"{ours['ms']:9.3f}" if ours else f"{'failed':>9s}"
            t = f"{theirs['ms']:9.3f}" if theirs else f"{'-':>9s}"
            r = f"{ours['ms'] / theirs['ms']:10.2f}" if ours and theirs else f"{'-':>10s}"
            om = f"{ours['peak_mb']:13.1f}" if ours else f"{'-':>13s}"
            tm = f"{theirs['peak_mb']:14.1f}" if theirs else f"{'-':>14s}"
            print(f"{net:7s} {threads:3d} {o} {t} {r} {om} {tm}")
    for net, text in NETS.items():
        if net in args.nets:
            print(f"  {net}: {text}")


if __name__ == "__main__":
    main()
