"""backends/bulk.py: the weight-gradient product on either path, blocked transposes and
one-hot sums, against NumPy's plain expressions."""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from bptt.backends import bulk, settings


@pytest.mark.parametrize("shape", [(1, 1), (31, 33), (64, 32), (100, 7), (5, 300)])
def test_transposed_is_the_transpose(shape):
    a = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = bulk.transposed(a)
    assert out.flags.c_contiguous and np.array_equal(out, a.T)


@pytest.mark.parametrize("blas_threads", [1, 2])
def test_t_times_on_one_blas_thread_or_more_gives_the_product(blas_threads):
    """One BLAS thread takes the C-ordered operands and blocked transposes, more the
    transposed-operand product: both dᵀ · rows, C-ordered."""
    rng = np.random.default_rng(1)
    d, rows = rng.standard_normal((70, 40)), rng.standard_normal((70, 9))
    with threadpool_limits(blas_threads, user_api="blas"):
        assert blas_threads > 1 or settings.numpy_blas_threads() == 1
        out = bulk.t_times(d, rows)
    assert out.flags.c_contiguous and np.abs(out - d.T @ rows).max() < 1e-12


def test_rows_summed_is_the_one_hot_product():
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 6, 50)
    du = rng.standard_normal((50, 8))
    assert np.abs(bulk.rows_summed(du, codes, 6) - np.eye(6)[codes].T @ du).max() < 1e-12
