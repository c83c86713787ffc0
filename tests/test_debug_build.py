"""The debug build: TB_DEBUG=1 makes setup.py compile the kernels with Cython's bounds and
initialisation checks (and -O0 -g); a fast subset of the suite must pass under it.

test_suite_subset_passes_under_the_debug_build copies the sources into a temporary
directory, builds them there with TB_DEBUG=1 (the checkout's own optimised kernels stay
untouched) and runs DEBUG_SUBSET against that build in a child pytest. It runs when CI is
set (the CI entry point runs the whole suite) or with

    TB_TEST_DEBUG_BUILD=1 python -m pytest tests/test_debug_build.py

The other tests here only run inside that child, against the debug build.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import tinygrad_bn
from tinygrad_bn._C import _build_info
from tinygrad_bn._C import reduce as _reduce

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PACKAGE = os.path.realpath(tinygrad_bn.__file__)
DEBUG = bool(getattr(_build_info, "DEBUG", False))

# Kernel tests, the fuzzer, the op table, the conv/pool/BatchNorm layers and the losses:
# every kernel under the bounds checks in about a minute on 2 cores (plus the build).
# This file is in it so that the checks below run against the debug build.
DEBUG_SUBSET = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(HERE, "test_kernels_*.py"))) + [
    "tests/test_fuzz.py", "tests/test_ops.py", "tests/test_nn_conv.py", "tests/test_batchnorm_module.py",
    "tests/test_batchnorm_properties.py", "tests/test_losses.py", "tests/test_debug_build.py",
]
BOUNDS_TEST = "test_a_bounds_check_turns_a_buffer_overflow_into_index_error"


def _truthy(name):
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def _copy_sources(dest):
    """setup.py, pyproject.toml, src_cy/ (no generated C), tinygrad_bn/ (no built modules), tests/."""
    # NOTE: generated .c files must not travel: cythonize regenerates a .c only when the
    # .pyx is newer, so a release-build .c would be compiled without the checks.
    build_outputs = shutil.ignore_patterns("*.c", "*.cpp", "*.html", "*.so", "*.pyd", "*.o", "__pycache__",
                                           "_build_info.py", ".hypothesis")
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy2(os.path.join(ROOT, name), dest / name)
    for name in ("src_cy", "tinygrad_bn", "tests"):
        shutil.copytree(os.path.join(ROOT, name), dest / name, ignore=build_outputs)


def _run(cmd, cwd, env, timeout, what):
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    seconds = time.perf_counter() - start
    assert res.returncode == 0, (f"{what} failed (exit status {res.returncode}) after {seconds:.0f} s:\n"
                                 f"{res.stdout[-6000:]}\n{res.stderr[-6000:]}")
    return res, seconds


@pytest.mark.skipif(not (_truthy("CI") or _truthy("TB_TEST_DEBUG_BUILD")),
                    reason="builds the kernels with TB_DEBUG=1 (1-2 minutes on 2 cores): runs when CI is set, "
                           "or with TB_TEST_DEBUG_BUILD=1 python -m pytest tests/test_debug_build.py")
def test_suite_subset_passes_under_the_debug_build(tmp_path):
    """With TB_DEBUG=1 setup.py builds bounds-checked kernels (DEBUG = True in _build_info)
    that the child imports from the temporary tree, and DEBUG_SUBSET (kernel tests, fuzzer,
    op table, conv/pool/BatchNorm layers, losses) passes against them, with no bounds
    violation reported from inside a kernel (Cython can only print those: they are
    turned into errors) and with the bounds check shown to fire."""
    if DEBUG:
        pytest.skip("already running against the debug build")
    _copy_sources(tmp_path)
    env = dict(os.environ, TB_DEBUG="1")
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("HYPOTHESIS_PROFILE", "ci")
    jobs = str(min(4, os.cpu_count() or 1))
    _, build_seconds = _run([sys.executable, "setup.py", "build_ext", "--inplace", "-j", jobs], tmp_path, env,
                            900, "TB_DEBUG=1 build")

    # The child must import the debug build, not the checkout (pip install -e points there).
    probe = ("import json, tinygrad_bn, tinygrad_bn._C._build_info as b, tinygrad_bn._C.reduce as r; "
             "print(json.dumps([tinygrad_bn.__file__, r.__file__, b.DEBUG]))")
    res, _ = _run([sys.executable, "-c", probe], tmp_path, env, 120, "import check")
    package, kernels, debug = json.loads(res.stdout.strip().splitlines()[-1])
    for path in (package, kernels):
        assert os.path.realpath(path).startswith(os.path.realpath(tmp_path) + os.sep), path
    assert debug is True

    env["TB_DEBUG_BUILD_ROOT"] = str(tmp_path)
    report = tmp_path / "report.xml"
    _, test_seconds = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                            "-W", "error::pytest.PytestUnraisableExceptionWarning", f"--junitxml={report}",
                            *DEBUG_SUBSET], tmp_path, env, 1200, "test subset under the debug build")
    cases = {c.get("name"): c for c in ET.parse(report).getroot().iter("testcase")}
    assert len(cases) > 300, f"only {len(cases)} tests ran"
    ran = cases[BOUNDS_TEST]
    assert ran.find("skipped") is None and ran.find("failure") is None, ET.tostring(ran, encoding="unicode")
    print(f"debug build {build_seconds:.0f} s, {len(cases)} tests {test_seconds:.0f} s")


requires_debug_build = pytest.mark.skipif(
    not DEBUG, reason="needs the TB_DEBUG=1 build (test_suite_subset_passes_under_the_debug_build runs it)")


@requires_debug_build
def test_the_debug_build_is_the_one_under_test():
    """Inside the debug-build run, tinygrad_bn and its kernels come from the tree just built."""
    root = os.environ.get("TB_DEBUG_BUILD_ROOT")
    if root:
        assert PACKAGE.startswith(os.path.realpath(root) + os.sep), PACKAGE
        assert os.path.realpath(_reduce.__file__).startswith(os.path.realpath(root) + os.sep)
    assert _build_info.DEBUG is True
    assert "-O0" in _build_info.COMPILE_ARGS


@requires_debug_build
def test_a_bounds_check_turns_a_buffer_overflow_into_index_error(monkeypatch):
    """A kernel indexing past the end of a memoryview raises IndexError in the debug build.

    reduce.sum_axes sizes the per-block partials of a long row with the module-level helper
    _partials; one slot short, the kernel's last write lands past the end. The kernel is
    noexcept, so Cython reports the IndexError through sys.unraisablehook (which the
    debug-subset run turns into a failure). The short buffer is a view of a full-size one,
    so in a release build the stray write would still land in owned memory."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    a = np.ones((2, 20_000))  # rows longer than one 16384-element block: two partials each
    np.testing.assert_array_equal(_reduce.sum_axes(a, (1,), False, 1), [20_000.0, 20_000.0])
    assert seen == []

    full = _reduce._partials
    monkeypatch.setattr(_reduce, "_partials", lambda *args: full(*args)[:-1])
    _reduce.sum_axes(a, (1,), False, 1)
    assert len(seen) == 1, seen
    assert seen[0].exc_type is IndexError
    assert "Out of bounds on buffer access" in str(seen[0].exc_value)
    assert "_sum_stage" in repr(seen[0].object)
