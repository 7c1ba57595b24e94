"""Cost of truncated BPTT(k1, k2) against full BPTT: one LSTM layer, B=16, H=256, float32.

    python benchmarks/truncated.py

Each TBPTT(k1, k2) update backpropagates through k2 steps and recomputes the window's
forward from the state held at its start (docs/through_time.md says why the window is
recomputed rather than its stale tapes kept in a ring buffer). The table gives the time
of one sweep over T steps (all updates, at fixed parameters), and its ratio to full BPTT
over the same T. k2 = k1 is plain chunking. The recomputed context costs about (k2 − k1)/k1 of a
forward and a backward per step, plus a k1-step forward to move the window.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import bptt
from bptt import through_time as tt
from machine import recorded, stamp

T, B, D, H, O = 2000, 16, 64, 256, 8


def sweep(model, x, y, k1, k2):
    for _ in tt.truncated(model, x, y, k1, k2):
        pass


def median_seconds(fn, rounds=3):
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()     # --help; no options
    model = bptt.Model("lstm", D, H, O, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, D), dtype=np.float32)
    y = rng.standard_normal((T, B, O), dtype=np.float32)
    print(stamp())
    print(f"# LSTM T={T} B={B} D={D} H={H} float32")
    full = median_seconds(lambda: tt.full(model, x, y))
    print("| schedule | sweep s | vs full |")
    print("|---|---:|---:|")
    print(f"| full BPTT | {full:.2f} | 1.00 |")
    for k1, k2 in [(50, 50), (50, 100), (50, 200), (25, 50)]:
        sec = median_seconds(lambda: sweep(model, x, y, k1, k2))
        print(f"| TBPTT({k1}, {k2}) | {sec:.2f} | {sec / full:.2f} |", flush=True)


if __name__ == "__main__":
    with recorded(__file__):
        main()
