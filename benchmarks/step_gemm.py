"""The per-step recurrent GEMM alone, as the compiled loops call it, against the square GEMM.

A layer's time loop does one (B, H) x (H, G·H) product a step forward and one
(B, G·H) x (G·H, H) backward. They are small in B, and OpenBLAS runs them below its
square-matrix rate; that rate bounds what a whole pass can reach (RESULTS.md).
This script times them exactly as the loops do (`cpu_loops._repeat_times_w`): the packed
micro-kernel (backends/packed_gemm.py, the default) and Numba calling NumPy's OpenBLAS in
both orientations (the flipped one with its transposing copy), and the 1024³ GEMM right
after each shape, in this process:

    python benchmarks/step_gemm.py                   # the core benchmark's batched shapes
    python benchmarks/step_gemm.py --shapes 32,512,4 16,128,4

Each figure is the median of 7 blocks of about 20 MFLOP (float32, the machine's BLAS threads).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from bptt.backends import cpu_loops, packed_gemm

# (B, H, G) of the core benchmark's batched shapes, for the LSTM (G = 4); GRU is G = 3,
# the Elman RNN G = 1.
SHAPES = [(32, 128, 4), (64, 256, 4), (32, 512, 4), (16, 128, 4)]


def median_s(run, n, blocks=7):
    run(1)
    times = []
    for _ in range(blocks):
        start = time.perf_counter()
        run(n)
        times.append((time.perf_counter() - start) / n)
    return statistics.median(times)


def square_rate(n=1024):
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    out = np.empty_like(a)
    return 2.0 * n ** 3 / median_s(lambda k: [np.matmul(a, a, out=out) for _ in range(k)], 3, 5) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="*", help="B,H,G triples (G: gate blocks, 4 for the LSTM)")
    args = parser.parse_args()
    if not cpu_loops.use_for(np.zeros(1, np.float32)):
        raise SystemExit("the compiled loops are off here (no Numba, no OpenBLAS, or BPTT_FUSED/BPTT_LOOPS=0)")
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    rng = np.random.default_rng(0)
    print("# per-step recurrent GEMM, float32, as the compiled loops call it; GFLOP/s, and the")
    print("# share of the 1024³ GEMM's rate measured right after each shape")
    print("| B, H, G | direction | product | packed | BLAS plain | BLAS flipped (with its copy) | 1024³ "
          "| packed share | packed / best BLAS |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for B, H, G in shapes:
        W = rng.standard_normal((G * H, H)).astype(np.float32)
        flops = 2.0 * B * H * G * H
        n = max(4, int(2e7 / flops))
        for forward in (True, False):
            a = rng.standard_normal((B, H if forward else G * H)).astype(np.float32)
            out = np.empty((B, G * H if forward else H), np.float32)
            outT = np.empty(out.shape[::-1], np.float32)
            unused = np.empty((1, 1, 1), np.float32)
            packed = packed_gemm.pack(W.T if forward else W)
            tiles = np.empty((2, packed_gemm.MR, packed.shape[2]), np.float32)
            modes = [(2, outT, packed, tiles), (0, outT, unused, unused), (1, outT, unused, unused)]
            rates = [flops / median_s(lambda k, g=g: cpu_loops._repeat_times_w(a, W, out, forward, g, k), n) / 1e9
                     for g in modes]
            square = square_rate()
            product = f"({B}, {H}) x ({H}, {G * H})" if forward else f"({B}, {G * H}) x ({G * H}, {H})"
            print(f"| {B}, {H}, {G} | {'forward' if forward else 'backward'} | {product} | {rates[0]:.1f} | "
                  f"{rates[1]:.1f} | {rates[2]:.1f} | {square:.1f} | {rates[0] / square:.0%} | "
                  f"{rates[0] / max(rates[1:]):.2f} |", flush=True)


if __name__ == "__main__":
    main()
