# cython: language_level=3
"""Elementwise kernels: binary arithmetic and comparisons with numpy broadcasting,
unary maps, scalar power, clip and where.

Inputs are C-contiguous float32/float64 ndarrays of any rank (the bool condition
of `where` excepted); every wrapper checks them and allocates a new C-contiguous
output, then runs a `noexcept nogil` loop on raw pointers.

Broadcasting never materialises an expanded operand. The output is walked as
rows x inner (a `Plan`): inside a row each operand steps by 0 (broadcast) or 1
(contiguous), so the row loops are plain vectorisable loops; between rows each
operand jumps by its own element strides. Adjacent dimensions that are contiguous
for every operand are merged first, so equal shapes are one row and
(4096, 1024) + (1024,) is 4096 rows of 1024 with b restarting at 0.

Threads split the flat output into one contiguous range per thread, so every
element is computed by the same instructions whatever the thread count.
"""
cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport INFINITY, exp, fabs, fabsf, log, logf, pow, powf, sqrt, sqrtf, tanh

import numpy as np

from fastmath cimport tb_expf_shifted, tb_sigmoidf_array, tb_tanhf_array
from tb_types cimport idx_t, real
from floatcheck cimport check_float_array
from threadcheck cimport check_threads

cnp.import_array()

ctypedef unsigned char npy_bool_t

cdef enum:
    MAXDIMS = 64   # numpy's NPY_MAXDIMS
    MAXOPS = 3     # where(cond, a, b) has the most operands

# fmt: off
cdef enum:
    ADD, SUB, MUL, DIV, POW, MAXIMUM, MINIMUM                 # binary
    LT, LE, GT, GE, EQ, NE                                    # compare
    NEG, EXP, LOG, SQRT, RELU, SIGMOID, TANH, ABS             # unary
    RELU_GRAD, SIGMOID_GRAD, TANH_GRAD                        # unary backward

_BINARY = {"add": ADD, "sub": SUB, "mul": MUL, "div": DIV, "pow": POW,
           "maximum": MAXIMUM, "minimum": MINIMUM}
_COMPARE = {"lt": LT, "le": LE, "gt": GT, "ge": GE, "eq": EQ, "ne": NE}
_UNARY = {"neg": NEG, "exp": EXP, "log": LOG, "sqrt": SQRT, "relu": RELU,
          "sigmoid": SIGMOID, "tanh": TANH, "abs": ABS}
_UNARY_BACKWARD = {"relu": RELU_GRAD, "sigmoid": SIGMOID_GRAD, "tanh": TANH_GRAD}
# fmt: on


# ---------------------------------------------------------------- broadcasting plan

cdef struct Plan:
    # Output (C-contiguous, `size` elements) = rows x `inner`. Operand k's element
    # offset at the start of row r is sum_d idx_d(r) * stride[k][d] over the `nd`
    # outer dims (shape[d]); inside a row it advances by step[k] in {0, 1}.
    int nops
    int nd
    idx_t size
    idx_t inner
    idx_t shape[MAXDIMS]
    idx_t stride[MAXOPS][MAXDIMS]
    idx_t step[MAXOPS]


cdef struct Cursor:
    # One thread's position: the outer multi-index and each operand's row offset.
    idx_t idx[MAXDIMS]
    idx_t off[MAXOPS]


