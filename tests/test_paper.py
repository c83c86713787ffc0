"""The paper's claims as properties: fast versions of examples/paper/ experiments 3
(scale invariance, Section 3.3) and 1 (Figure 1, Section 4.1)."""
import os
import sys

import numpy as np
import pytest

import tinygrad_bn as tb

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "paper"))
import figure1  # noqa: E402
import scale_invariance  # noqa: E402

IMPLS = ("fused", "composed")
ROUNDING = 1e-13  # a few float64 ulps of relative error, after a GEMM and a normalisation


# ------------------------------------------------------------------ experiment 3: scale invariance


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("a", scale_invariance.SCALES)
def test_bn_is_invariant_to_weight_scale_with_eps_scaled(a, impl):
    """BN((aW)u) = BN(Wu), d BN/du unchanged, dL/d(aW) = dL/dW / a, exactly when eps -> a^2 eps."""
    r = scale_invariance.measure(a, eps=1e-5, scale_eps=True, impl=impl, seed=1)
    assert r["bn_diff"] < ROUNDING
    assert r["grad_u_diff"] < ROUNDING
    assert r["grad_dev"] < ROUNDING
    assert r["grad_ratio"] == pytest.approx(1 / a, rel=ROUNDING)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("a", scale_invariance.SCALES)
def test_weight_gradient_is_orthogonal_to_weights_and_steps_shrink_as_inverse_square(a, impl):
    """<W_k, dL/dW_k> = 0 per row (eps -> 0), so a step on aW is 1/a^2 as large relative to aW."""
    r = scale_invariance.measure(a, eps=1e-5, scale_eps=True, impl=impl, seed=2)
    assert r["orth"] < ROUNDING
    assert r["step_ratio"] == pytest.approx(1 / a**2, rel=ROUNDING)


def test_fixed_eps_breaks_invariance_only_when_eps_rivals_the_variance():
    """With eps not scaled, the error is O(eps / (a^2 var)): large for a = 0.01, tiny for a = 100."""
    small = scale_invariance.measure(0.01, eps=1e-5, scale_eps=False)
    large = scale_invariance.measure(100.0, eps=1e-5, scale_eps=False)
    assert small["bn_diff"] > 1e-3
    assert large["bn_diff"] < 1e-4  # what remains is the eps of the a = 1 reference


# ------------------------------------------------------------------ experiment 1: Figure 1


@pytest.fixture(scope="module")
def figure1_digits():
    pytest.importorskip("sklearn")
    data = tb.data.load_digits(seed=0)
    return figure1.run(data, steps=300, lr=0.5, impl="fused", seed=0, every=25, quiet=True)


def test_sigmoid_inputs_move_less_with_batchnorm(figure1_digits):
    """Figure 1(b, c): with BN the 15/50/85th percentiles of the last hidden layer's sigmoid
    inputs travel less over training than without (averaged over its 100 units)."""
    drift_plain = figure1.percentile_drift(figure1_digits["no BN"])
    drift_bn = figure1.percentile_drift(figure1_digits["BN"])
    assert drift_bn < 0.6 * drift_plain, (drift_bn, drift_plain)


def test_batchnorm_net_learns_faster(figure1_digits):
    """Figure 1(a): same init and learning rate, the BN net is ahead after a few hundred steps."""
    plain, bn = figure1_digits["no BN"]["test_acc"], figure1_digits["BN"]["test_acc"]
    assert bn[-1] > 0.85 and bn[-1] > plain[-1] + 0.2, (bn[-1], plain[-1])


def test_sigmoid_probe_leaves_running_statistics_alone():
    net = figure1.make_net(4, bn=True)
    before = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    out = figure1.sigmoid_inputs(net, np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32))
    assert out.shape == (8, 100)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k], err_msg=k)


# ------------------------------------------------------------------ every script runs (tiny sizes)


def test_paper_scripts_run_end_to_end(tmp_path, capsys):
    pytest.importorskip("sklearn")
    import inference
    import learning_rates
    import regularisation

    scale_invariance.main(["--fixed-eps", "--out", str(tmp_path)])
    figure1.main(["--steps", "20", "--every", "10", "--datasets", "digits", "--quiet", "--out", str(tmp_path)])
    learning_rates.main(["--steps", "10", "--lrs", "0.1", "100", "--seeds", "1", "--sat-lrs", "1", "--quiet",
                         "--out", str(tmp_path)])
    regularisation.main(["--steps", "10", "--seeds", "1", "--out", str(tmp_path)])
    inference.main(["--steps", "20", "--checkpoints", "10", "--time-samples", "200"])
    out = capsys.readouterr().out
    for text in ("1/a^2", "drift, all units", "diverged", "acc gap", "speed-up"):
        assert text in out
    for png in ("scale_invariance", "figure1_digits", "learning_rates", "regularisation"):
        size = os.path.getsize(tmp_path / f"{png}.png")
        assert 0 < size < 300_000, (png, size)
