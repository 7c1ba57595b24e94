"""Where a layer's time goes: input projection, compiled loops, weight GEMMs (LSTM by default).

    python benchmarks/lstm_profile.py                      # (T, B, D, H) = (100, 32, 64, 128)
    python benchmarks/lstm_profile.py --shape 200,32,128,512 --cell gru

float32, the machine's BLAS threads. The layer's own forward and backward run as the
model runs them; each function they call from cells/compiled.py (the input projection,
the time loop through loop_threads.run, the weight-gradient products, the bias sums) is
timed inside those calls, so the parts and the rest add up to the whole. Each figure is
the median over 7 blocks of 20 calls of the time per call; the parts that are products
(the loops' recurrent GEMM and, where made there, x W_xᵀ; the input projection; the
weight gradients) also give their GFLOP/s.
"""
from __future__ import annotations

import bptt  # noqa: F401  (before NumPy: bptt shortens OpenBLAS's idle spin, backends/settings.py)

import argparse
import statistics
import time
from collections import defaultdict

import numpy as np

from bptt.backends import settings
from bptt.cells import compiled, layer
from machine import recorded, stamp

TIMED = {"_inputs": "input projection", "t_times": "∂W products", "column_sums": "∂b sum",
         "rows_summed": "∂W_x one-hot sums", "transposed": "transposes"}


def instrument(spent):
    """Wrap the functions compiled.py calls so each call adds its time to spent[part]."""
    def timed(fn, part):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - t0
        return wrapper
    for name, part in TIMED.items():
        setattr(compiled, name, timed(getattr(compiled, name), part))
    run = compiled.loop_threads.run

    def loop(fn, args, parts):
        t0 = time.perf_counter()
        try:
            return run(fn, args, parts)
        finally:
            spent[f"{fn.__name__} loop"] += time.perf_counter() - t0
    compiled.loop_threads.run = loop


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="100,32,64,128", help="T,B,D,H")
    parser.add_argument("--cell", default="lstm", choices=("rnn", "lstm", "gru"), help="the cell (default: lstm)")
    args = parser.parse_args()
    shape = [v.strip() for v in args.shape.split(",")]
    if len(shape) != 4 or not all(v.isdigit() and int(v) > 0 for v in shape):
        parser.error(f"--shape: expected four positive integers T,B,D,H, got {args.shape!r}")
    T, B, D, H = map(int, shape)
    lay = layer(args.cell)
    rng = np.random.default_rng(0)
    f32 = np.float32
    params = {k: (rng.standard_normal(s) / np.sqrt(s[-1])).astype(f32) for k, s in lay.param_shapes(D, H).items()}
    x = rng.standard_normal((T, B, D)).astype(f32)
    dh = rng.standard_normal((T, B, H)).astype(f32)
    state0 = tuple(np.zeros((B, H), f32) for _ in lay.STATE)
    tape = lay.forward(params, x, state0)[2]
    lay.backward(params, dh, None, tape, need_dx=False)            # compiled and warm
    spent = defaultdict(float)
    instrument(spent)
    blocks = {"forward": defaultdict(list), "backward": defaultdict(list)}
    for _ in range(7):
        for phase, call in (("forward", lambda: lay.forward(params, x, state0)),
                            ("backward", lambda: lay.backward(params, dh, None, tape, need_dx=False))):
            spent.clear()
            t0 = time.perf_counter()
            for _ in range(20):
                call()
            whole = (time.perf_counter() - t0) / 20
            blocks[phase]["whole"].append(whole)
            for part, seconds in spent.items():
                blocks[phase][part].append(seconds / 20)
            blocks[phase]["rest"].append(whole - sum(spent.values()) / 20)
    # GEMM flops of the parts that are products: the recurrent one in each loop, x W_xᵀ in
    # the forward loop where the loop makes it (small weights, compiled._inputs) or before
    # it, and the two weight gradients after the backward loop.
    G = lay.GATES
    in_loop = compiled._inputs(params, x, None)[1].size > 0             # the layer's own choice: W_x packed
    flops = {"forward loop": 2.0 * T * B * G * H * (H + (D if in_loop else 0)),
             "input projection": 0.0 if in_loop else 2.0 * T * B * G * H * D,
             "backward loop": 2.0 * T * B * G * H * H, "∂W products": 2.0 * T * B * G * H * (H + D)}
    print(stamp())
    print(f"# {args.cell} (T, B, D, H) = {(T, B, D, H)}, float32; step GEMM: {settings.step_gemm()}; "
          f"loop threads: {settings.loop_threads()}; x W_xᵀ {'in the loop' if in_loop else 'before it'}")
    for phase, parts in blocks.items():
        for part, values in sorted(parts.items(), key=lambda kv: (kv[0] != "whole", kv[0] == "rest", kv[0])):
            ms = 1e3 * statistics.median(values)
            per_step = f"  ({1e3 * ms / T:.0f} µs a step)" if part.endswith("loop") else ""
            rate = f"  {flops[part] / ms / 1e6:.0f} GFLOP/s" if flops.get(part) else ""
            label = phase if part == "whole" else f"  {part}"
            print(f"{label:<28} {ms:8.2f} ms{per_step}{rate}")


if __name__ == "__main__":
    with recorded(__file__):
        main()
