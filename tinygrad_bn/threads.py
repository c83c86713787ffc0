"""How many OpenMP threads the kernels use.

Every kernel takes its thread count as an argument (no kernel asks OpenMP for a
default), so this module is the single place that decides it:
  1. `set_num_threads(n)` when called;
  2. otherwise the `OMP_NUM_THREADS` environment variable;
  3. otherwise the CPUs this process may really use: its affinity mask, capped by
     the cgroup CPU quota (in a container OpenMP would otherwise see the host's
     cores and oversubscribe).
"""
import math
import os

from ._C import parallel as _parallel

# Below this many elements a kernel runs on one thread: waking a sleeping OpenMP team
# costs more than the work. Measured on 2 cores with sleeping workers (float32 add,
# 1 vs 2 threads): 12.6 vs 21 us at 64k elements, 127 vs 45 us at 256k.
PARALLEL_MIN_ELEMENTS = 131072
# Reductions (sum, max, min, argmax) start later: they wake the team twice (block
# partials, then their combine) and do less work per element. Measured the same way
# (float32, 1 vs 2 threads): column sums of (128, 1024) 29 vs 69 us, (256, 1024) 60 vs
# 94, (384, 1024) 93 vs 84, (512, 1024) 102 vs 89; row sums 15 vs 38, 39 vs 47, 49 vs
# 48, 70 vs 62; column max 21 vs 49 ... 66 vs 71, 86 vs 78.
REDUCE_PARALLEL_MIN_ELEMENTS = 393216
MAX_THREADS = _parallel.MAX_THREADS  # the most any kernel accepts (src_cy/threadcheck.pxd)


def _cgroup_cpu_quota():
    """CPUs allowed by the cgroup quota (v2 cpu.max or v1 cfs files), or None."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period = int(f.read())
        if quota > 0 and period > 0:
            return max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        pass
    return None


def available_cpus():
    """CPUs this process can use: affinity mask capped by the cgroup quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return min(n, quota) if quota else n


def _default_threads():
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env:
        try:
            return min(max(1, int(env)), MAX_THREADS)
        except ValueError:
            pass
    return available_cpus()


_num_threads = _default_threads() if _parallel.openmp_enabled() else 1


def set_num_threads(n):
    """Use `n` threads in every kernel from now on.

    Raises TypeError if n is not an int, ValueError unless 1 <= n <= MAX_THREADS
    (4096: libgomp itself crashes near 10^5 threads). Without OpenMP the value is
    recorded but kernels still run on one thread.
    """
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads expects an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"set_num_threads expects n >= 1, got {n}")
    if n > MAX_THREADS:
        raise ValueError(f"set_num_threads expects n <= {MAX_THREADS}, got {n}")
    _num_threads = n if _parallel.openmp_enabled() else 1


def get_num_threads():
    """The thread count kernels use (always 1 when built without OpenMP)."""
    return _num_threads


def threads_for(n_elements, min_elements=None):
    """Thread count for a kernel touching `n_elements`: 1 below `min_elements`
    (default PARALLEL_MIN_ELEMENTS), else get_num_threads()."""
    limit = PARALLEL_MIN_ELEMENTS if min_elements is None else min_elements
    return 1 if n_elements < limit else _num_threads
