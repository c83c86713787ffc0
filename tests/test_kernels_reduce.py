"""Reduction and indexing kernels (src_cy/reduce.pyx, src_cy/index.pyx) against numpy.

Array level, through tinygrad_bn.kernels: sum / max / min / argmax over Hypothesis
shapes and axes, float32 accuracy of a long sum, bit-identical results for any thread
count, scatter_add against np.add.at, contiguous copies, and argument validation.
"""
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinygrad_bn import kernels
from tinygrad_bn.threads import get_num_threads, set_num_threads

EPS64 = float(np.finfo(np.float64).eps)
DTYPES = (np.float32, np.float64)


# --------------------------------------------------------------------------- strategies
@st.composite
def arrays_and_axes(draw, min_side=0, special=False):
    """(a, axes, keepdims): a C-contiguous float array of 1-4 dims, axes a sorted subset."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=min_side, max_side=5))
    width = 32 if dtype == np.float32 else 64
    elements = st.floats(-1e3, 1e3, width=width)
    if special:
        elements = elements | st.sampled_from([np.inf, -np.inf, np.nan, 0.0, -0.0])
    a = draw(hnp.arrays(dtype, shape, elements=elements))
    axes = tuple(sorted(draw(st.sets(st.integers(0, len(shape) - 1), min_size=1))))
    return a, axes, draw(st.booleans())


@st.composite
def arrays_with_ties(draw):
    """(a, axis): small-integer values so that maxima tie, sometimes with NaN."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6))
    elements = st.sampled_from([-1.0, 0.0, 1.0, 2.0]) | st.just(np.nan)
    a = draw(hnp.arrays(dtype, shape, elements=elements))
    return a, draw(st.none() | st.integers(0, len(shape) - 1))


@st.composite
def scatters(draw):
    """(shape, positions, values) with repeated positions, values of either dtype."""
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=5))
    size = int(np.prod(shape))
    n = draw(st.integers(0, 3 * size))
    positions = np.array(draw(st.lists(st.integers(0, size - 1), min_size=n, max_size=n)),
                         dtype=np.int64)
    dtype = draw(st.sampled_from(DTYPES))
    values = draw(hnp.arrays(dtype, (n,), elements=st.floats(-1e3, 1e3, width=32)))
    return shape, positions, values


# Shapes that cross the kernels' block sizes (16384-element row blocks; 64+ row blocks
# and 1024-column chunks when the kept trailing extent is > 1), with their axes.
# fmt: off
BLOCK_CASES = [
    ((40000,), (0,)),
    ((3, 40000), (1,)),
    ((3, 40000), (0, 1)),
    ((20000, 3), (0,)),
    ((2, 9000, 3), (1,)),
    ((300, 1100), (0,)),
    ((4, 300, 1100), (0, 1)),
    ((6, 5, 7000), (0, 2)),
    ((70, 4, 130), (0, 2)),
]
# fmt: on


@pytest.fixture
def restore_threads():
    n = get_num_threads()
    yield
    set_num_threads(n)


def _sum_tolerance(a, axes):
    """Bound on |sum - exact|: float64 accumulation plus one rounding to a's dtype."""
    abs_sum = np.abs(a.astype(np.float64)).sum(axis=axes)
    n = int(np.prod([a.shape[d] for d in axes]))
    return (np.finfo(a.dtype).eps + (n + 2) * EPS64) * abs_sum


# --------------------------------------------------------------------------- sum
@given(arrays_and_axes())
@example((np.zeros((0, 3), np.float32), (0,), False))  # sum over an empty set is 0
@example((np.zeros((2, 0), np.float64), (0, 1), True))
@example((np.ones((1, 1, 3), np.float32), (0, 1), False))  # only extent-1 axes reduced
def test_sum_matches_numpy_float64(case):
    a, axes, keepdims = case
    got = kernels.sum(a, axes, keepdims)
    want = a.astype(np.float64).sum(axis=axes, keepdims=keepdims)
    assert got.dtype == a.dtype and got.shape == want.shape and got.flags.c_contiguous
    tol = _sum_tolerance(a, axes).reshape(want.shape)
    assert np.all(np.abs(got - want) <= tol)


@given(arrays_and_axes(min_side=1, special=True))
def test_sum_propagates_nan_and_inf_like_numpy(case):
    a, axes, keepdims = case
    got = kernels.sum(a, axes, keepdims)
    with np.errstate(invalid="ignore"):  # inf + -inf
        want = a.astype(np.float64).sum(axis=axes, keepdims=keepdims)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(np.isposinf(got), np.isposinf(want))
    assert np.array_equal(np.isneginf(got), np.isneginf(want))


