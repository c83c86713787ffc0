"""tinygrad_bn.allocator: freed array memory stays mapped (glibc only), and the switch works."""
import os
import platform
import subprocess
import sys
import textwrap

import pytest

import tinygrad_bn as tb
from tinygrad_bn import allocator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A child allocates, touches and frees a 24 MiB array (above glibc's default 128 KiB mmap
# threshold, below our 32 MiB), then reports how much of it is still resident.
CHILD = textwrap.dedent("""
    import numpy as np
    import tinygrad_bn as tb

    def rss_kib():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    before = rss_kib()
    a = np.ones(6 << 20, dtype=np.float32)   # 24 MiB, every page touched
    during = rss_kib()
    del a
    after = rss_kib()
    print((after - before) / (during - before))
""")


def _kept_fraction(**env):
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT, **env}, timeout=120)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="malloc tuning applies to glibc only")
def test_tuning_is_on_by_default_and_reported():
    assert allocator.status is True
    assert tb.config.config()["malloc_tuning"] == "on"


@pytest.mark.skipif(not GLIBC, reason="malloc tuning applies to glibc only")
def test_freed_buffer_stays_resident_only_with_tuning():
    """With the tuning a freed 24 MiB buffer stays mapped (the next step reuses it without
    page faults); with TB_MALLOC_TUNING=0 glibc unmaps it at once."""
    assert _kept_fraction() > 0.9
    assert _kept_fraction(TB_MALLOC_TUNING="0") < 0.1


def test_switch_off_is_reported():
    out = subprocess.run([sys.executable, "-c", "import tinygrad_bn as tb; print(tb.config.config()['malloc_tuning'])"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ROOT, "TB_MALLOC_TUNING": "0"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "off (TB_MALLOC_TUNING=0)"