# the most elements an output may have: its bytes (8 per element at most) must fit in intp
cdef idx_t MAX_ELEMENTS = <idx_t>(np.iinfo(np.intp).max // 8)


cdef struct Shapes:
    # The operands' shapes as C arrays: an ndarray's own dims (no tuple of Python ints is
    # built: that cost a fifth of a tiny op's time), or a tuple's ints copied to buf.
    int nops
    int nd[MAXOPS]
    const cnp.npy_intp* dims[MAXOPS]
    cnp.npy_intp buf[MAXOPS][MAXDIMS]


cdef inline void _add_array_shape(Shapes* s, cnp.ndarray a) noexcept:
    s.nd[s.nops] = cnp.PyArray_NDIM(a)
    s.dims[s.nops] = cnp.PyArray_DIMS(a)
    s.nops += 1


cdef int _add_tuple_shape(Shapes* s, tuple shape) except -1:
    """Append a shape given as a tuple of ints. ValueError when it has more than
    MAXDIMS entries or a negative one."""
    cdef int k = s.nops, d, n = len(shape)
    if n > MAXDIMS:
        raise ValueError(f"expected at most {MAXDIMS} dimensions, got {n}")
    for d in range(n):
        try:
            s.buf[k][d] = shape[d]
        except OverflowError:
            raise ValueError(f"expected dimensions below 2**63, got shape {shape}") from None
        if s.buf[k][d] < 0:
            raise ValueError(f"expected non-negative dimensions, got shape {shape}")
    s.nd[k] = n
    s.dims[k] = s.buf[k]
    s.nops += 1
    return 0


cdef str _shapes_text(const Shapes* s):
    return " ".join([str(tuple([s.dims[k][d] for d in range(s.nd[k])])) for k in range(s.nops)])


cdef extern from *:
    """
    /* r = a * b; nonzero when that overflows (then r is meaningless). */
    static inline int tb_mul_overflows(Py_ssize_t a, Py_ssize_t b, Py_ssize_t *r) {
        return __builtin_mul_overflow(a, b, r);
    }
    """
    bint tb_mul_overflows(idx_t a, idx_t b, idx_t* r) noexcept nogil


cdef int _plan(Plan* p, const Shapes* shapes, cnp.npy_intp* dims) except -1:
    """Broadcast the operand shapes by numpy's rules into `p`; write the output shape
    to dims and return its rank. ValueError when the shapes do not broadcast."""
    cdef int nops = shapes.nops, nd = 0, k, d, m = 0, off
    cdef idx_t sz, acc, total = 1
    cdef bint contiguous, too_big = False
    cdef idx_t full_stride[MAXOPS][MAXDIMS]
    for k in range(nops):
        nd = max(nd, shapes.nd[k])
    for d in range(nd):
        dims[d] = 1
    # element strides of each contiguous operand, right-aligned, 0 where it broadcasts
    for k in range(nops):
        off = nd - shapes.nd[k]
        acc = 1
        for d in range(nd - 1, -1, -1):
            full_stride[k][d] = 0
            if d < off:
                continue
            sz = shapes.dims[k][d - off]
            if sz != 1:
                full_stride[k][d] = acc
                if dims[d] == 1:
                    dims[d] = sz
                elif dims[d] != sz:
                    raise ValueError("operands could not be broadcast together with shapes "
                                     + _shapes_text(shapes))
            acc *= sz
    # The output must be indexable: like numpy, the product of the non-zero sizes times
    # the item size (at most 8 bytes here) must fit in intp. The product is checked for
    # overflow as it grows (idx_t arithmetic below would wrap silently).
    for d in range(nd):
        if dims[d] != 0:
            too_big = too_big or tb_mul_overflows(total, dims[d], &total)
    if too_big or total > MAX_ELEMENTS:
        raise ValueError("operands with shapes " + _shapes_text(shapes)
                         + f" broadcast to shape {tuple([dims[d] for d in range(nd)])}, "
                         f"expected at most {MAX_ELEMENTS} elements")
    # drop size-1 dims, merge neighbours that are contiguous for every operand
    p.nops = nops
    p.size = 1
    for d in range(nd):
        sz = dims[d]
        p.size *= sz
        if sz == 1:
            continue
        contiguous = m > 0
        for k in range(nops):
            contiguous = contiguous and p.stride[k][m - 1] == full_stride[k][d] * sz
        if contiguous:
            p.shape[m - 1] *= sz
            for k in range(nops):
                p.stride[k][m - 1] = full_stride[k][d]
        else:
            p.shape[m] = sz
            for k in range(nops):
                p.stride[k][m] = full_stride[k][d]
            m += 1
    if m == 0:  # a single element: one row of one, every operand at offset 0
        p.shape[0] = 1
        for k in range(nops):
            p.stride[k][0] = 0
        m = 1
    p.nd = m - 1
    p.inner = p.shape[m - 1]
    for k in range(nops):
        p.step[k] = p.stride[k][m - 1]
    return nd


cdef inline void _seek(const Plan* p, Cursor* c, idx_t row) noexcept nogil:
    cdef int d, k
    for k in range(p.nops):
        c.off[k] = 0
    for d in range(p.nd - 1, -1, -1):
        c.idx[d] = row % p.shape[d]
        row = row // p.shape[d]
        for k in range(p.nops):
            c.off[k] += c.idx[d] * p.stride[k][d]


cdef inline void _next_row(const Plan* p, Cursor* c) noexcept nogil:
    # odometer: bump the last outer index, carry into earlier ones
    cdef int d = p.nd - 1, k
    while d >= 0:
        c.idx[d] += 1
        for k in range(p.nops):
            c.off[k] += p.stride[k][d]
        if c.idx[d] < p.shape[d]:
            return
        for k in range(p.nops):
            c.off[k] -= p.shape[d] * p.stride[k][d]
        c.idx[d] = 0
        d -= 1


cdef inline idx_t _chunk(idx_t size, int t, int nthreads) noexcept nogil:
    # start of thread t's range; multiples of 64 elements keep vector stores aligned
    if t >= nthreads:
        return size
    return (size * t // nthreads) // 64 * 64


# ---------------------------------------------------------------- scalar formulas

cdef inline real _maximum(real x, real y) noexcept nogil:
    # numpy's maximum: NaN in either operand gives NaN
    return x if (x >= y or x != x) else y


cdef inline real _minimum(real x, real y) noexcept nogil:
    return x if (x <= y or x != x) else y


cdef inline real _pow(real x, real y) noexcept nogil:
    if real is float:
        return powf(x, y)
    else:
        return pow(x, y)


cdef inline real _binop(int op, real x, real y) noexcept nogil:
    if op == ADD:
        return x + y
    elif op == SUB:
        return x - y
    elif op == MUL:
        return x * y
    elif op == DIV:
        return x / y
    elif op == POW:
        return _pow(x, y)
    elif op == MAXIMUM:
        return _maximum(x, y)
    else:
        return _minimum(x, y)


cdef inline npy_bool_t _cmpop(int op, real x, real y) noexcept nogil:
    if op == LT:
        return x < y
    elif op == LE:
        return x <= y
    elif op == GT:
        return x > y
    elif op == GE:
        return x >= y
    elif op == EQ:
        return x == y
    else:
        return x != y


# ---------------------------------------------------------------- binary

cdef inline void _binary_row(int op, const real* a, idx_t sa, const real* b, idx_t sb,
                             real* o, idx_t n) noexcept nogil:
    # o[i] = op(a[i * sa], b[i * sb]), one loop per (op, sa, sb) so each vectorises
    cdef idx_t i
    cdef real x, y
    if sa == 1 and sb == 1:
        if op == ADD:
            for i in range(n): o[i] = a[i] + b[i]
        elif op == SUB:
            for i in range(n): o[i] = a[i] - b[i]
        elif op == MUL:
            for i in range(n): o[i] = a[i] * b[i]
        elif op == DIV:
            for i in range(n): o[i] = a[i] / b[i]
        elif op == POW:
            for i in range(n): o[i] = _pow(a[i], b[i])
        elif op == MAXIMUM:
            for i in range(n): o[i] = _maximum(a[i], b[i])
        elif op == MINIMUM:
            for i in range(n): o[i] = _minimum(a[i], b[i])
    elif sa == 1:
        y = b[0]
        if op == ADD:
            for i in range(n): o[i] = a[i] + y
        elif op == SUB:
            for i in range(n): o[i] = a[i] - y
        elif op == MUL:
            for i in range(n): o[i] = a[i] * y
        elif op == DIV:
            for i in range(n): o[i] = a[i] / y
        elif op == POW:
            for i in range(n): o[i] = _pow(a[i], y)
        elif op == MAXIMUM:
            for i in range(n): o[i] = _maximum(a[i], y)
        elif op == MINIMUM:
            for i in range(n): o[i] = _minimum(a[i], y)
    elif sb == 1:
        x = a[0]
        if op == ADD:
            for i in range(n): o[i] = x + b[i]
        elif op == SUB:
            for i in range(n): o[i] = x - b[i]
        elif op == MUL:
            for i in range(n): o[i] = x * b[i]
        elif op == DIV:
            for i in range(n): o[i] = x / b[i]
        elif op == POW:
            for i in range(n): o[i] = _pow(x, b[i])
        elif op == MAXIMUM:
            for i in range(n): o[i] = _maximum(x, b[i])
        elif op == MINIMUM:
            for i in range(n): o[i] = _minimum(x, b[i])
    else:  # both broadcast along the row (only for a single-element output)
        x = _binop(op, a[0], b[0])
        for i in range(n): o[i] = x


cdef void _binary_range(int op, const real* a, const real* b, real* out, const Plan* p,
                        idx_t start, idx_t stop) noexcept nogil:
    """out[start:stop] of the flat output."""
    cdef Cursor c
    cdef idx_t pos = start, col, n
    if start >= stop:
        return
    _seek(p, &c, start // p.inner)
    col = start % p.inner
    while True:
        n = min(p.inner - col, stop - pos)
        _binary_row(op, a + c.off[0] + col * p.step[0], p.step[0],
                    b + c.off[1] + col * p.step[1], p.step[1], out + pos, n)
        pos += n
        if pos >= stop:
            break
        col = 0
        _next_row(p, &c)


cdef void _binary(int op, const real* a, const real* b, real* out, const Plan* p,
                  int nthreads) noexcept nogil:
    cdef int t
    if nthreads <= 1:
        _binary_range(op, a, b, out, p, 0, p.size)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule='static'):
        _binary_range(op, a, b, out, p, _chunk(p.size, t, nthreads), _chunk(p.size, t + 1, nthreads))


# ---------------------------------------------------------------- broadcast copy

cdef void _expand_range(const real* a, real* out, const Plan* p, idx_t start,
                        idx_t stop) noexcept nogil:
    """out[start:stop] of the flat output: out = a broadcast (a is operand 0 of p; the
    plan's operand 1 is the output's own shape and is never read)."""
    cdef Cursor c
    cdef idx_t pos = start, col, n, i, sa = p.step[0]
    cdef const real* src
    cdef real v
    if start >= stop:
        return
    _seek(p, &c, start // p.inner)
    col = start % p.inner
    while True:
        n = min(p.inner - col, stop - pos)
        src = a + c.off[0] + col * sa
        if sa == 1:
            for i in range(n): out[pos + i] = src[i]
        else:  # a is broadcast along the row
            v = src[0]
            for i in range(n): out[pos + i] = v
        pos += n
        if pos >= stop:
            break
        col = 0
        _next_row(p, &c)


cdef void _expand(const real* a, real* out, const Plan* p, int nthreads) noexcept nogil:
    cdef int t
    if nthreads <= 1:
        _expand_range(a, out, p, 0, p.size)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule='static'):
        _expand_range(a, out, p, _chunk(p.size, t, nthreads), _chunk(p.size, t + 1, nthreads))


# ---------------------------------------------------------------- compare

cdef inline void _compare_row(int op, const real* a, idx_t sa, const real* b, idx_t sb,
                              npy_bool_t* o, idx_t n) noexcept nogil:
    # o[i] = op(a[i * sa], b[i * sb]); NaN compares false except for ne, as in numpy
    cdef idx_t i
    cdef real x, y
    if sa == 1 and sb == 1:
        if op == LT:
            for i in range(n): o[i] = a[i] < b[i]
        elif op == LE:
            for i in range(n): o[i] = a[i] <= b[i]
        elif op == GT:
            for i in range(n): o[i] = a[i] > b[i]
        elif op == GE:
            for i in range(n): o[i] = a[i] >= b[i]
        elif op == EQ:
            for i in range(n): o[i] = a[i] == b[i]
        elif op == NE:
            for i in range(n): o[i] = a[i] != b[i]
    elif sa == 1:
        y = b[0]
        if op == LT:
            for i in range(n): o[i] = a[i] < y
        elif op == LE:
            for i in range(n): o[i] = a[i] <= y
        elif op == GT:
            for i in range(n): o[i] = a[i] > y
        elif op == GE:
            for i in range(n): o[i] = a[i] >= y
        elif op == EQ:
            for i in range(n): o[i] = a[i] == y
        elif op == NE:
            for i in range(n): o[i] = a[i] != y
    elif sb == 1:
        x = a[0]
        if op == LT:
            for i in range(n): o[i] = x < b[i]
        elif op == LE:
            for i in range(n): o[i] = x <= b[i]
        elif op == GT:
            for i in range(n): o[i] = x > b[i]
        elif op == GE:
            for i in range(n): o[i] = x >= b[i]
        elif op == EQ:
            for i in range(n): o[i] = x == b[i]
        elif op == NE:
            for i in range(n): o[i] = x != b[i]
    else:
        for i in range(n): o[i] = _cmpop(op, a[0], b[0])


cdef void _compare_range(int op, const real* a, const real* b, npy_bool_t* out, const Plan* p,
                         idx_t start, idx_t stop) noexcept nogil:
    cdef Cursor c
    cdef idx_t pos = start, col, n
    if start >= stop:
        return
    _seek(p, &c, start // p.inner)
    col = start % p.inner
    while True:
        n = min(p.inner - col, stop - pos)
        _compare_row(op, a + c.off[0] + col * p.step[0], p.step[0],
                     b + c.off[1] + col * p.step[1], p.step[1], out + pos, n)
        pos += n
        if pos >= stop:
            break
        col = 0
        _next_row(p, &c)


cdef void _compare(int op, const real* a, const real* b, npy_bool_t* out, const Plan* p,
                   int nthreads) noexcept nogil:
    cdef int t
    if nthreads <= 1:
        _compare_range(op, a, b, out, p, 0, p.size)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule='static'):
        _compare_range(op, a, b, out, p, _chunk(p.size, t, nthreads), _chunk(p.size, t + 1, nthreads))


# ---------------------------------------------------------------- where

cdef inline void _where_row(const npy_bool_t* c, idx_t sc, const real* a, idx_t sa,
                            const real* b, idx_t sb, real* o, idx_t n) noexcept nogil:
    # o[i] = a[i * sa] if c[i * sc] else b[i * sb]
    cdef idx_t i
    cdef real x, y
    if sc == 1 and sa == 1 and sb == 1:
        for i in range(n): o[i] = a[i] if c[i] else b[i]
    elif sc == 1 and sa == 1 and sb == 0:  # where(mask, x, 0)
        y = b[0]
        for i in range(n): o[i] = a[i] if c[i] else y
    elif sc == 1 and sa == 0 and sb == 1:
        x = a[0]
        for i in range(n): o[i] = x if c[i] else b[i]
    else:
        for i in range(n): o[i] = a[i * sa] if c[i * sc] else b[i * sb]


cdef void _where_range(const npy_bool_t* cond, const real* a, const real* b, real* out,
                       const Plan* p, idx_t start, idx_t stop) noexcept nogil:
    cdef Cursor c
    cdef idx_t pos = start, col, n
    if start >= stop:
        return
    _seek(p, &c, start // p.inner)
    col = start % p.inner
    while True:
        n = min(p.inner - col, stop - pos)
        _where_row(cond + c.off[0] + col * p.step[0], p.step[0],
                   a + c.off[1] + col * p.step[1], p.step[1],
                   b + c.off[2] + col * p.step[2], p.step[2], out + pos, n)
        pos += n
        if pos >= stop:
            break
        col = 0
        _next_row(p, &c)


cdef void _where(const npy_bool_t* cond, const real* a, const real* b, real* out, const Plan* p,
                 int nthreads) noexcept nogil:
    cdef int t
    if nthreads <= 1:
        _where_range(cond, a, b, out, p, 0, p.size)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule='static'):
        _where_range(cond, a, b, out, p, _chunk(p.size, t, nthreads), _chunk(p.size, t + 1, nthreads))


# ---------------------------------------------------------------- unary, pow_scalar, clip

cdef void _unary_range(int op, const real* a, const real* g, real* o, idx_t start,
                       idx_t stop) noexcept nogil:
    # forward ops: o = op(a) (g unused); *_GRAD: o = g * dz/dx from what the forward
    # saved (a: x for relu, z for sigmoid and tanh), in the order of functions.py's
    # Tensor formulas
    cdef idx_t i
    cdef real x, e
    cdef real zero = 0, one = 1  # typed: a literal 1 would make Cython compute in double
    if op == NEG:
        for i in range(start, stop): o[i] = -a[i]
    elif op == EXP:
        if real is float:
            tb_expf_shifted(a + start, 0.0, o + start, stop - start)
        else:
            for i in range(start, stop): o[i] = exp(a[i])
    elif op == LOG:
        if real is float:
            for i in range(start, stop): o[i] = logf(a[i])
        else:
            for i in range(start, stop): o[i] = log(a[i])
    elif op == SQRT:
        if real is float:
            for i in range(start, stop): o[i] = sqrtf(a[i])
        else:
            for i in range(start, stop): o[i] = sqrt(a[i])
    elif op == RELU:
        # relu(x) = maximum(x, 0): NaN stays NaN
        for i in range(start, stop): o[i] = _maximum(a[i], <real>0)
    elif op == SIGMOID:
        if real is float:
            tb_sigmoidf_array(a + start, o + start, stop - start)
        else:
            # sigmoid(x) = 1 / (1 + e^-x) = e^x / (1 + e^x); with e = exp(-|x|) <= 1
            # neither form overflows (same scheme as tb_sigmoidf)
            for i in range(start, stop):
                x = a[i]
                e = exp(-fabs(x))
                o[i] = (1.0 if x >= 0 else e) / (1.0 + e)
    elif op == TANH:
        if real is float:
            tb_tanhf_array(a + start, o + start, stop - start)
        else:
            for i in range(start, stop): o[i] = tanh(a[i])
    elif op == ABS:
        if real is float:
            for i in range(start, stop): o[i] = fabsf(a[i])
        else:
            for i in range(start, stop): o[i] = fabs(a[i])
    elif op == RELU_GRAD:
        # g where x > 0 else 0 (NaN x gives 0, as where(x > 0, g, 0))
        for i in range(start, stop): o[i] = g[i] if a[i] > zero else zero
    elif op == SIGMOID_GRAD:
        # g * z * (1 - z)
        for i in range(start, stop): o[i] = g[i] * a[i] * (one - a[i])
    elif op == TANH_GRAD:
        # g * (1 - z * z)
        for i in range(start, stop): o[i] = g[i] * (one - a[i] * a[i])


cdef void _unary(int op, const real* a, const real* g, real* o, idx_t size,
                 int nthreads) noexcept nogil:
    cdef int t
    if nthreads <= 1:
        _unary_range(op, a, g, o, 0, size)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule='static'):
        _unary_range(op, a, g, o, _chunk(size, t, nthreads), _chunk(size, t + 1, nthreads))


cdef void _pow_scalar_range(const real* a, real p, real* o, idx_t start, idx_t stop) noexcept nogil:
    # o = a ** p; x*x, 1/x and sqrt are correctly rounded, so those fast paths give
    # numpy's results exactly
    cdef idx_t i
    if p == 2:
        for i in range(start, stop): o[i] = a[i] * a[i]
    elif p == 1:
        for i in range(start, stop): o[i] = a[i]
    elif p == 0:
        for i in range(start, stop): o[i] = 1  # pow(x, 0) = 1 even for NaN
    elif p == -1:
        for i in range(start, stop): o[i] = 1 / a[i]
    elif p == 0.5:
        # NOTE: sqrt, as numpy's power and torch do: differs from C pow only at -0
        # (-0 vs +0) and -inf (NaN vs +inf)
        if real is float:
            for i in range(start, stop): o[i] = sqrtf(a[i])
        else:
            for i in range(start, stop): o[i] = sqrt(a[i])
    else:
        for i in range(start, stop): o[i] = _pow(a[i], p)


cdef void _pow_scalar(const real* a, real p, real* o, idx_t size, int nthreads) noexcept nogil:
    cdef int t
    if nthreads <= 1:
        _pow_scalar_range(a, p, o, 0, size)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule='static'):
        _pow_scalar_range(a, p, o, _chunk(size, t, nthreads), _chunk(size, t + 1, nthreads))


