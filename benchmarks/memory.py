"""Peak memory and time of full vs checkpointed BPTT: one LSTM layer, B=16, H=256, float32.

    python benchmarks/memory.py                      # T = 1000, 10000, 100000
    python benchmarks/memory.py --T 1000 --budget 100

Peak memory is what the gradient computation allocates above what was allocated before it
(parameters, inputs, targets), traced by tracemalloc: NumPy reports every array to it. It
is traced on a second call, as in a training run's later steps: the first call also
compiles the loops (or loads them from the cache), and those allocations are not the
gradient's.
Time is measured without tracing, in rounds: each round times full BPTT and then every
checkpointed schedule once, and the table gives the median over rounds (this machine is
shared, and single timings move by ±20%). Full BPTT is skipped where its estimated peak
would not fit in half this machine's memory.
"""
from __future__ import annotations

import bptt  # (before NumPy: bptt shortens OpenBLAS's idle spin, backends/settings.py)

import argparse
import gc
import os
import time
import tracemalloc

import numpy as np

from bptt import through_time as tt
from machine import recorded, stamp

B, D, H, O = 16, 64, 256, 8


def peak_bytes(fn):
    fn()                             # once untraced: the first call compiles (or loads) the loops
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak


def seconds(fn):
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def full_estimate_bytes(T):
    # tape: gates 4H + c + h per step; backward: δz 4H + factors and the head's rows
    return T * B * 4 * (6 * H + 4 * H + 2 * H + 2 * O)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--T", type=int, nargs="*", default=[1000, 10000, 100000], help="sequence lengths")
    parser.add_argument("--budget", nargs="*", default=["sqrt", "64"],
                        help="checkpointing budgets in steps of tape, or 'sqrt' for every √T steps")
    args = parser.parse_args()
    if any(T < 1 for T in args.T) or not all(b == "sqrt" or (b.isdigit() and int(b) >= 1) for b in args.budget):
        parser.error(f"expected --T >= 1 and --budget of 'sqrt' or integers >= 1; got --T {args.T} "
                     f"--budget {' '.join(args.budget)}")
    model = bptt.Model("lstm", D, H, O, seed=0)
    mem_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    print(stamp())
    print(f"# {mem_total / 2**30:.0f} GiB · LSTM B={B} D={D} H={H} float32")
    print("| T | schedule | peak MiB | time s | memory vs full | time vs full |")
    print("|---:|---|---:|---:|---:|---:|")
    for T in args.T:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, D), dtype=np.float32)
        y = rng.standard_normal((T, B, O), dtype=np.float32)
        runs = {}
        if full_estimate_bytes(T) < mem_total / 2:
            runs["full"] = lambda: tt.full(model, x, y)
        for budget in (None if b == "sqrt" else int(b) for b in args.budget):
            name = "checkpointed √T" if budget is None else f"checkpointed, budget {budget}"
            runs[name] = lambda budget=budget: tt.checkpointed(model, x, y, budget=budget)
        peaks = {name: peak_bytes(fn) for name, fn in runs.items()}
        rounds = 5 if T <= 1000 else (2 if T <= 10000 else 1)
        times = {name: [] for name in runs}
        for _ in range(rounds):
            for name, fn in runs.items():
                times[name].append(seconds(fn))
        if "full" not in runs:
            print(f"| {T} | full | (est. {full_estimate_bytes(T) / 2**30:.1f} GiB: skipped) | | | |", flush=True)
        for name in runs:
            sec = float(np.median(times[name]))
            if "full" in runs:
                ratio = float(np.median(np.array(times[name]) / np.array(times["full"])))
                ratios = f"{peaks[name] / peaks['full']:.3f} | {ratio:.2f}"
            else:
                ratios = " | "
            print(f"| {T} | {name} | {peaks[name] / 2**20:.1f} | {sec:.2f} | {ratios} |", flush=True)


if __name__ == "__main__":
    with recorded(__file__):
        main()
