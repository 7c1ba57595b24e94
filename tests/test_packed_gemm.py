"""The packed recurrent GEMM (backends/packed_gemm.py): its panels, and its products against
NumPy's in float64 for every row count of the micro-kernel, partly covered panels and the
column blocks the two threads of a loop take."""

import os
import subprocess
import sys

import numpy as np
import pytest

from bptt.backends import packed_gemm
from bptt.backends.packed_gemm import MR, pack, panel_width


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_panels_hold_the_columns_in_order_and_zeros_after(dtype):
    Bm = np.arange(7 * 37, dtype=dtype).reshape(7, 37)
    panels = pack(Bm)
    nr = panel_width(dtype)
    assert nr == 2 * packed_gemm.vector_bytes() // np.dtype(dtype).itemsize and packed_gemm.vector_bytes() in (32, 64)
    assert panels.shape == (-(-37 // nr), 7, nr) and panels.flags.c_contiguous
    for p in range(panels.shape[0]):
        width = min(nr, 37 - p * nr)
        assert np.array_equal(panels[p, :, :width], Bm[:, p * nr:p * nr + width])
        assert not panels[p, :, width:].any()


def _product(M, K, N, lo, hi, dtype, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((M, K)).astype(dtype)
    Bm = rng.standard_normal((K, N)).astype(dtype)
    out = np.full((M, N), 7.0, dtype=dtype)          # columns outside [lo, hi) must stay 7
    tile = np.full((MR, panel_width(dtype)), np.nan, dtype=dtype)
    packed_gemm.times_packed(a, pack(Bm), out, lo, hi, tile)
    want = np.full((M, N), 7.0)
    want[:, lo:hi] = (a.astype(np.float64) @ Bm.astype(np.float64))[:, lo:hi]
    return out, want


@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 6, 7, 11, 13, 32])
def test_every_row_count_of_the_micro_kernel(M):
    """Rows are spread over tiles of 1 to MR rows: each count is a micro-kernel of its own."""
    out, want = _product(M, 19, 40, 0, 40, np.float64)
    assert np.abs(out - want).max() < 1e-12 * np.abs(want).max()


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
@pytest.mark.parametrize("M,K,N,lo,hi", [
    (32, 128, 512, 0, 512),       # the LSTM's forward step at H = 128: whole panels
    (32, 512, 128, 64, 128),      # its backward step, the second thread's half
    (5, 3, 40, 3, 37),            # both ends inside a panel
    (3, 40, 120, 16, 120),        # a cut at 16, the last panel partly filled
    (7, 600, 37, 5, 30),          # K in three blocks (KC = 256), partial panels at both ends
    (9, 1, 5, 0, 5),              # K = 1 and one partial panel
    (4, 0, 20, 0, 20),            # K = 0: zeros
    (0, 8, 16, 0, 16),            # no rows
])
def test_products_equal_numpys(dtype, tol, M, K, N, lo, hi):
    out, want = _product(M, K, N, lo, hi, dtype)
    assert np.abs(out - want).max(initial=0) <= tol * max(1.0, np.abs(want).max(initial=0))


def test_rows_of_any_stride_and_two_column_blocks_make_the_whole_product():
    """a and out as column blocks of wider arrays (row stride ≠ width), and the product
    computed as two blocks [0, cut) and [cut, N) with their own tiles, as two threads do."""
    rng = np.random.default_rng(3)
    wide_a = rng.standard_normal((10, 50))
    a = wide_a[:, 5:38]                                # (10, 33), row stride 50
    Bm = rng.standard_normal((33, 45))
    wide_out = np.full((10, 60), 7.0)
    out = wide_out[:, 10:55]                           # (10, 45), row stride 60
    panels = pack(Bm)
    tiles = np.empty((2, MR, panel_width(np.float64)))
    packed_gemm.times_packed(a, panels, out, 0, 16, tiles[0])
    packed_gemm.times_packed(a, panels, out, 16, 45, tiles[1])
    assert np.abs(out - a @ Bm).max() < 1e-12 * np.abs(a @ Bm).max()
    assert (wide_out[:, :10] == 7).all() and (wide_out[:, 55:] == 7).all()


_WIDE = """
import sys
import numpy as np
from bptt.backends import packed_gemm
packed_gemm.vector_bytes = lambda: 64          # before anything compiles: the AVX-512 kernel
for name in ("32", "64"):
    a, Bm = np.load(f"{sys.argv[1]}/a{name}.npy"), np.load(f"{sys.argv[1]}/b{name}.npy")
    tile = np.empty((packed_gemm.MR, packed_gemm.panel_width(a.dtype)), a.dtype)
    out = np.zeros((a.shape[0], Bm.shape[1]), a.dtype)
    packed_gemm.times_packed(a, packed_gemm.pack(Bm), out, 0, Bm.shape[1], tile)
    np.save(f"{sys.argv[1]}/out{name}.npy", out)
    print(packed_gemm.panel_width(a.dtype))
"""


def test_512_bit_kernel_gives_the_same_bits_as_the_256_bit_one(tmp_path):
    """The AVX-512 micro-kernel (vectors of 64 bytes), compiled in a process of its own with
    empty caches (on an AVX2 CPU LLVM splits each vector in two), sums every element in the
    same order as the AVX2 one: the same bits, from panels of twice the width."""
    rng = np.random.default_rng(5)
    inputs = {}
    for dtype in (np.float32, np.float64):
        name = str(8 * np.dtype(dtype).itemsize)
        a = rng.standard_normal((13, 600)).astype(dtype)      # K in three blocks of KC
        Bm = rng.standard_normal((600, 75)).astype(dtype)     # a last panel in part
        np.save(tmp_path / f"a{name}.npy", a)
        np.save(tmp_path / f"b{name}.npy", Bm)
        inputs[name] = a, Bm
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), BPTT_CACHE_DIR=str(tmp_path / "bptt"))
    done = subprocess.run([sys.executable, "-c", _WIDE, str(tmp_path)], env=env, capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["32", "16"]                 # NR: two 512-bit vectors of float32, float64
    for name, (a, Bm) in inputs.items():
        out = np.zeros((13, 75), a.dtype)
        packed_gemm.times_packed(a, pack(Bm), out, 0, 75, np.empty((MR, panel_width(a.dtype)), a.dtype))
        assert np.array_equal(np.load(tmp_path / f"out{name}.npy"), out)
        assert np.abs(out - a.astype(np.float64) @ Bm).max() < (1e-4 if name == "32" else 1e-11)