cdef void _clip_range(const real* a, real lo, real hi, real* o, idx_t start, idx_t stop) noexcept nogil:
    # o = minimum(maximum(a, lo), hi), numpy's clip: NaN propagates, lo > hi gives hi
    cdef idx_t i
    for i in range(start, stop): o[i] = _minimum(_maximum(a[i], lo), hi)


cdef void _clip(const real* a, real lo, real hi, real* o, idx_t size, int nthreads) noexcept nogil:
    cdef int t
    if nthreads <= 1:
        _clip_range(a, lo, hi, o, 0, size)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule='static'):
        _clip_range(a, lo, hi, o, _chunk(size, t, nthreads), _chunk(size, t + 1, nthreads))


# ---------------------------------------------------------------- Python wrappers

cdef int _check_pair(object a, object b) except -1:
    cdef int ta = check_float_array(a, "a"), tb = check_float_array(b, "b")
    if ta != tb:
        raise TypeError(f"a and b: expected the same dtype, got {a.dtype} and {b.dtype}")
    return ta


cdef int _op_code(dict table, str op, str kind) except -1:
    code = table.get(op)
    if code is None:
        raise ValueError(f"unknown {kind} op {op!r}; expected one of {', '.join(table)}")
    return code


def broadcast_size(*shapes):
    """Number of elements in the broadcast of `shapes` (tuples of ints, at most 3).

    Raises ValueError when the shapes do not broadcast by numpy's rules.
    """
    cdef Plan p
    cdef Shapes sh
    cdef cnp.npy_intp dims[MAXDIMS]
    if not 1 <= len(shapes) <= MAXOPS:
        raise ValueError(f"expected 1 to {MAXOPS} shapes, got {len(shapes)}")
    sh.nops = 0
    for s in shapes:
        _add_tuple_shape(&sh, tuple(s))
    _plan(&p, &sh, dims)
    return p.size


