"""Experiment 3: why BatchNorm allows larger learning rates (Section 3.3 of the paper).

For a in {0.01, 0.1, 10, 100}, in float64, it measures that BN((aW)u) = BN(Wu), that
d BN/d u is unchanged, that the gradient with respect to aW is 1/a times the gradient
with respect to W, and that one SGD step changes larger weights relatively less (by
1/a^2). The derivation is printed beside the measured numbers.

    python examples/paper/scale_invariance.py                  # eps scaled by a^2: exact
    python examples/paper/scale_invariance.py --fixed-eps      # also show eps = 1e-5 kept fixed
    python examples/paper/scale_invariance.py --impl composed  # BN from primitive ops
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tinygrad_bn as tb  # noqa: E402
from _common import pyplot  # noqa: E402

F = tb.nn.functional
SCALES = (0.01, 0.1, 10.0, 100.0)

DERIVATION = """\
Why (one paragraph). Let x = Wu be a layer's pre-activation over a mini-batch. BN
normalises each feature with the batch mean and standard deviation; for x' = aWu
(a > 0) the mean scales by a and the variance by a^2, so x_hat' = (a x - a mu) /
sqrt(a^2 var + eps') equals x_hat exactly when eps' = a^2 eps, and up to a relative
O(eps / (a^2 var)) otherwise: BN((aW)u) = BN(Wu). Being the same function of u, it
has the same Jacobian d BN/du, so the backward pass into lower layers is unchanged.
Now write g(V) = BN(Vu) for any weight V. g(aW) = g(W) for every W; differentiating
in W gives a * g'(aW) = g'(W), i.e. dL/d(aW) = (1/a) dL/dW (the paper's eq. in 3.3).
Differentiating in a at a = 1 gives <W_k, dL/dW_k> = 0 per output row: the gradient
is orthogonal to the weights. So an SGD step dV = -lr dL/dV on V = aW has relative
size |dV|/|V| = (1/a^2) lr |dL/dW|/|W|: larger weights change less, and since the
step is orthogonal, |W|^2 grows by lr^2 |grad|^2 each step, which lowers the
effective learning rate by itself. That is the self-stabilisation that lets BN
nets train with learning rates that would make un-normalised nets diverge."""


def problem(seed=0, m=32, n_in=8, n_out=5):
    """A mini-batch u (m, n_in), weights W (n_out, n_in), gamma/beta, and a random
    upstream gradient G (sum(BN(x)) has zero gradient, so a random G is needed)."""
    rng = np.random.default_rng(seed)
    return dict(u=rng.normal(size=(m, n_in)), W=rng.normal(size=(n_out, n_in)) / np.sqrt(n_in),
                gamma=rng.normal(size=n_out), beta=rng.normal(size=n_out), G=rng.normal(size=(m, n_out)))


def bn_and_grads(p, a, eps, impl):
    """y = BN(u (aW)^T), and the gradients of L = sum(G * y) w.r.t. u and V = aW."""
    u = tb.Tensor(p["u"], requires_grad=True)
    V = tb.Tensor(a * p["W"], requires_grad=True)
    gamma, beta = tb.Tensor(p["gamma"]), tb.Tensor(p["beta"])
    y = F.batch_norm(u @ V.T, None, None, gamma, beta, training=True, eps=eps, impl=impl)
    loss = (y * tb.Tensor(p["G"])).sum()
    grad_u, grad_V = tb.grad(loss, [u, V])
    return y.numpy(), grad_u.numpy(), grad_V.numpy()


def measure(a, eps=1e-5, scale_eps=True, impl="fused", seed=0, lr=0.01):
    """Compare the net at weights aW with the net at W. Returns a dict of measurements:
    bn_diff      max |BN(aWu) - BN(Wu)| / max |BN(Wu)|
    grad_u_diff  max |dL/du at aW - dL/du at W| / max |dL/du at W|
    grad_ratio   |dL/d(aW)| / |dL/dW|  (theory: 1/a)
    grad_dev     max |a dL/d(aW) - dL/dW| / max |dL/dW|  (theory: 0)
    orth         max_k |<V_k, dL/dV_k>| / (|V_k| |dL/dV_k|) at V = aW, computed with eps = 1e-300
                 (theory: 0; with eps > 0 it is O(eps / var) instead)
    rel_step     |lr dL/dV| / |V| for one SGD step on V = aW
    step_ratio   rel_step(a) / rel_step(1)  (theory: 1/a^2)
    """
    p = problem(seed)
    y1, gu1, gW1 = bn_and_grads(p, 1.0, eps, impl)
    ya, gua, gWa = bn_and_grads(p, a, eps * a * a if scale_eps else eps, impl)
    V = a * p["W"]
    gWa0 = bn_and_grads(p, a, 1e-300, impl)[2]  # NOTE: eps must be > 0; 1e-300 vanishes beside var
    cos = np.abs((V * gWa0).sum(1)) / (np.linalg.norm(V, axis=1) * np.linalg.norm(gWa0, axis=1))
    rel_step_1 = lr * np.linalg.norm(gW1) / np.linalg.norm(p["W"])
    rel_step_a = lr * np.linalg.norm(gWa) / np.linalg.norm(V)
    return dict(a=a, bn_diff=np.abs(ya - y1).max() / np.abs(y1).max(),
                grad_u_diff=np.abs(gua - gu1).max() / np.abs(gu1).max(),
                grad_ratio=np.linalg.norm(gWa) / np.linalg.norm(gW1),
                grad_dev=np.abs(a * gWa - gW1).max() / np.abs(gW1).max(),
                orth=cos.max(), rel_step=rel_step_a, step_ratio=rel_step_a / rel_step_1)


def table(rows, title):
    head = (f"{'a':>6} {'|dBN|':>9} {'|d(dBN/du)|':>11} {'|g_aW|/|g_W|':>12} {'1/a':>7} "
            f"{'|a g_aW-g_W|':>12} {'cos(W,g)*':>9} {'rel step':>9} {'ratio':>9} {'1/a^2':>7}")
    lines = [title, head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['a']:>6g} {r['bn_diff']:>9.1e} {r['grad_u_diff']:>11.1e} {r['grad_ratio']:>12.5g} "
                     f"{1 / r['a']:>7g} {r['grad_dev']:>12.1e} {r['orth']:>9.1e} {r['rel_step']:>9.2e} "
                     f"{r['step_ratio']:>9.4g} {1 / r['a'] ** 2:>7g}")
    lines.append("* cos(W,g): max over output rows of |<V_k, dL/dV_k>| / (|V_k| |dL/dV_k|), with eps = 1e-300")
    return "\n".join(lines)


def plot(rows, path):
    plt = pyplot()
    if plt is None:
        return
    a = np.array([r["a"] for r in rows])
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    left.loglog(a, [r["grad_ratio"] for r in rows], "o", label="measured |dL/d(aW)| / |dL/dW|")
    left.loglog(a, 1 / a, "-", color="gray", label="1/a")
    left.set(xlabel="weight scale a", title="gradient w.r.t. aW")
    left.legend(fontsize=8)
    right.loglog(a, [r["rel_step"] for r in rows], "o", label="measured |lr dL/dV| / |V|")
    right.loglog(a, rows[0]["rel_step"] * (rows[0]["a"] / a) ** 2, "-", color="gray", label="slope 1/a^2")
    right.set(xlabel="weight scale a", title="relative SGD step on V = aW")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impl", choices=["fused", "composed"], default="fused")
    p.add_argument("--eps", type=float, default=1e-5)
    p.add_argument("--fixed-eps", action="store_true", help="also show the table with eps not scaled by a^2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures"))
    args = p.parse_args(argv)
    scales = (1.0,) + SCALES
    rows = [measure(a, args.eps, True, args.impl, args.seed) for a in scales]
    print(DERIVATION)
    print()
    print(table(rows, f"Measured in float64, {args.impl} BN, eps scaled to {args.eps:g} * a^2 (exact identity):"))
    if args.fixed_eps:
        fixed = [measure(a, args.eps, False, args.impl, args.seed) for a in scales]
        print()
        print(table(fixed, f"Same, eps = {args.eps:g} kept fixed (exact only as eps / (a^2 var) -> 0):"))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "scale_invariance.png")
    plot(rows, path)
    print(f"\nfigure: {path}")
    return rows


if __name__ == "__main__":
    main()
