"""Where a fused LSTM layer's time goes: input projection, compiled loops, weight GEMM.

    python benchmarks/lstm_profile.py                      # (T, B, D, H) = (100, 32, 64, 128)
    python benchmarks/lstm_profile.py --shape 200,32,128,512

float32, the machine's BLAS threads; each figure is the median of 7 blocks of 20 calls.
The parts are timed alone, so they need not add up exactly to the whole.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from bptt.backends import cpu_loops, loop_threads
from bptt.backends.arrays import column_sums
from bptt.cells import lstm


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
    T, B, D, H = map(int, parser.parse_args().shape.split(","))
    if not cpu_loops.use_for(np.zeros(1, np.float32)):
        raise SystemExit("the compiled loops are off here (no Numba, no OpenBLAS, or BPTT_FUSED/BPTT_LOOPS=0)")
    rng = np.random.default_rng(0)
    f32 = np.float32
    params = {"W_x": (rng.standard_normal((4 * H, D)) / np.sqrt(D)).astype(f32),
              "W_h": (rng.standard_normal((4 * H, H)) / np.sqrt(H)).astype(f32),
              "b_h": np.zeros(4 * H, f32)}
    x = rng.standard_normal((T, B, D)).astype(f32)
    dh = rng.standard_normal((T, B, H)).astype(f32)
    state0 = (np.zeros((B, H), f32), np.zeros((B, H), f32))
    _, _, tape = lstm.forward(params, x, state0)
    W_h, b_h = params["W_h"], params["b_h"]
    valid, reset_at, resets = cpu_loops.step_flags(None, None, T, B)
    split = loop_threads.parts_for(B, 4 * H, H, T, meets=cpu_loops.STEP_GEMM != "packed") == 2
    gates, W_x_packed = cpu_loops.inputs_for_loop(params, x)    # empty, and the loop projects x_t, or projected
    in_loop = W_x_packed.size > 0
    h, c = np.empty((T, B, H), f32), np.empty((T, B, H), f32)
    rec, scratch = np.empty((B, 4 * H), f32), np.empty((B, H), f32)
    dz = np.empty((T, B, 4 * H), f32)
    dh_next, dc_next = np.zeros((B, H), f32), np.zeros((B, H), f32)
    inputs = np.empty((T * B, D + H), f32)

    def forward_loop():                   # as lstm.forward runs it: one thread or two (loop_threads.py)
        cpu_loops.run(cpu_loops.lstm_forward, (gates, x, W_x_packed, W_h, b_h, *state0, h, c, valid, reset_at, resets, rec,
                                               scratch, scratch.copy()), W_h, B, T, forward=True)

    def backward_loop():
        cpu_loops.run(cpu_loops.lstm_backward, (W_h, dh, True, dh_next, dc_next, tape.gates, tape.c, state0[1],
                                                tape.c, False, valid, False, reset_at, resets, dz, scratch, scratch),
                      W_h, B, T, forward=False)

    def weight_gemm():                    # as lstm.backward does it: [x_t | h_{t-1}] rows, one GEMM
        inputs[:, :D] = x.reshape(T * B, D)
        inputs[:B, D:] = state0[0]
        inputs[B:, D:] = tape.h[:-1].reshape((T - 1) * B, H)
        dz.reshape(T * B, 4 * H).T @ inputs

    parts = {
        "forward": lambda: lstm.forward(params, x, state0),
        "  input projection": lambda: cpu_loops.inputs_for_loop(params, x),
        "  compiled loop": forward_loop,
        "backward": lambda: lstm.backward(params, dh, None, tape, need_dx=False),
        "  compiled loop ": backward_loop,
        "  ∂W GEMM with its copies": weight_gemm,
        "  ∂b sum": lambda: column_sums(dz.reshape(T * B, 4 * H)),
    }
    how = "two threads (loop_threads.py)" if split else "one thread"
    modes = {2: "packed", 1: "BLAS, flipped", 0: "BLAS"}
    gemm = f"forward {modes[cpu_loops.gemm_args(W_h, B, True)[0]]}, backward {modes[cpu_loops.gemm_args(W_h, B, False)[0]]}"
    print(f"# LSTM (T, B, D, H) = {(T, B, D, H)}, float32; loops on {how}; step GEMM: {gemm}; input projection: "
          + ("in the forward loop, step by step (the line below: W_x packed)" if in_loop else "one GEMM"))
    for name, fn in parts.items():
        ms = median_ms(fn)
        per_step = f"  ({1e3 * ms / T:.0f} µs a step)" if "loop" in name else ""
        print(f"{name:<28} {ms:8.2f} ms{per_step}")


if __name__ == "__main__":
    main()
