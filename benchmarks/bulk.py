"""The weight-gradient product dᵀ · rows two ways: BLAS with a transposed operand, against
C-ordered operands with the transposes copied in blocks.

After the time loop each layer forms ∂W = Σ_t δ_tᵀ x_t as one product of d (N, G·H), the
gate gradients of all N = T·B rows, with rows (N, K), its inputs or previous states
(backends/bulk.py's t_times). BLAS can read dᵀ in place (a transposed operand) or take
C-ordered copies, (rowsᵀ · d)ᵀ with both transposes blocked. t_times takes the first;
this table is the measurement behind that choice. The shapes are the trainer's: the
default job (H 128) and the 2-layer LSTM of 256, whole batches of 32 and the halves of 16
that the trainer's two threads take, on one BLAS thread (as the trainer holds it) and on
all. Each figure is the median of 5 rounds of 20 products (float32), after a warm-up.

    python benchmarks/bulk.py
"""
from __future__ import annotations

import bptt  # noqa: F401  (before NumPy: bptt shortens OpenBLAS's idle spin, backends/settings.py)

import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from bptt.backends.bulk import t_times, transposed
from machine import cores, recorded, stamp

# (N, G·H, K) of the LSTM's products at T = 64, B 32 or 16 (N = T·B): W_h (N − B rows, the
# first step's are apart) of the default job, then W_x of the upper layer and W_h of the 2 × 256.
SHAPES = [(2016, 512, 128), (1008, 512, 128), (2048, 1024, 256), (1024, 1024, 256), (2016, 1024, 256),
          (1008, 1024, 256)]


def blocked(d, rows):
    return transposed(transposed(np.ascontiguousarray(rows)) @ d)


def rate(f, flop, repeats=20, rounds=5):
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeats):
            f()
        times.append((time.perf_counter() - t0) / repeats)
    return flop / statistics.median(times) / 1e9


def main():
    print(stamp())
    rng = np.random.default_rng(0)
    square = rng.standard_normal((1024, 1024)).astype(np.float32)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 1.5:         # the first products of a process run slow: warm up
        square @ square
    print("| BLAS threads | N, G·H, K | transposed operand GFLOP/s | blocked copies GFLOP/s | transposed / blocked |")
    print("|---:|---|---:|---:|---:|")
    for threads in sorted({1, cores()}):
        with threadpool_limits(threads, user_api="blas"):
            for N, G, K in SHAPES:
                d = rng.standard_normal((N, G)).astype(np.float32)
                rows = rng.standard_normal((N, K)).astype(np.float32)
                assert np.abs(t_times(d, rows) - blocked(d, rows)).max() < 1e-3
                flop = 2 * N * G * K
                plain, copies = rate(lambda: t_times(d, rows), flop), rate(lambda: blocked(d, rows), flop)
                print(f"| {threads} | {N}, {G}, {K} | {plain:.1f} | {copies:.1f} | {plain / copies:.2f} |", flush=True)


if __name__ == "__main__":
    with recorded(__file__):
        main()