def binary(str op, a, b, int nthreads=1):
    """out = op(a, b) with numpy broadcasting.

    Parameters
    ----------
    op : str
        add, sub, mul, div, pow, maximum or minimum (maximum/minimum propagate NaN).
    a, b : ndarray
        C-contiguous, both float32 or both float64; shapes broadcast (either may be 0-d).
    nthreads : int
        OpenMP threads (>= 1), decided by the caller.

    Returns
    -------
    ndarray
        New C-contiguous array of the broadcast shape and the inputs' dtype.
    """
    cdef int code = _op_code(_BINARY, op, "binary")
    cdef int typenum = _check_pair(a, b)
    check_threads(nthreads, "nthreads")
    cdef Plan p
    cdef Shapes sh
    cdef cnp.npy_intp dims[MAXDIMS]
    sh.nops = 0
    _add_array_shape(&sh, a)
    _add_array_shape(&sh, b)
    cdef int nd = _plan(&p, &sh, dims)
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(nd, dims, typenum, 0)
    cdef void* pa = cnp.PyArray_DATA(<cnp.ndarray>a)
    cdef void* pb = cnp.PyArray_DATA(<cnp.ndarray>b)
    cdef void* po = cnp.PyArray_DATA(out)
    if p.size == 0:
        return out
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _binary(code, <const float*>pa, <const float*>pb, <float*>po, &p, nthreads)
        else:
            _binary(code, <const double*>pa, <const double*>pb, <double*>po, &p, nthreads)
    return out


