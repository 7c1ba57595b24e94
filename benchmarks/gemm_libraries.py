"""The bulk products of a layer pass in each GEMM library of this machine, on one thread.

A layer's pass outside its time loop is a few large products: the input projection
x W_xᵀ before the loop and the weight gradients dvᵀ h_{t-1} after it (backends/bulk.py's
t_times), each as large as the whole loop's recurrent GEMMs. At the largest shape of
`benchmarks/cells.py` they and the loop's own products make nearly all of the time, so
how fast a pass can be there is set by the fastest GEMM at hand. This script times them
and the 1024³ GEMM, float32, one thread each, in this process:

    OpenBLAS     np.matmul (NumPy's own BLAS: what bptt runs them with)
    oneMKL       cblas_sgemm, sequential (the extra ``mkl``; empty without it)
    PyTorch      torch.mm with one thread (its BLAS, oneMKL in the CPU wheels)
    micro-kernel bptt's (backends/packed_gemm.py) over an operand packed beforehand, and
                 with the packing and the transposed copy it needs counted in

    python benchmarks/gemm_libraries.py                        # LSTM, (T, B, D, H) = (200, 32, 128, 512)
    python benchmarks/gemm_libraries.py --shape 64,32,256,256

Each figure is the median of 7 blocks of calls lasting at least 0.3 s each, GFLOP/s;
then the best library's rate (OpenBLAS, oneMKL or PyTorch: the micro-kernel is bptt's
own) over OpenBLAS's, and the largest error of any column against the product in
float64, relative to its largest element (each computes the same product).
"""
from __future__ import annotations

import bptt  # noqa: F401  (before NumPy: bptt shortens OpenBLAS's idle spin, backends/settings.py)

import argparse
import ctypes

import numpy as np
from threadpoolctl import threadpool_limits

from bptt.backends import mkl, packed_gemm
from machine import block_time, recorded, stamp

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


def mkl_product(lib, a, b, out, a_transposed):
    """out = op(a) · b by cblas_sgemm; op(a) = aᵀ where a_transposed."""
    M, N = out.shape
    K = b.shape[0]
    pointer = ctypes.c_void_p
    lib.cblas_sgemm(ROW_MAJOR, TRANS if a_transposed else NO_TRANS, NO_TRANS, M, N, K, ctypes.c_float(1.0),
                    pointer(a.ctypes.data), a.shape[1], pointer(b.ctypes.data), N, ctypes.c_float(0.0),
                    pointer(out.ctypes.data), N)


def products(T, B, D, H, square, G=4):
    """[(name, a, b, a_transposed)]: out = op(a) · b, float32, the layer's arrays' layout."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T * B, D), dtype=np.float32)
    W_x_t = rng.standard_normal((D, G * H), dtype=np.float32)
    dv = rng.standard_normal((T * B, G * H), dtype=np.float32)
    h_prev = rng.standard_normal((T * B, H), dtype=np.float32)
    n = square
    square = rng.standard_normal((n, n), dtype=np.float32)
    return [(f"{n}³", square, square, False),
            (f"x W_xᵀ ({T * B}, {D}) x ({D}, {G * H})", x, W_x_t, False),
            (f"dvᵀ h ({G * H}, {T * B}) x ({T * B}, {H})", dv, h_prev, True)]


def rates(a, b, a_transposed, lib, block_s):
    """({library: GFLOP/s}, the largest error of any library's out against the float64 product,
    relative to its largest element) for out = op(a) · b, one thread."""
    import torch
    A = a.T if a_transposed else a
    out = np.empty((A.shape[0], b.shape[1]), np.float32)
    flop = 2.0 * A.shape[0] * A.shape[1] * b.shape[1]
    tile = np.empty((packed_gemm.MR, packed_gemm.panel_width(np.float32)), np.float32)
    packed, rows = packed_gemm.pack(b), np.ascontiguousarray(A)
    ta, tb, tout = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
    runs = {"OpenBLAS": lambda: np.matmul(A, b, out=out),
            "PyTorch": lambda: torch.mm(ta.T if a_transposed else ta, tb, out=tout),
            "micro-kernel": lambda: packed_gemm.times_packed(rows, packed, out, 0, out.shape[1], tile),
            "micro-kernel, packing counted": lambda: packed_gemm.times_packed(
                np.ascontiguousarray(A), packed_gemm.pack(b), out, 0, out.shape[1], tile)}
    if lib is not None:
        runs["oneMKL"] = lambda: mkl_product(lib, a, b, out, a_transposed)
    exact = A.astype(np.float64) @ b.astype(np.float64)
    rate, errors = {}, []
    torch.set_num_threads(1)
    with threadpool_limits(1, user_api="blas"):
        for name, run in runs.items():
            out[:] = np.nan
            rate[name] = flop / block_time(run, block_s, 7) / 1e9
            errors.append(np.max(np.abs(out - exact)) / np.max(np.abs(exact)))     # NaN: out not written
    return rate, float(np.max(errors))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="200,32,128,512", help="T,B,D,H of an LSTM layer")
    parser.add_argument("--square", type=int, default=1024, help="n of the n³ GEMM")
    parser.add_argument("--block-s", type=float, default=0.3, help="seconds of calls a timed block lasts at least")
    args = parser.parse_args()
    values = args.shape.split(",")
    if len(values) != 4 or not all(v.strip().isdigit() and int(v) > 0 for v in values):
        parser.error(f"--shape: expected T,B,D,H, four positive integers, got {args.shape!r}")
    T, B, D, H = (int(v) for v in values)
    if args.square <= 0 or args.block_s <= 0:
        parser.error(f"--square and --block-s: expected positive numbers, got {args.square!r} and {args.block_s!r}")
    lib = mkl.load() if mkl.library_path() is not None else None
    names = ("OpenBLAS", "oneMKL", "PyTorch", "micro-kernel", "micro-kernel, packing counted")
    print(f"# bulk products of an LSTM layer, (T, B, D, H) = ({T}, {B}, {D}, {H}), float32, one thread; GFLOP/s")
    print(stamp())
    print("| product | " + " | ".join(names) + " | best library / OpenBLAS | largest error |")
    print("|---|" + "---:|" * (len(names) + 2))
    for name, a, b, a_transposed in products(T, B, D, H, args.square):
        rate, error = rates(a, b, a_transposed, lib, args.block_s)
        best = max(rate[k] for k in ("OpenBLAS", "oneMKL", "PyTorch") if k in rate)
        cells = " | ".join(f"{rate[k]:.1f}" if k in rate else "" for k in names)
        print(f"| {name} | {cells} | {best / rate['OpenBLAS']:.2f} | {error:.1e} |", flush=True)


if __name__ == "__main__":
    with recorded(__file__):
        main()
