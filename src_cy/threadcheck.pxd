# The thread-count check every kernel wrapper runs before its nogil code (one copy for
# all src_cy/ files; tinygrad_bn.threads.set_num_threads applies the same bound).

cdef enum:
    # libgomp itself crashes (SIGSEGV) when asked for ~10^5 threads; 4096 is far above any
    # machine this runs on and far below that.
    MAX_THREADS = 4096


cdef inline int check_threads(object n, str name) except -1:
    """n as a C int: TypeError unless an integer (bool is not one), ValueError unless
    1 <= n <= MAX_THREADS. The message names the argument and the value."""
    if type(n) is int and 1 <= n <= MAX_THREADS:
        # NOTE: every kernel call passes here; a plain int in range (the wrappers' own
        # counts) skips the general checks, which cost about 1 us per call on tiny ops
        return <int>n
    if isinstance(n, bool) or not hasattr(n, "__index__"):
        raise TypeError(f"{name} must be an int, got {type(n).__name__}")
    try:
        v = n.__index__()
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(n).__name__}") from None
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")
    if v > MAX_THREADS:
        raise ValueError(f"{name} must be <= {MAX_THREADS}, got {v}")
    return <int>v