def expand(a, tuple shape, int nthreads=1):
    """A new C-contiguous array of `shape` holding `a` broadcast to it (numpy's rules).

    Parameters
    ----------
    a : ndarray, C-contiguous float32 or float64
    shape : tuple of int, a shape `a` broadcasts to (the result has exactly this shape)
    nthreads : int, OpenMP threads (>= 1)

    Raises TypeError for a wrong dtype, ValueError when a does not broadcast to shape.
    """
    cdef int typenum = check_float_array(a, "a")
    check_threads(nthreads, "nthreads")
    cdef Plan p
    cdef Shapes sh
    cdef cnp.npy_intp dims[MAXDIMS]
    sh.nops = 0
    _add_array_shape(&sh, a)
    _add_tuple_shape(&sh, shape)
    cdef int nd = _plan(&p, &sh, dims), d
    cdef bint same = nd == sh.nd[1]
    for d in range(nd if same else 0):
        same = same and dims[d] == sh.buf[1][d]
    if not same:
        raise ValueError(f"expand: expected a shape that {a.shape} broadcasts to, got {shape}")
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(nd, dims, typenum, 0)
    cdef void* pa = cnp.PyArray_DATA(<cnp.ndarray>a)
    cdef void* po = cnp.PyArray_DATA(out)
    if p.size == 0:
        return out
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _expand(<const float*>pa, <float*>po, &p, nthreads)
        else:
            _expand(<const double*>pa, <double*>po, &p, nthreads)
    return out


