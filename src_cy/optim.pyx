# cython: language_level=3
"""Fused optimiser updates: one pass over a parameter instead of numpy's five or six.

sgd_step applies torch.optim.SGD's update to one parameter in place, element by
element, with the operations in the order (and the rounding) of the numpy expressions
in tinygrad_bn/optim/sgd.py, which follow torch's formulas:

    g = g + weight_decay * p                       (when weight_decay != 0)
    b = g                                          (first step, when momentum != 0)
    b = b * momentum + (1 - dampening) * g         (later steps)
    g = g + momentum * b   if nesterov   else   g = b
    p = p + (-lr) * g

Scalars are rounded to the parameter's dtype first, as numpy does with a Python float
times a float32 array. This file is compiled with -ffp-contract=off (setup.py): a fused
multiply-add would round once where numpy rounds twice. Elements are independent, so
the result does not depend on the thread count.
"""
cimport numpy as cnp
from cython.parallel cimport prange

import numpy as np

from tb_types cimport idx_t, real
from threadcheck cimport check_threads

cnp.import_array()


cdef void _sgd(real* p, const real* g, real* b, idx_t n, real neg_lr, real momentum,
               real keep, real weight_decay, bint first, bint nesterov, int nthreads) noexcept nogil:
    # keep = 1 - dampening; b is NULL without momentum
    cdef idx_t i
    cdef real gi, bi
    for i in prange(n, num_threads=nthreads, schedule='static'):
        gi = g[i]
        if weight_decay != 0:
            gi = gi + weight_decay * p[i]
        if b != NULL:
            if first:
                bi = gi
            else:
                bi = b[i] * momentum + keep * gi
            b[i] = bi
            gi = gi + momentum * bi if nesterov else bi
        p[i] = p[i] + neg_lr * gi


def _check(name, a, like):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != like.dtype or a.shape != like.shape:
        raise ValueError(f"{name}: expected {like.dtype} {like.shape} like the parameter, got {a.dtype} {a.shape}")
    if not (a.flags.c_contiguous and a.flags.aligned):
        raise ValueError(f"{name}: expected an aligned C-contiguous array, got strides {a.strides}")


def sgd_step(param, grad, momentum_buffer, double lr, double momentum, double dampening,
             double weight_decay, bint nesterov, bint first, nthreads=1):
    """SGD update of `param` in place (formulas above); `momentum_buffer` (an array like
    param, or None when momentum == 0) is written in place too. `first`: the buffer
    holds no state yet and becomes the (weight-decayed) gradient.

    param: C-contiguous writable float32/float64 array; grad: same dtype and shape.
    Raises TypeError / ValueError before any write.
    """
    if not isinstance(param, np.ndarray) or param.dtype not in (np.float32, np.float64):
        raise TypeError(f"param: expected a float32 or float64 numpy.ndarray, got "
                        f"{getattr(param, 'dtype', type(param).__name__)}")
    if not (param.flags.c_contiguous and param.flags.aligned and param.flags.writeable):
        raise ValueError("param: expected an aligned, writable C-contiguous array")
    _check("grad", grad, param)
    if (momentum_buffer is None) != (momentum == 0):
        raise ValueError("momentum_buffer: expected an array exactly when momentum != 0")
    if momentum_buffer is not None:
        _check("momentum_buffer", momentum_buffer, param)
        if not momentum_buffer.flags.writeable:
            raise ValueError("momentum_buffer: expected a writable array")
    cdef int nt = check_threads(nthreads, "nthreads")
    cdef idx_t n = param.size
    cdef void* pp = cnp.PyArray_DATA(<cnp.ndarray>param)
    cdef void* gp = cnp.PyArray_DATA(<cnp.ndarray>grad)
    cdef void* bp = NULL if momentum_buffer is None else cnp.PyArray_DATA(<cnp.ndarray>momentum_buffer)
    with nogil:
        if cnp.PyArray_TYPE(<cnp.ndarray>param) == cnp.NPY_FLOAT32:
            _sgd(<float*>pp, <const float*>gp, <float*>bp, n, <float>(-lr), <float>momentum,
                 <float>(1.0 - dampening), <float>weight_decay, first, nesterov, nt)
        else:
            _sgd(<double*>pp, <const double*>gp, <double*>bp, n, -lr, momentum, 1.0 - dampening,
                 weight_decay, first, nesterov, nt)
