"""The per-step recurrent GEMM alone, on one thread: bptt's micro-kernel, oneMKL's packed
GEMM and OpenBLAS, against the square GEMM.

A layer's time loop does one (B, H) x (H, G·H) product a step forward and one
(B, G·H) x (G·H, H) backward, over the same W_h every step, each loop thread on its own
rows with one BLAS thread. This script times the candidates for that product, packed
and MKL each called in a compiled loop as cells/compiled.py calls them:

    packed   W_h packed once for the micro-kernel (backends/packed_gemm.py)
    MKL      W_h packed once by cblas_sgemm_pack, cblas_sgemm_compute each step
             (backends/mkl.py; the column is empty without the extra ``mkl``)
    OpenBLAS np.matmul called from Python (NumPy's own BLAS, which repacks W_h at every
             call; the Python call, about a microsecond, is counted in)

and the 1024³ GEMM on one thread right after each shape, in this process. Before a shape is
timed, each candidate's product is held to the float64 product of the same operands (a
relative error within float32 rounding of the sum, ``check_product``): a fast wrong kernel
stops the script rather than winning the table.

    python benchmarks/step_gemm.py                   # the core benchmark's shapes
    python benchmarks/step_gemm.py --shapes 32,512,4 16,128,4

settings.step_gemm() picks packed or MKL by the CPU's vector instructions: this table is
the measurement behind that rule. Each figure is the median of 7 blocks of about 20 MFLOP
(at least 4 calls; float32).
"""
from __future__ import annotations

import bptt  # noqa: F401  (before NumPy: bptt shortens OpenBLAS's idle spin, backends/settings.py)

import argparse
import statistics
import time

import numpy as np
from numba import njit
from threadpoolctl import threadpool_limits

from bptt.backends import mkl, packed_gemm
from machine import recorded, stamp

# (B, H, G) of the core benchmark's shapes, for the LSTM (G = 4); GRU is G = 3, the RNN G = 1.
SHAPES = [(1, 100, 4), (32, 128, 4), (64, 256, 4), (32, 512, 4), (16, 128, 4)]


@njit(cache=True)
def _repeat_packed(a, packed, out, tile, n):
    for _ in range(n):
        packed_gemm.times_packed(a, packed, out, 0, out.shape[1], tile)


def _repeat_mkl_factory():
    @njit
    def repeat(a, buffer, out, n):
        for _ in range(n):
            mkl.compute(a, buffer, out)
    return repeat


def median_s(run, n, blocks=7):
    run(1)
    times = []
    for _ in range(blocks):
        start = time.perf_counter()
        run(n)
        times.append((time.perf_counter() - start) / n)
    return statistics.median(times)


def check_product(name, got, a, b):
    """Refuse a candidate whose product differs from the float64 one by more than float32
    rounding of a sum of len(b) terms allows (relative to the largest |a_ik b_kj| sum)."""
    exact = a.astype(np.float64) @ b.astype(np.float64)
    scale = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)
    error = float(np.max(np.abs(got - exact) / np.maximum(scale, np.finfo(np.float64).tiny)))
    if not error <= 4 * b.shape[0] * np.finfo(np.float32).eps:
        raise SystemExit(f"step_gemm: {name} gives a wrong product at {a.shape} x {b.shape}: "
                         f"relative error {error:.2e}")


def square_rate(n=1024):
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    out = np.empty_like(a)
    return 2.0 * n ** 3 / median_s(lambda k: [np.matmul(a, a, out=out) for _ in range(k)], 3, 5) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="*", help="B,H,G triples (G: gate blocks, 4 for the LSTM)")
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    has_mkl = mkl.library_path() is not None
    repeat_mkl = _repeat_mkl_factory() if has_mkl else None
    if has_mkl:
        mkl.load()
    rng = np.random.default_rng(0)
    print("# per-step recurrent GEMM, float32, one thread; GFLOP/s, and the share of the one-thread")
    print("# 1024³ GEMM's rate measured right after each shape")
    print(stamp())
    print(f"# packed: {8 * packed_gemm.vector_bytes()}-bit vectors, {packed_gemm.MR} x "
          f"{packed_gemm.panel_width(np.float32)} float32 blocks")
    print("| B, H, G | direction | product | packed | MKL | OpenBLAS | 1024³ | packed share | MKL / packed |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    with threadpool_limits(1, user_api="blas"):
        for B, H, G in shapes:
            W = rng.standard_normal((G * H, H)).astype(np.float32)
            flops = 2.0 * B * H * G * H
            n = max(4, int(2e7 / flops))
            for forward in (True, False):
                a = rng.standard_normal((B, H if forward else G * H)).astype(np.float32)
                Bm = np.ascontiguousarray(W.T if forward else W)
                out = np.empty((B, Bm.shape[1]), np.float32)
                packed = packed_gemm.pack(Bm)
                tile = np.empty((packed_gemm.MR, packed.shape[2]), np.float32)
                _repeat_packed(a, packed, out, tile, 1)
                check_product("packed", out, a, Bm)
                rate = {"packed": flops / median_s(lambda k: _repeat_packed(a, packed, out, tile, k), n) / 1e9,
                        "OpenBLAS": flops / median_s(lambda k: [np.matmul(a, Bm, out=out) for _ in range(k)], n) / 1e9}
                if has_mkl:
                    buffer = np.empty(mkl.packed_size(W, forward, B), np.float32)
                    mkl.pack_into(W, forward, B, buffer)
                    repeat_mkl(a, buffer, out, 1)
                    check_product("MKL", out, a, Bm)
                    rate["MKL"] = flops / median_s(lambda k: repeat_mkl(a, buffer, out, k), n) / 1e9
                square = square_rate()
                product = f"({B}, {H}) x ({H}, {G * H})" if forward else f"({B}, {G * H}) x ({G * H}, {H})"
                mkl_cells = (f"{rate['MKL']:.1f}", f"{rate['MKL'] / rate['packed']:.2f}") if has_mkl else ("", "")
                print(f"| {B}, {H}, {G} | {'forward' if forward else 'backward'} | {product} | {rate['packed']:.1f} | "
                      f"{mkl_cells[0]} | {rate['OpenBLAS']:.1f} | {square:.1f} | {rate['packed'] / square:.0%} | "
                      f"{mkl_cells[1]} |", flush=True)


if __name__ == "__main__":
    with recorded(__file__):
        main()