def compare(str op, a, b, int nthreads=1):
    """Bool array op(a, b) with numpy broadcasting.

    Parameters
    ----------
    op : str
        lt, le, gt, ge, eq or ne (NaN compares unequal to everything, as in numpy).
    a, b : ndarray
        C-contiguous, both float32 or both float64; shapes broadcast.
    nthreads : int
        OpenMP threads (>= 1).

    Returns
    -------
    ndarray of bool, C-contiguous, the broadcast shape.
    """
    cdef int code = _op_code(_COMPARE, op, "compare")
    cdef int typenum = _check_pair(a, b)
    check_threads(nthreads, "nthreads")
    cdef Plan p
    cdef Shapes sh
    cdef cnp.npy_intp dims[MAXDIMS]
    sh.nops = 0
    _add_array_shape(&sh, a)
    _add_array_shape(&sh, b)
    cdef int nd = _plan(&p, &sh, dims)
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(nd, dims, cnp.NPY_BOOL, 0)
    cdef void* pa = cnp.PyArray_DATA(<cnp.ndarray>a)
    cdef void* pb = cnp.PyArray_DATA(<cnp.ndarray>b)
    cdef npy_bool_t* po = <npy_bool_t*>cnp.PyArray_DATA(out)
    if p.size == 0:
        return out
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _compare(code, <const float*>pa, <const float*>pb, po, &p, nthreads)
        else:
            _compare(code, <const double*>pa, <const double*>pb, po, &p, nthreads)
    return out


