# Sliding-window index arithmetic shared by conv.pyx and pool.pyx.
from tb_types cimport idx_t


cdef inline idx_t _first_inside(idx_t start, idx_t step) noexcept nogil:
    """Smallest t >= 0 with start + t*step >= 0 (step >= 1)."""
    if start >= 0:
        return 0
    return (-start + step - 1) // step


cdef inline idx_t _end_inside(idx_t start, idx_t step, idx_t size, idx_t count) noexcept nogil:
    """Smallest t with start + t*step >= size, capped at count (step >= 1)."""
    cdef idx_t t
    if start >= size:
        return 0
    t = (size - start + step - 1) // step
    return t if t < count else count
