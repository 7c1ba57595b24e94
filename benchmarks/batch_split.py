"""A layer's training step as two half-batch passes on two threads of bptt's own, BLAS single-threaded.

The trainer's way on 2 cores for a small layer (bptt/batch_split.py, `--threads 2`): OpenBLAS limited to one
thread (threadpoolctl) for the whole measurement, and the batch cut in two halves that
two threads run at once, each its own forward and backward, its loops on one thread
(the compiled loops release the GIL; per stream everything is independent, so the
weight gradients are the halves' sums). Against it, the whole batch as a layer runs it
by itself (benchmarks/cells.py: on 2 cores each loop's steps shared by two threads,
backends/loop_threads.py, the other GEMMs on OpenBLAS's two) and PyTorch.

    python benchmarks/batch_split.py                     # LSTM, the batched core shapes
    python benchmarks/batch_split.py --cells lstm,gru --shapes 100,32,64,128
    python benchmarks/batch_split.py --trainer           # the trainer's update, both ways

With --trainer, ``Trainer.update`` of `bptt train`'s text job at several model sizes,
``--threads 2`` (halves) against ``--threads 1`` (the whole batch, the loops sharing each
step's rows by themselves where they do, BLAS on its own threads), alternating rounds;
the last column is what the trainer picks with --threads unset (train/trainer.py).
"""
from __future__ import annotations

import bptt  # noqa: F401  (before NumPy: bptt shortens OpenBLAS's idle spin, backends/settings.py)

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from bptt.backends import loop_threads

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cells import make_pair  # noqa: E402  (a sibling script, not a package)
from machine import block_time, recorded, stamp  # noqa: E402

SHAPES = [(100, 32, 64, 128), (100, 64, 128, 256), (200, 32, 128, 512), (1000, 16, 32, 128)]
ROUNDS = 3


def halves_step(pair, pool):
    """() -> the two halves' forward + backward on the pool's two threads, gradients summed."""
    layer, params, x, dh, state0 = pair.layer, pair.params, pair.x, pair.dh, pair.state0
    B = x.shape[1]
    parts = []
    for rows in (slice(0, B // 2), slice(B // 2, B)):
        parts.append((np.ascontiguousarray(x[:, rows]), np.ascontiguousarray(dh[:, rows]),
                      tuple(np.ascontiguousarray(s[rows]) for s in state0)))

    def half(part):
        xh, dhh, s0 = part
        with loop_threads.use(1):         # each half is one core's work, as in bptt/batch_split.py
            _, _, tape = layer.forward(params, xh, s0)
            return layer.backward(params, dhh, None, tape, need_dx=False)[2]

    def step():
        first, second = pool.map(half, parts)
        return {k: first[k] + second[k] for k in first}

    return step


JOBS = [("lstm", 1, 32, 32), ("lstm", 1, 64, 32), ("lstm", 1, 128, 32), ("lstm", 1, 128, 8),
        ("lstm", 2, 128, 32), ("lstm", 2, 256, 32), ("lstm", 1, 512, 32), ("gru", 1, 256, 32),
        ("rnn", 1, 256, 32)]


def trainer_rates(seconds=2.0):
    """updates/s of Trainer.update with threads 2 and 1 for each of JOBS (cell, layers, H, B)."""
    import tempfile

    from bptt.train.config import Config
    from bptt.train.trainer import Trainer
    print("# Trainer.update on the built-in text, T 64, float32; updates/s the median over "
          f"{ROUNDS} alternating rounds of about {seconds:.0f} s, the ratio the median within a round")
    print("| cell | layers × H | B | halves upd/s | whole upd/s | whole/halves | unset picks |")
    print("|---|---|---:|---:|---:|---:|---|")
    for cell, layers, H, B in JOBS:
        with tempfile.TemporaryDirectory() as out:
            kw = dict(cell=cell, layers=layers, hidden=H, batch=B)
            sides = {t: Trainer(Config(**kw, threads=t, out=f"{out}/{t}")) for t in (2, 1)}
            picks = "halves" if Trainer(Config(**kw, out=f"{out}/unset")).model.threads == 2 else "whole"
            counts = {}
            for t, trainer in sides.items():
                for _ in range(3):                                 # compile, warm caches
                    trainer.update()
                start = time.perf_counter()
                trainer.update()
                counts[t] = max(3, int(seconds / (time.perf_counter() - start)))
            rates = {2: [], 1: []}
            for _ in range(ROUNDS):
                for t, trainer in sides.items():
                    time.sleep(0.3)
                    start = time.perf_counter()
                    for _ in range(counts[t]):
                        trainer.update()
                    rates[t].append(counts[t] / (time.perf_counter() - start))
        ratio = statistics.median(w / h for w, h in zip(rates[1], rates[2]))
        print(f"| {cell} | {layers} × {H} | {B} | {statistics.median(rates[2]):.1f} | "
              f"{statistics.median(rates[1]):.1f} | {ratio:.2f} | {picks} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default="lstm", help="comma-separated: rnn, lstm, gru (default: lstm)")
    parser.add_argument("--shapes", nargs="*", help="T,B,D,H tuples (B even)")
    parser.add_argument("--trainer", action="store_true", help="the trainer's update, halves against whole")
    args = parser.parse_args()
    if args.trainer:
        print(stamp())
        return trainer_rates()
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    pool = ThreadPoolExecutor(2)
    print(stamp())
    print("# forward + backward (training step, no ∂L/∂x), float32; ms are each side's best "
          f"round, ratios the median over {ROUNDS} rounds of the ratio within a round")
    print("| cell | T, B, D, H | whole batch ms | two halves ms | torch ms | halves/whole "
          "| whole/torch | halves/torch | max |Δ grad| |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for cell in args.cells.split(","):
        for T, B, D, H in shapes:
            pair = make_pair(cell, T, B, D, H)
            split = halves_step(pair, pool)
            whole = pair.ours()[2]
            with threadpool_limits(1, user_api="blas"):
                halves = split()
            err = max(float(np.abs(whole[k] - halves[k]).max() / max(1.0, np.abs(whole[k]).max())) for k in whole)
            times = {"whole": [], "halves": [], "torch": []}
            for _ in range(ROUNDS):
                times["whole"].append(block_time(pair.ours, 0.4, 5))
                with threadpool_limits(1, user_api="blas"):
                    times["halves"].append(block_time(split, 0.4, 5))
                times["torch"].append(block_time(pair.theirs, 0.4, 5))

            def ratio(a, b):
                return statistics.median(x / y for x, y in zip(times[a], times[b]))

            best = {k: 1e3 * min(v) for k, v in times.items()}
            print(f"| {cell} | {T}, {B}, {D}, {H} | {best['whole']:.2f} | {best['halves']:.2f} | {best['torch']:.2f} "
                  f"| {ratio('halves', 'whole'):.2f} | {ratio('whole', 'torch'):.2f} | {ratio('halves', 'torch'):.2f} "
                  f"| {err:.1e} |", flush=True)
            time.sleep(0.3)


if __name__ == "__main__":
    with recorded(__file__):
        main()