def where(cond, a, b, int nthreads=1):
    """out = a where cond else b, broadcasting all three.

    Parameters
    ----------
    cond : ndarray of bool, C-contiguous
    a, b : ndarray
        C-contiguous, both float32 or both float64.
    nthreads : int
        OpenMP threads (>= 1).

    Returns
    -------
    ndarray of the inputs' dtype and the broadcast shape of (cond, a, b).
    """
    if not isinstance(cond, np.ndarray):
        raise TypeError(f"cond: expected a numpy.ndarray, got {type(cond).__name__}")
    if cnp.PyArray_TYPE(<cnp.ndarray>cond) != cnp.NPY_BOOL:
        raise TypeError(f"cond: expected dtype bool, got {cond.dtype}")
    if not cnp.PyArray_ISCARRAY_RO(<cnp.ndarray>cond):
        raise ValueError(f"cond: expected a C-contiguous array, got shape {cond.shape} "
                         f"with strides {cond.strides}")
    cdef int typenum = _check_pair(a, b)
    check_threads(nthreads, "nthreads")
    cdef Plan p
    cdef Shapes sh
    cdef cnp.npy_intp dims[MAXDIMS]
    sh.nops = 0
    _add_array_shape(&sh, cond)
    _add_array_shape(&sh, a)
    _add_array_shape(&sh, b)
    cdef int nd = _plan(&p, &sh, dims)
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(nd, dims, typenum, 0)
    cdef const npy_bool_t* pc = <const npy_bool_t*>cnp.PyArray_DATA(<cnp.ndarray>cond)
    cdef void* pa = cnp.PyArray_DATA(<cnp.ndarray>a)
    cdef void* pb = cnp.PyArray_DATA(<cnp.ndarray>b)
    cdef void* po = cnp.PyArray_DATA(out)
    if p.size == 0:
        return out
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _where(pc, <const float*>pa, <const float*>pb, <float*>po, &p, nthreads)
        else:
            _where(pc, <const double*>pa, <const double*>pb, <double*>po, &p, nthreads)
    return out


