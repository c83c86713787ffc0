"""Glue between functional.batch_norm and the fused BatchNorm Functions."""
import numpy as np

from ..functions import BatchNormEval, BatchNormTrain
from ..tensor import Tensor


def _affine(weight, bias, c, dtype):
    # Affine off is gamma = 1, beta = 0: constants keep the Function's inputs uniform.
    if weight is None:
        weight = Tensor._make(np.ones(c, dtype=dtype), None, False)
    if bias is None:
        bias = Tensor._make(np.zeros(c, dtype=dtype), None, False)
    return weight, bias


def _stat(t, dtype):
    """The running-stat array in the kernel's dtype (a copy when the module's differs)."""
    if t is None:
        return None
    return t.data if t.data.dtype == dtype else t.data.astype(dtype)


def batch_norm_train_fused(x, weight, bias, running_mean, running_var, momentum, eps):
    weight, bias = _affine(weight, bias, x.shape[1], x.dtype)
    rm, rv = _stat(running_mean, x.dtype), _stat(running_var, x.dtype)
    y = BatchNormTrain.apply(x, weight, bias, running_mean=rm, running_var=rv, momentum=momentum, eps=eps)
    if rm is not None and rm is not running_mean.data:  # the kernel updated a converted copy
        running_mean.data[...] = rm
        running_var.data[...] = rv
    return y


def batch_norm_eval_fused(x, weight, bias, running_mean, running_var, eps):
    weight, bias = _affine(weight, bias, x.shape[1], x.dtype)
    return BatchNormEval.apply(x, weight, bias, running_mean=_stat(running_mean, x.dtype),
                               running_var=_stat(running_var, x.dtype), eps=eps)
