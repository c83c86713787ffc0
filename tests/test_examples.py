"""Smoke test: every example script runs end to end at a tiny size."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(script, *args, tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "examples", script), "--quiet", "--out", str(tmp_path), *args]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), MPLBACKEND="Agg")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, f"{script} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    return res.stdout


def test_spirals_tensor_example(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "spirals_tensor.py"), "--epochs", "3",
                          "--n", "50"], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr
    assert "test accuracy" in out.stdout


def test_spirals_example(tmp_path):
    assert "test accuracy" in run_example("spirals.py", "--epochs", "1", "--n", "100", tmp_path=tmp_path)


@pytest.mark.parametrize("impl", ["fused", "composed"])
def test_train_mlp_digits_example_saves_and_reloads(tmp_path, impl):
    pytest.importorskip("sklearn")
    out = run_example("train_mlp_digits.py", "--epochs", "1", "--limit", "256", "--impl", impl, tmp_path=tmp_path)
    assert "reloaded" in out
    assert os.path.exists(tmp_path / "mlp_digits.npz")


def test_train_mlp_digits_example_without_bn(tmp_path):
    pytest.importorskip("sklearn")
    assert "test accuracy" in run_example("train_mlp_digits.py", "--epochs", "1", "--limit", "256", "--no-bn",
                                          tmp_path=tmp_path)


def test_train_cnn_digits_example(tmp_path):
    pytest.importorskip("sklearn")
    assert "test accuracy" in run_example("train_cnn_digits.py", "--epochs", "1", "--limit", "128",
                                          tmp_path=tmp_path)


def test_train_mnist1d_example(tmp_path):
    pytest.importorskip("mnist1d")
    out = run_example("train_mnist1d.py", "--epochs", "1", "--limit", "200", "--seeds", "1", tmp_path=tmp_path)
    assert "MNIST-1D paper" in out
