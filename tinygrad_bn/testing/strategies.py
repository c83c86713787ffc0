"""Hypothesis strategies for tensor tests: shapes, arrays, Tensors, batch-norm inputs.

Every strategy is bounded (small sides, finite values of bounded magnitude) so a
property test stays fast. Requires Hypothesis (the `test` extra); importing
`tinygrad_bn` does not.

    from hypothesis import given
    from tinygrad_bn.testing import strategies as tbst

    @given(tbst.tensors(np.float64, tbst.shapes(max_side=4), requires_grad=True))
    def test_my_op(x): ...
"""
import math

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_bn as tb

__all__ = ["shapes", "broadcastable_shapes", "arrays", "tensors", "batch_norm_inputs"]


def shapes(min_dims=0, max_dims=4, min_side=1, max_side=6):
    """Strategy for shape tuples with min_dims..max_dims dimensions of min_side..max_side each."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, min_side=1, max_side=6):
    """Strategy for a tuple of `num_shapes` shapes that broadcast together under numpy rules.

    Shapes may differ in length and have size-1 dimensions where the others do not.
    """
    return hnp.mutually_broadcastable_shapes(
        num_shapes=num_shapes, min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side
    ).map(lambda result: result.input_shapes)


def _float_bounds(dtype, lo, hi):
    """lo, hi rounded inwards to values the dtype represents exactly (Hypothesis insists)."""
    lo_c, hi_c = dtype.type(lo), dtype.type(hi)
    if lo_c < lo:
        lo_c = np.nextafter(lo_c, dtype.type(np.inf))
    if hi_c > hi:
        hi_c = np.nextafter(hi_c, dtype.type(-np.inf))
    return float(lo_c), float(hi_c)


def _elements(dtype, min_value, max_value):
    if dtype == np.bool_:
        return st.booleans()
    if np.issubdtype(dtype, np.integer):
        return st.integers(math.ceil(min_value), math.floor(max_value))
    if np.issubdtype(dtype, np.floating):
        lo, hi = _float_bounds(dtype, min_value, max_value)
        return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False,
                         width=8 * dtype.itemsize)
    raise TypeError(f"arrays: unsupported dtype {dtype}, expected a float, integer or bool dtype")


def arrays(dtype, shape, min_value=-10, max_value=10):
    """Strategy for C-contiguous numpy arrays of `dtype` with finite values in [min_value, max_value].

    dtype: numpy float (float32/float64; no NaN, inf or subnormals), integer or
        bool dtype. shape: a tuple, an int, or a strategy for shapes.
    Values may repeat (Hypothesis likes sparse arrays); draw your own data if a
    test needs distinct values.
    """
    dtype = np.dtype(dtype)
    # NOTE: not np.ascontiguousarray, which turns a 0-d array into shape (1,).
    return hnp.arrays(dtype, shape, elements=_elements(dtype, min_value, max_value)).map(
        lambda a: np.array(a, order="C", copy=None)
    )


@st.composite
def tensors(draw, dtype, shape_strategy, requires_grad=False, min_value=-10, max_value=10):
    """Strategy for tb.Tensors of `dtype` (kept exactly) whose data is drawn by `arrays`.

    shape_strategy: a strategy for shapes, or a fixed shape tuple.
    requires_grad: only for float dtypes.
    """
    data = draw(arrays(dtype, shape_strategy, min_value=min_value, max_value=max_value))
    return tb.Tensor(data, requires_grad=requires_grad, dtype=data.dtype)


def _real(lo, hi):
    return st.floats(lo, hi, allow_subnormal=False)


@st.composite
def batch_norm_inputs(draw, ndims=(2, 3, 4), dtype=np.float64, max_batch=4, max_channels=4, max_spatial=3,
                      min_scale=1e-3, max_scale=1e3, max_offset=10.0):
    """Strategy for (x, gamma, beta) numpy arrays of `dtype` to batch-normalise.

    x: (N, C), (N, C, L) or (N, C, H, W) (ndim drawn from `ndims`), with
       M = N * L (or N * H * W) >= 2 values per channel. Channel c is
       offset_c + scale_c * z with z standard normal, scale_c log-uniform in
       [min_scale, max_scale] and |offset_c| / scale_c <= max_offset (1e4 makes
       the float32 cancellation case of E[x^2] - E[x]^2).
    gamma, beta: (C,); gamma includes 0 and negative values.
    """
    dtype = np.dtype(dtype)
    if max_batch < 2:
        raise ValueError(f"batch_norm_inputs: max_batch must be >= 2, got {max_batch}")
    ndim = draw(st.sampled_from(tuple(ndims)))
    if ndim not in (2, 3, 4):
        raise ValueError(f"batch_norm_inputs: ndims must be from (2, 3, 4), got {ndim}")
    n = draw(st.integers(1, max_batch))
    c = draw(st.integers(1, max_channels))
    spatial = tuple(draw(st.lists(st.integers(1, max_spatial), min_size=ndim - 2, max_size=ndim - 2)))
    if n * math.prod(spatial) < 2:
        n = 2  # one value per channel: the batch variance is undefined
    log_scale = st.floats(math.log10(min_scale), math.log10(max_scale))
    scale = 10.0 ** np.array(draw(st.lists(log_scale, min_size=c, max_size=c)))
    offset = np.array(draw(st.lists(_real(-max_offset, max_offset), min_size=c, max_size=c))) * scale
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    z = rng.standard_normal((n, c) + spatial)
    per_channel = (1, c) + (1,) * len(spatial)
    x = offset.reshape(per_channel) + scale.reshape(per_channel) * z
    gamma_value = st.one_of(st.just(0.0), st.just(-1.0), _real(-2.0, 2.0))
    gamma = np.array(draw(st.lists(gamma_value, min_size=c, max_size=c)))
    beta = np.array(draw(st.lists(_real(-2.0, 2.0), min_size=c, max_size=c)))
    return x.astype(dtype), gamma.astype(dtype), beta.astype(dtype)