def unary(str op, a, int nthreads=1):
    """out = op(a) elementwise.

    Parameters
    ----------
    op : str
        neg, exp, log, sqrt, relu, sigmoid, tanh or abs. float32 exp/sigmoid/tanh
        use the vectorised fastmath.h versions (about 1-2 ulp); float64 uses libm.
    a : ndarray
        C-contiguous float32 or float64.
    nthreads : int
        OpenMP threads (>= 1).

    Returns
    -------
    ndarray, new, same shape and dtype as a.
    """
    cdef int code = _op_code(_UNARY, op, "unary")
    cdef int typenum = check_float_array(a, "a")
    check_threads(nthreads, "nthreads")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(arr.ndim, cnp.PyArray_DIMS(arr), typenum, 0)
    cdef idx_t size = cnp.PyArray_SIZE(arr)
    cdef void* pa = cnp.PyArray_DATA(arr)
    cdef void* po = cnp.PyArray_DATA(out)
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _unary(code, <const float*>pa, NULL, <float*>po, size, nthreads)
        else:
            _unary(code, <const double*>pa, NULL, <double*>po, size, nthreads)
    return out


def unary_backward(str op, saved, g, int nthreads=1):
    """grad_x = g * dz/dx of a unary op in one pass, from what its forward saved.

    Parameters
    ----------
    op : str
        relu (saved = x: g where x > 0 else 0), sigmoid (saved = z: g * z * (1 - z)) or
        tanh (saved = z: g * (1 - z * z)).
    saved, g : ndarray
        C-contiguous, the same shape and the same dtype, float32 or float64.
    nthreads : int
        OpenMP threads (>= 1).

    Returns
    -------
    ndarray, new, same shape and dtype as g.

    Raises
    ------
    TypeError for a non-array or mismatched dtypes; ValueError for an unknown op,
    a non-contiguous array or different shapes.
    """
    cdef int code = _op_code(_UNARY_BACKWARD, op, "unary backward")
    cdef int typenum = check_float_array(saved, "saved")
    if check_float_array(g, "g") != typenum:
        raise TypeError(f"saved and g: expected the same dtype, got {saved.dtype} and {g.dtype}")
    if saved.shape != g.shape:
        raise ValueError(f"saved and g: expected the same shape, got {saved.shape} and {g.shape}")
    check_threads(nthreads, "nthreads")
    cdef cnp.ndarray garr = <cnp.ndarray>g
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(garr.ndim, cnp.PyArray_DIMS(garr), typenum, 0)
    cdef idx_t size = cnp.PyArray_SIZE(garr)
    cdef void* ps = cnp.PyArray_DATA(<cnp.ndarray>saved)
    cdef void* pg = cnp.PyArray_DATA(garr)
    cdef void* po = cnp.PyArray_DATA(out)
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _unary(code, <const float*>ps, <const float*>pg, <float*>po, size, nthreads)
        else:
            _unary(code, <const double*>ps, <const double*>pg, <double*>po, size, nthreads)
    return out


def pow_scalar(a, double p, int nthreads=1):
    """out = a ** p for a Python float p (cast to a's dtype first, as numpy does).

    Parameters
    ----------
    a : ndarray
        C-contiguous float32 or float64.
    p : float
    nthreads : int
        OpenMP threads (>= 1).

    Returns
    -------
    ndarray, new, same shape and dtype as a.
    """
    cdef int typenum = check_float_array(a, "a")
    check_threads(nthreads, "nthreads")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(arr.ndim, cnp.PyArray_DIMS(arr), typenum, 0)
    cdef idx_t size = cnp.PyArray_SIZE(arr)
    cdef void* pa = cnp.PyArray_DATA(arr)
    cdef void* po = cnp.PyArray_DATA(out)
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _pow_scalar(<const float*>pa, <float>p, <float*>po, size, nthreads)
        else:
            _pow_scalar(<const double*>pa, p, <double*>po, size, nthreads)
    return out


def clip(a, lo, hi, int nthreads=1):
    """out = minimum(maximum(a, lo), hi), numpy's clip.

    Parameters
    ----------
    a : ndarray
        C-contiguous float32 or float64.
    lo, hi : float or None
        None means no bound on that side. NaN in a stays NaN; lo > hi gives hi.
    nthreads : int
        OpenMP threads (>= 1).

    Returns
    -------
    ndarray, new, same shape and dtype as a.
    """
    cdef int typenum = check_float_array(a, "a")
    check_threads(nthreads, "nthreads")
    # NOTE: maximum(x, -inf) == x for every x (NaN, -inf and -0 included), so None is +-inf
    cdef double dlo = -INFINITY if lo is None else float(lo)
    cdef double dhi = INFINITY if hi is None else float(hi)
    cdef cnp.ndarray arr = <cnp.ndarray>a
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(arr.ndim, cnp.PyArray_DIMS(arr), typenum, 0)
    cdef idx_t size = cnp.PyArray_SIZE(arr)
    cdef void* pa = cnp.PyArray_DATA(arr)
    cdef void* po = cnp.PyArray_DATA(out)
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _clip(<const float*>pa, <float>dlo, <float>dhi, <float*>po, size, nthreads)
        else:
            _clip(<const double*>pa, dlo, dhi, <double*>po, size, nthreads)
    return out
