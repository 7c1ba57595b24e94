"""Where a layer's time goes: input projection, compiled loops, weight GEMM (LSTM by default).

    python benchmarks/lstm_profile.py                      # (T, B, D, H) = (100, 32, 64, 128)
    python benchmarks/lstm_profile.py --shape 200,32,128,512 --cell gru

float32, the machine's BLAS threads; each figure is the median of 7 blocks of 20 calls.
The parts are timed alone, as cells/compiled.py runs them, so they need not add up
exactly to the whole.
"""
from __future__ import annotations

import bptt  # noqa: F401  (before NumPy: bptt shortens OpenBLAS's idle spin, backends/settings.py)

import argparse
import statistics
import time

import numpy as np

from bptt.backends import bulk, loop_threads, settings
from bptt.backends.arrays import column_sums
from bptt.cells import compiled, layer
from machine import stamp


def median_ms(fn, calls=20, blocks=7):
    fn()
    times = []
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return 1e3 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="100,32,64,128", help="T,B,D,H")
    parser.add_argument("--cell", default="lstm", choices=("rnn", "lstm", "gru"))
    args = parser.parse_args()
    T, B, D, H = map(int, args.shape.split(","))
    lay = layer(args.cell)
    rng = np.random.default_rng(0)
    f32 = np.float32
    params = {k: (rng.standard_normal(s) / np.sqrt(s[-1])).astype(f32) for k, s in lay.param_shapes(D, H).items()}
    x = rng.standard_normal((T, B, D)).astype(f32)
    dh = rng.standard_normal((T, B, H)).astype(f32)
    state0 = tuple(np.zeros((B, H), f32) for _ in lay.STATE)
    h, _, tape = lay.forward(params, x, state0)
    GH = params["W_h"].shape[0]
    S, A = len(lay.STATE), tape.aux.shape[2]
    loops = lay._loops()
    W_h = params["W_h"]
    extra = compiled._flat([params[k] for k in lay.extra_names(params)], f32)
    valid, reset_at, resets = compiled._flags(None, None, T, B)
    u, W_x_packed = compiled._inputs(params, x, None)
    slab, out = np.empty((T, B, S, H), f32), np.empty((T, B, H), f32)
    aux = np.empty((T, B, A), f32)
    du = np.empty((T, B, GH), f32)
    dv = du if lay.cell.dv_is_du else np.empty((T, B, GH), f32)
    start = np.stack(state0, axis=1)
    parts = loop_threads.parts_for(B, GH, H, T)

    def forward_loop():
        args = (u, x, W_x_packed, params["b_h"], extra, start, slab, out, aux, valid, reset_at, resets,
                np.empty((B, GH), f32), np.empty((B, S, H), f32), compiled._gemm(W_h, B, True), lay.cell.option)
        loop_threads.run(loops.forward, args, parts)

    def backward_loop():
        args = (dh, True, np.zeros((B, S, H), f32), np.zeros((B, H), f32), tape.z, tape.aux, extra, start, tape.slab,
                valid, reset_at, resets, np.empty((B, S, H), f32), du, dv, np.empty((B, S, H), f32),
                np.zeros((B, extra.size), f32), compiled._gemm(W_h, B, False), lay.cell.option)
        loop_threads.run(loops.backward, args, parts)

    def weight_gemm():                    # as CompiledLayer.backward (no resets): dᵀ · rows
        du2, dv2 = du.reshape(T * B, GH), dv.reshape(T * B, GH)
        bulk.t_times(du2, x.reshape(T * B, D))
        bulk.t_times(dv2[:B], state0[0]) + bulk.t_times(dv2[B:], h[:-1].reshape((T - 1) * B, H))

    pieces = {
        "forward": lambda: lay.forward(params, x, state0),
        "  input projection": lambda: compiled._inputs(params, x, None),
        "  compiled loop": forward_loop,
        "backward": lambda: lay.backward(params, dh, None, tape, need_dx=False),
        "  compiled loop ": backward_loop,
        "  ∂W products": weight_gemm,
        "  ∂b sum": lambda: column_sums(du.reshape(T * B, GH)),
    }
    how = "two threads (loop_threads.py)" if parts == 2 else "one thread"
    print(stamp())
    print(f"# {args.cell} (T, B, D, H) = {(T, B, D, H)}, float32; loops on {how}; step GEMM: "
          f"{settings.step_gemm()}; input projection: "
          + ("in the forward loop, step by step" if W_x_packed.size else "one GEMM"))
    for name, fn in pieces.items():
        ms = median_ms(fn)
        per_step = f"  ({1e3 * ms / T:.0f} µs a step)" if "loop" in name else ""
        print(f"{name:<28} {ms:8.2f} ms{per_step}")


if __name__ == "__main__":
    main()
