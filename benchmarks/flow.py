"""How long the flow report takes: T = 1000, H = 128, one layer, float64 inside.

    python benchmarks/flow.py [--T 1000] [--hidden 128] [--batch 1 4]

Two shapes of loss: outputs at the last step only (the adding problem: one credit row)
and at every step (T credit rows, the credit pass's O(T²·B·G·H²) case). The Jacobian
pass forms the products of its default target steps (2–16 of them, about 6e10 flops).
Each cell is run once after a warm-up on a short sequence; the figure is wall time.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import bptt
from bptt.diagnostics import flow
from machine import recorded, stamp


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--T", type=int, default=1000, help="sequence length (default: 1000)")
    parser.add_argument("--hidden", type=int, default=128, help="hidden units (default: 128)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="batch sizes (default: 1 4)")
    args = parser.parse_args()
    if args.T < 2 or args.hidden < 1 or min(args.batch) < 1:
        parser.error(f"expected --T >= 2 (a lag to measure), --hidden and --batch >= 1; got --T {args.T} "
                     f"--hidden {args.hidden} --batch {' '.join(map(str, args.batch))}")
    T, H = args.T, args.hidden
    print(stamp())
    print(f"# flow report, T={T}, H={H}, D=2, O=1")
    print(f"{'cell':<6} {'B':>3} {'outputs':>8} {'seconds':>8} {'targets':>8} {'pairs':>6}")
    rng = np.random.default_rng(0)
    for cell in ("rnn", "lstm", "gru"):
        for outputs in ("last", "all"):
            m = bptt.Model(cell, 2, H, 1, outputs=outputs, seed=0)
            flow(m, rng.standard_normal((40, 1, 2)).astype(np.float32),
                 np.zeros((40, 1, 1) if outputs == "all" else (1, 1), np.float32))      # warm-up
            for B in args.batch:
                x = rng.standard_normal((T, B, 2)).astype(np.float32)
                y = rng.standard_normal((T, B, 1) if outputs == "all" else (B, 1)).astype(np.float32)
                start = time.perf_counter()
                r = flow(m, x, y)
                seconds = time.perf_counter() - start
                t, _, _ = r.measured_pairs()
                print(f"{cell:<6} {B:>3} {outputs:>8} {seconds:>8.2f} {len(set(t.tolist())):>8} {t.size:>6}")


if __name__ == "__main__":
    with recorded(__file__):
        main()
