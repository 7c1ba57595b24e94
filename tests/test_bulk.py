"""backends/bulk.py: the weight-gradient product on either path, blocked transposes and
one-hot sums, against NumPy's plain expressions."""
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from bptt.backends import bulk, settings


@pytest.mark.parametrize("shape", [(1, 1), (31, 33), (64, 32), (100, 7), (5, 300)])
def test_transposed_is_the_transpose(shape):
    a = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = bulk.transposed(a)
    assert out.flags.c_contiguous and np.array_equal(out, a.T)


@pytest.mark.parametrize("avx512_kernel", [False, True])
@pytest.mark.parametrize("blas_threads", [1, 2])
def test_t_times_takes_the_blocked_form_on_one_thread_short_of_avx512(blas_threads, avx512_kernel, monkeypatch):
    """One BLAS thread with a kernel short of AVX-512 takes the C-ordered operands and
    blocked transposes; otherwise the transposed-operand product: both dᵀ · rows, C-ordered."""
    blocked = []
    monkeypatch.setattr(settings, "blas_has_avx512_kernel", lambda: avx512_kernel)
    monkeypatch.setattr(bulk, "transposed", lambda a, copy=bulk.transposed: blocked.append(a.shape) or copy(a))
    rng = np.random.default_rng(1)
    d, rows = rng.standard_normal((70, 40)), rng.standard_normal((70, 9))
    with threadpool_limits(blas_threads, user_api="blas"):
        assert blas_threads > 1 or settings.numpy_blas_threads() == 1
        out = bulk.t_times(d, rows)
        one_row = bulk.t_times(d[:1], rows[:1])
    assert out.flags.c_contiguous and np.abs(out - d.T @ rows).max() < 1e-12
    assert blocked == ([(70, 9), (9, 40)] if blas_threads == 1 and not avx512_kernel else [])
    assert one_row.flags.c_contiguous and np.array_equal(one_row, d[:1].T @ rows[:1])   # an outer product


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="OpenBLAS's x86 kernels")
@pytest.mark.parametrize("coretype,avx512", [("Haswell", False), ("SkylakeX", True)])
def test_the_blas_kernel_is_read_from_openblas(coretype, avx512):
    """OPENBLAS_CORETYPE picks OpenBLAS's kernel at load: Haswell is short of AVX-512,
    SkylakeX is an AVX-512 kernel (asked for only where the CPU has AVX-512)."""
    if not settings._numpy_has_openblas():
        pytest.skip("NumPy's BLAS is not OpenBLAS")
    if avx512 and "avx512f" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("the CPU has no AVX-512")
    code = "from bptt.backends import settings; print(settings._numpy_blas().architecture, settings.blas_has_avx512_kernel())"
    env = {**os.environ, "OPENBLAS_CORETYPE": coretype}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [coretype, str(avx512)]


def test_rows_summed_is_the_one_hot_product():
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 6, 50)
    du = rng.standard_normal((50, 8))
    assert np.abs(bulk.rows_summed(du, codes, 6) - np.eye(6)[codes].T @ du).max() < 1e-12
