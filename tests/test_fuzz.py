"""Fuzzing every kernel in a child process: no sequence of ops, valid or not, may kill it.

tests/_fuzz_child.py draws (with Hypothesis, under this run's profile) sequences of Tensor
ops and direct calls of the tinygrad_bn._C wrappers with wrong dtypes, ranks, layouts,
alignments, lengths, empty and huge extents and thread counts. Bad arguments must end in
a Python exception; a kernel that reads or writes out of bounds shows up as the child
dying by a signal (or, in a TB_DEBUG=1 build, as a bounds-check error it reports).
"""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from hypothesis import settings

import tinygrad_bn
from tinygrad_bn._C import parallel

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHILD = os.path.join(HERE, "_fuzz_child.py")
PACKAGE = os.path.realpath(tinygrad_bn.__file__)

# Every Python-facing kernel entry point the child calls, by family: each must be reached
# with arguments it accepts at least once, or the fuzzing only exercised the checks.
ENTRY_POINTS = {
    "elementwise": ["binary", "compare", "where", "unary", "pow_scalar", "clip", "broadcast_size"],
    "reduce": ["sum_axes", "max_axes", "min_axes", "argmax_axis"],
    "index": ["scatter_add", "contiguous"],
    "softmax": ["softmax", "log_softmax", "cross_entropy_forward", "cross_entropy_backward"],
    "batchnorm": ["forward_train", "forward_eval", "backward"],
    "conv": ["im2col", "col2im", "conv2d_forward", "conv2d_backward", "conv2d_grad_input", "conv2d_grad_weight",
             "conv1d_forward", "conv1d_backward"],
    "pool": ["max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward"],
}


def child_env():
    """The environment of a child that must import this very tinygrad_bn."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(PACKAGE)) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def died_by(returncode):
    """'SIGSEGV' etc. when a subprocess returncode means death by a signal, else None."""
    if returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def run_fuzz_child(tmp_path, *extra, timeout):
    """Run the fuzz child; returns (CompletedProcess, the call log's last lines)."""
    log = tmp_path / "calls.log"
    prof = settings.default
    cfg = {"max_examples": prof.max_examples, "derandomize": prof.derandomize, "print_blob": True}
    cmd = [sys.executable, CHILD, "--expect", PACKAGE, "--settings", json.dumps(cfg), "--log", str(log),
           "--summary", str(tmp_path / "summary.json"), *extra]
    try:
        res = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=timeout,
                             check=False)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"fuzz child still running after {timeout} s; last calls:\n{tail(log)}\n"
                    f"stderr:\n{(e.stderr or b'')[-3000:]}")
    return res, tail(log)


def tail(path, n=25):
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no call log)"


def report(res, last_calls):
    sig = died_by(res.returncode)
    what = f"died by {sig}" if sig else f"exited with status {res.returncode}"
    return (f"fuzz child {what}. Last calls (the crashing one last):\n{last_calls}\n"
            f"stdout:\n{res.stdout[-4000:]}\nstderr:\n{res.stderr[-8000:]}")


def test_random_op_sequences_never_kill_the_process(tmp_path):
    """Random sequences of valid and invalid ops through every kernel (Tensor ops with their
    backward passes, and every _C wrapper directly) end in results or Python exceptions:
    the child exits normally, never by a signal, and reports no exception a kernel could
    not raise."""
    res, last_calls = run_fuzz_child(tmp_path, timeout=120 + 4 * settings.default.max_examples)
    assert res.returncode == 0, report(res, last_calls)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["module"] == PACKAGE
    ok, errors = summary["ok"], summary["errors"]
    for family, names in ENTRY_POINTS.items():
        missed = [n for n in names if not ok.get(family, {}).get(n)]
        assert not missed, f"{family}: never called with valid arguments: {missed}; ok calls {ok.get(family)}"
        assert sum(errors.get(family, {}).values()) > 0, f"{family}: no invalid call was rejected"
    tensor_ok = ok.get("tensor", {})
    assert tensor_ok.get("backward", 0) + tensor_ok.get("grad", 0) > 0, f"no backward pass ran: {tensor_ok}"
    assert sum(errors.get("tensor", {}).values()) > 0


def test_fuzz_harness_reports_a_crash(tmp_path):
    """The harness can fail: a child that segfaults inside a call is reported as death by
    SIGSEGV, with that call last in the log."""
    res, last_calls = run_fuzz_child(tmp_path, "--selftest-crash", "--families", "elementwise", timeout=120)
    assert died_by(res.returncode) == "SIGSEGV", report(res, last_calls)
    assert last_calls.strip().splitlines()[-1] == "selftest: sigsegv()"
    assert "Fatal Python error: Segmentation fault" in res.stderr  # faulthandler's traceback


def run_snippet(code):
    """Run `code` in a child (no core file if it crashes, OpenMP's own thread limit unset)."""
    code = "import resource; resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n" + textwrap.dedent(code)
    env = child_env()
    env.pop("OMP_THREAD_LIMIT", None)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=False,
                          capture_output=True, text=True, timeout=120)


# Kernel bugs the fuzzing found, now fixed (src_cy/threadcheck.pxd); each input runs in a
# child, since before the fix it took the process down.
def test_contiguous_checks_its_thread_count():
    """index.contiguous rejects nthreads < 1 with ValueError, as every other kernel does."""
    res = run_snippet("""
        import numpy as np
        from tinygrad_bn._C import index
        a = np.ones((64, 64), np.float32).T   # a transpose takes the tiled OpenMP path
        for n in (-1, 0):
            try:
                index.contiguous(a, n)
            except ValueError:
                continue
            raise SystemExit(f"contiguous accepted nthreads={n}")
        print("ok")
        """)
    assert res.returncode == 0 and res.stdout.strip() == "ok", (res.returncode, res.stdout, res.stderr[-2000:])


@pytest.mark.skipif(not parallel.openmp_enabled(), reason="without OpenMP the thread count is not used")
@pytest.mark.parametrize("how", ["set_num_threads", "kernel_argument"])
def test_an_absurd_thread_count_is_an_error_not_a_crash(how):
    """A thread count far beyond what the machine can start is rejected (ValueError) or
    run with fewer threads; it never takes the process down."""
    res = run_snippet(f"""
        import numpy as np
        import tinygrad_bn as tb
        from tinygrad_bn._C import elementwise
        x = np.ones(300_000, np.float32)
        try:
            if {how!r} == "set_num_threads":
                tb.set_num_threads(10**6)
                y = (tb.Tensor(x) * 2.0).numpy()
            else:
                y = elementwise.unary("neg", x, 10**6)
        except ValueError:
            y = -x
        assert abs(y).min() > 0
        print("ok")
        """)
    assert res.returncode == 0 and res.stdout.strip() == "ok", (died_by(res.returncode) or res.returncode,
                                                                res.stderr[-2000:])