@pytest.mark.parametrize("shape, axes", BLOCK_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_across_block_boundaries_matches_numpy(shape, axes, dtype):
    a = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    got = kernels.sum(a, axes, False)
    want = a.astype(np.float64).sum(axis=axes)
    assert np.all(np.abs(got - want) <= _sum_tolerance(a, axes))


def test_sum_float32_mean_of_1e7_values_matches_float64():
    # NOTE: an offset of 1e3 makes float32 accumulation lose about 3 digits; the
    # float64 accumulator keeps the mean to float32 rounding (2**-24 < 1e-7 relative).
    a = (np.random.default_rng(1).random(10_000_000, dtype=np.float32) + np.float32(1e3))
    mean = float(kernels.sum(a, (0,), False)) / a.size
    want = a.astype(np.float64).mean()
    assert abs(mean - want) <= 1e-7 * abs(want)


# --------------------------------------------------------------------------- max / min
@given(arrays_and_axes(min_side=1, special=True))
@example((np.array([[0.0, np.nan], [1.0, 2.0]]), (1,), False))
@example((np.array([np.nan, 1.0, 2.0], np.float32), (0,), True))
def test_max_and_min_match_numpy(case):
    a, axes, keepdims = case
    for ours, theirs in ((kernels.max, np.max), (kernels.min, np.min)):
        got = ours(a, axes, keepdims)
        want = theirs(a, axis=axes, keepdims=keepdims)
        assert got.dtype == a.dtype and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape, axes", BLOCK_CASES)
def test_max_and_min_across_block_boundaries_match_numpy(shape, axes):
    a = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    a.reshape(-1)[a.size // 3] = np.nan  # one NaN poisons exactly the outputs it reduces into
    np.testing.assert_array_equal(kernels.max(a, axes, False), np.max(a, axis=axes))
    np.testing.assert_array_equal(kernels.min(a, axes, True), np.min(a, axis=axes, keepdims=True))


# --------------------------------------------------------------------------- argmax
@given(arrays_with_ties())
@example((np.array([1.0, np.nan, 3.0, np.nan]), None))  # the first NaN wins
@example((np.array([[2.0, 2.0], [2.0, 1.0]], np.float32), 0))  # ties: first occurrence
def test_argmax_matches_numpy_first_occurrence(case):
    a, axis = case
    got = kernels.argmax(a, axis)
    want = np.argmax(a, axis=axis)
    assert got.dtype == np.int64 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape, axes", BLOCK_CASES)
def test_argmax_across_block_boundaries_matches_numpy(shape, axes):
    a = np.round(np.random.default_rng(3).standard_normal(shape) * 2).astype(np.float32)
    for axis in (None, axes[0], axes[-1]):
        np.testing.assert_array_equal(kernels.argmax(a, axis), np.argmax(a, axis=axis))
    a.reshape(-1)[[a.size // 2, a.size // 3]] = np.nan
    for axis in (None, axes[0]):
        np.testing.assert_array_equal(kernels.argmax(a, axis), np.argmax(a, axis=axis))


# --------------------------------------------------------------------------- determinism
# fmt: off
THREAD_CASES = [
    ((1024, 1024), (0,)),
    ((1024, 1024), (1,)),
    ((1024, 1024), (0, 1)),
    ((3, 700001), (1,)),
    ((300001, 3), (0,)),
    ((16, 32, 40, 40), (0, 2, 3)),
    ((40, 7, 3000), (0, 2)),
]
# fmt: on


@pytest.mark.parametrize("shape, axes", THREAD_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_independent_of_thread_count(shape, axes, dtype, restore_threads):
    a = np.random.default_rng(4).standard_normal(shape).astype(dtype)
    a.reshape(-1)[::9973] *= 1e6  # mixed magnitudes: any change of summation order shows
    runs = []
    for n in (1, 2, 3):
        set_num_threads(n)
        runs.append([kernels.sum(a, axes, False), kernels.max(a, axes, False),
                     kernels.min(a, axes, False), kernels.argmax(a, axes[0]),
                     kernels.argmax(a, None)])
    for other in runs[1:]:
        for x, y in zip(runs[0], other):
            assert x.tobytes() == y.tobytes()


# --------------------------------------------------------------------------- scatter_add
@given(scatters())
@example(((2, 3), np.array([0, 5, 0, 0, 5], np.int64), np.array([1, 2, 3, 4, 5], np.float32)))
def test_scatter_add_matches_np_add_at(case):
    shape, positions, values = case
    got = kernels.scatter_add(shape, positions, values)
    want = np.zeros(int(np.prod(shape)), values.dtype)
    np.add.at(want, positions, values)  # also sequential in i: equal bit for bit
    assert got.dtype == values.dtype and got.shape == tuple(shape)
    np.testing.assert_array_equal(got, want.reshape(shape))


@pytest.mark.parametrize("bad", [6, -1, 2**40])
def test_scatter_add_out_of_range_raises_index_error(bad):
    positions = np.array([0, bad, 1], np.int64)
    with pytest.raises(IndexError, match=rf"position {bad} .*size 6"):
        kernels.scatter_add((2, 3), positions, np.ones(3, np.float32))


def test_scatter_add_rejects_wrong_dtypes_and_sizes():
    with pytest.raises(TypeError, match="int64"):
        kernels.scatter_add((4,), np.array([0, 1], np.int32), np.ones(2))
    with pytest.raises(TypeError, match="float32 or float64"):
        kernels.scatter_add((4,), np.array([0, 1], np.int64), np.ones(2, np.int64))
    with pytest.raises(ValueError, match="same size"):
        kernels.scatter_add((4,), np.array([0, 1], np.int64), np.ones(3))


# --------------------------------------------------------------------------- contiguous
@pytest.mark.parametrize("make", [
    lambda a: a.T,
    lambda a: a.transpose(2, 0, 1),
    lambda a: a.transpose(1, 2, 0)[::2, :, 1:],
    lambda a: a[:, ::-1, :],
    lambda a: np.broadcast_to(a[:1], a.shape),
    lambda a: a[0, 0, 0, ...],
], ids=["T", "permute", "permute-slice", "reversed", "broadcast", "0-d"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_contiguous_copies_any_view(make, dtype, restore_threads):
    a = np.random.default_rng(5).standard_normal((6, 70, 90)).astype(dtype)
    view = make(a)
    for n in (1, 2):
        set_num_threads(n)
        got = kernels.contiguous(view)
        assert got.flags.c_contiguous and got.shape == view.shape and got.dtype == view.dtype
        assert not np.shares_memory(got, a)
        np.testing.assert_array_equal(got, view)


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("op", ["sum", "max", "min"])
def test_reductions_reject_bad_arguments(op):
    fn = getattr(kernels, op)
    with pytest.raises(TypeError, match="float32 or float64.*int64"):
        fn(np.arange(6).reshape(2, 3), (0,), False)
    with pytest.raises(TypeError, match="float16"):
        fn(np.ones(3, np.float16), (0,), False)
    with pytest.raises(ValueError, match="C-contiguous"):
        fn(np.ones((3, 4)).T, (0,), False)
    for axes in [(), (2,), (1, 0), (0, 0), [0]]:
        with pytest.raises(ValueError, match="axes"):
            fn(np.ones((3, 4)), axes, False)


def test_argmax_rejects_bad_arguments():
    with pytest.raises(TypeError, match="int64"):
        kernels.argmax(np.arange(3), None)
    with pytest.raises(ValueError, match="axis"):
        kernels.argmax(np.ones((2, 3)), 2)
    with pytest.raises(ValueError, match="empty"):
        kernels.argmax(np.ones((0, 3)), None)


def test_max_of_empty_reduced_set_raises():
    with pytest.raises(ValueError, match="zero-size"):
        kernels.max(np.ones((0, 3)), (0,), False)
    assert kernels.max(np.ones((0, 3)), (1,), False).shape == (0,)


@given(arrays_and_axes(min_side=1))
def test_sum_short_row_path_is_the_general_path_bit_for_bit(case):
    """With one thread a single stage of rows up to ROW_BLOCK long skips the general
    set-up (reduce.pyx: _sum_short_rows); with two it does not. Same bits either way."""
    a, axes, keepdims = case
    from tinygrad_bn._C import reduce as R
    one = R.sum_axes(a, axes, keepdims, 1)
    two = R.sum_axes(a, axes, keepdims, 2)
    assert one.dtype == two.dtype == a.dtype and one.shape == two.shape
    np.testing.assert_array_equal(one, two)


@given(st.sampled_from(DTYPES), st.integers(1, 11), st.integers(28, 140), st.integers(1, 3))
def test_row_sums_do_not_depend_on_neighbouring_rows(dtype, rows, length, nthreads):
    """Contiguous rows are summed four side by side (vec8d.h TB_SUM_RUN4) where four
    remain and one at a time otherwise; a row's sum must be the same bits either way,
    i.e. the sum of that row alone, and match float64 to summation accuracy."""
    from tinygrad_bn._C import reduce as R
    rng = np.random.default_rng(rows * 1000 + length)
    a = (rng.standard_normal((rows, length)) * 10 ** rng.uniform(-3, 3, (rows, 1))).astype(dtype)
    together = R.sum_axes(a, (1,), False, nthreads)
    for r in range(rows):
        alone = R.sum_axes(np.ascontiguousarray(a[r:r + 1]), (1,), False, nthreads)
        np.testing.assert_array_equal(together[r:r + 1], alone)
    exact = a.astype(np.float64).sum(axis=1)
    bound = length * EPS64 * np.abs(a.astype(np.float64)).sum(axis=1) + np.abs(exact) * np.finfo(dtype).eps
    assert np.all(np.abs(together.astype(np.float64) - exact) <= bound)
