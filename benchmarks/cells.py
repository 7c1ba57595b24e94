"""Forward+backward time of bptt's RNN, LSTM and GRU layers vs torch.nn.RNN/LSTM/GRU.

Both sides run in this process, float32, with the same number of threads, on the same
inputs: one layer, an initial state, the gradient of every output given (dh), and the
gradients with respect to every weight and the initial state computed — a training
step. ``--input-grad`` also asks both sides for ∂L/∂x. Each side is timed as
a block of repeats after a short pause, never alternating call by call: on 2 cores one
library's idle worker threads spin and steal the other's second core.

    python benchmarks/cells.py                 # the five shapes of the core issue
    python benchmarks/cells.py --quick         # fewer repeats
    python benchmarks/cells.py --shapes 100,32,64,128

Prints one table: times in ms (median of blocks), ratio ours/torch (< 1 means faster),
and the achieved GFLOP/s of our pass (GEMM flops: 2·T·B·G·H·(3H + 3D), less 2·T·B·G·H·D
without ∂L/∂x) next to the float32
GEMM rate NumPy reaches on this machine, measured in the same run.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

from bptt.cells import CELLS

SHAPES = [(25, 1, 65, 100), (100, 32, 64, 128), (100, 64, 128, 256), (200, 32, 128, 512), (1000, 16, 32, 128)]
TORCH = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def block_time(fn, min_block_s, blocks):
    """Median seconds per call over ``blocks`` blocks, each of enough calls to last min_block_s."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-6)
    reps = max(1, int(min_block_s / once))
    times = []
    time.sleep(0.3)                       # let the other library's threads go idle
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - t0) / reps)
    return statistics.median(times)


def bench_shape(cell, T, B, D, H, min_block_s, blocks, input_grad):
    torch.manual_seed(0)
    ref = TORCH[cell](D, H)
    layer = CELLS[cell]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    dh = rng.standard_normal((T, B, H)).astype(np.float32)
    h0 = np.zeros((B, H), np.float32)
    params = {"W_x": ref.weight_ih_l0.detach().numpy().copy(), "W_h": ref.weight_hh_l0.detach().numpy().copy()}
    b_ih, b_hh = ref.bias_ih_l0.detach().numpy(), ref.bias_hh_l0.detach().numpy()
    if cell == "gru":
        params["b_h"] = np.concatenate([b_ih[:2 * H] + b_hh[:2 * H], b_ih[2 * H:]])
        params["b_hn"] = b_hh[2 * H:].copy()
    else:
        params["b_h"] = b_ih + b_hh
    state0 = (h0, h0.copy()) if cell == "lstm" else (h0,)

    def ours():
        h, _, tape = layer.forward(params, x, state0)
        return layer.backward(params, dh, None, tape, need_dx=input_grad)

    xt = torch.tensor(x, requires_grad=input_grad)
    dht = torch.tensor(dh)
    h0t = torch.zeros(1, B, H, requires_grad=True)
    s0t = (h0t, torch.zeros(1, B, H, requires_grad=True)) if cell == "lstm" else h0t

    def theirs():
        ref.zero_grad(set_to_none=True)
        out, _ = ref(xt, s0t)
        out.backward(dht)

    # The same numbers first: a benchmark of a wrong result measures nothing.
    h, _, _ = layer.forward(params, x, state0)
    with torch.no_grad():
        out, _ = ref(xt, s0t)
    err = float(np.abs(h - out.numpy()).max())
    t_ours = block_time(ours, min_block_s, blocks)
    t_torch = block_time(theirs, min_block_s, blocks)
    G = layer.GATES
    flops = 2.0 * T * B * G * H * (3 * H + (3 if input_grad else 2) * D)
    return t_ours, t_torch, flops / t_ours / 1e9, err


def gemm_rate(n=1024, min_block_s=0.5):
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.copy()
    t = block_time(lambda: a @ b, min_block_s, 3)
    return 2.0 * n ** 3 / t / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter blocks (noisier)")
    parser.add_argument("--cells", default="rnn,lstm,gru")
    parser.add_argument("--shapes", nargs="*", help="T,B,D,H tuples")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--input-grad", action="store_true", help="also compute ∂L/∂x on both sides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    min_block_s, blocks = (0.2, 3) if args.quick else (0.6, 5)

    what = "forward + backward with ∂L/∂x" if args.input_grad else "forward + backward (training step, no ∂L/∂x)"
    print(f"# {what}")
    print(f"# {time.strftime('%Y-%m-%d')} · {platform.processor() or platform.machine()} · "
          f"{os.cpu_count()} cores · threads {args.threads} · numpy {np.__version__} · torch {torch.__version__}")
    print(f"# NumPy float32 GEMM (1024³): {gemm_rate():.0f} GFLOP/s")
    print(f"| cell | T, B, D, H | ours ms | torch ms | ours/torch | ours GFLOP/s | max |Δh| |")
    print(f"|---|---|---:|---:|---:|---:|---:|")
    for cell in args.cells.split(","):
        for T, B, D, H in shapes:
            t_ours, t_torch, gflops, err = bench_shape(cell, T, B, D, H, min_block_s, blocks, args.input_grad)
            print(f"| {cell} | {T}, {B}, {D}, {H} | {1e3 * t_ours:.2f} | {1e3 * t_torch:.2f} | "
                  f"{t_ours / t_torch:.2f} | {gflops:.1f} | {err:.1e} |", flush=True)
    print(f"# GEMM after the runs: {gemm_rate():.0f} GFLOP/s")


if __name__ == "__main__":
    main()
