"""Keep freed array memory in the process instead of handing it back to the OS.

Every op returns a new numpy array, and a training step allocates and frees the same
multi-megabyte buffers again and again. With glibc's defaults a freed block above the
trim threshold (by default twice the largest freed mmap'd block, a few MiB) goes back
to the kernel, and the next step page-faults and zero-fills it anew: in the digits CNN
step that was 62 ms instead of 45 ms at 1 thread (bench/train.py's cnn net), and it made
1-thread BatchNorm timings jump between runs.

At import, on glibc only, this raises two malloc parameters (process-wide, like the
MALLOC_*_ environment variables that set them):
  M_MMAP_THRESHOLD = 32 MiB   blocks up to 32 MiB come from the heap, not from mmap
  M_TRIM_THRESHOLD = 256 MiB  up to 256 MiB of free heap top stays mapped
Memory is still returned once more than 256 MiB is free, and blocks above 32 MiB are
still mmap'd. Set TB_MALLOC_TUNING=0 (before importing tinygrad_bn) to keep glibc's
defaults; the glibc MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ variables, when
set, also take precedence.
"""
import ctypes
import ctypes.util
import os
import platform

MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20
_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
_M_MMAP_THRESHOLD = -3

# what tune() did: None (not tried), True (applied) or a string saying why not
status = None


def tune():
    """Apply the two malloc parameters above once; returns True when applied, else
    a short reason (not glibc, switched off, already set by the user, mallopt failed).
    Never raises."""
    global status
    if status is not None:
        return status
    if os.environ.get("TB_MALLOC_TUNING", "1") in ("0", ""):
        status = "off (TB_MALLOC_TUNING=0)"
    elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        status = "off (not glibc)"
    elif "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        status = "off (MALLOC_*_THRESHOLD_ set by the user)"
    else:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            ok = ok and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            status = True if ok else "off (mallopt refused)"
        except (OSError, AttributeError):
            status = "off (no mallopt)"
    return status


tune()
