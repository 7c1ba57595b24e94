"""`bptt train` end to end against the same training written as a plain PyTorch script.

Both sides train a character LSTM on the same data: the built-in corpus's training split
cut into B streams, T steps an update with the state carried across updates (truncated
BPTT), one-hot inputs made every update, softmax + cross-entropy, the global gradient norm
clipped at 5, Adam with a cosine schedule. bptt runs ``Trainer.update`` (what `bptt train`
runs between its evaluations); PyTorch runs nn.LSTM + nn.Linear, ``clip_grad_norm_`` and
torch.optim.Adam, the usual 60-line script. Each side is timed as a block of updates after
a short pause, in alternating rounds (on 2 cores one library's idle threads spin against
the other's); the ratio is taken within each round, and its median reported.

    python benchmarks/train.py                          # the default job and a 2-layer LSTM of 256
    python benchmarks/train.py --updates 50 --rounds 2  # quicker
    python benchmarks/train.py --jobs default

Prints one row per job: updates/s of each side (median over rounds) and bptt/PyTorch
(> 1: bptt trains faster), under the machine stamp (benchmarks/machine.py). A second line
per job puts both sides against the machine: the dense products one update needs
(``update_gflop``) times the updates/s, as a share of NumPy's float32 GEMM rate (1024³)
timed in each round right after the two sides; and the share bptt would need for 1.2×
PyTorch's updates/s. Both sides are counted by the products bptt runs: PyTorch also
multiplies its one-hot input (x W_ihᵀ and ∂W_ih, about 0.9 GFLOP more on the large job),
so its figure is the rate at which it delivers the same update. A share near 100% is a
job bound by the GEMM rate, where no arrangement of the same products runs much faster.
"""
from __future__ import annotations

import bptt  # noqa: F401  (before NumPy: bptt shortens OpenBLAS's idle spin, backends/settings.py)

import argparse
import math
import statistics
import tempfile
import time

import numpy as np
import torch

from cells import gemm_rate
from machine import cores, recorded, stamp

JOBS = {"default": dict(hidden=128, layers=1), "large": dict(hidden=256, layers=2)}


def bptt_side(job, run_dir):
    from bptt.train.config import Config
    from bptt.train.trainer import Trainer
    trainer = Trainer(Config(**JOBS[job], out=run_dir))
    return trainer, trainer.update


def torch_side(trainer):
    """The same model, data, schedule and clipping, in PyTorch; returns one update."""
    c, task = trainer.config, trainer.task
    V, H = task.vocab_size, c.hidden
    streams = task.streams(task.train, c.batch)                  # (L, B) codes, as bptt's
    lstm = torch.nn.LSTM(V, H, num_layers=c.layers)
    head = torch.nn.Linear(H, V)
    params = list(lstm.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=c.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    position = {"start": 0, "step": 0, "state": None}

    def update():
        T = c.seq_len
        lo = position["start"]
        if lo + T + 1 > streams.shape[0]:                        # an epoch is over
            lo, position["state"] = 0, None
        codes = torch.from_numpy(streams[lo:lo + T + 1])
        x = torch.nn.functional.one_hot(codes[:-1], V).float()   # (T, B, V)
        out, state = lstm(x, position["state"])
        loss = loss_fn(head(out).reshape(-1, V), codes[1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, c.clip_norm)
        position["step"] += 1
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(c, position["step"])
        optimizer.step()
        position["state"] = tuple(s.detach() for s in state)
        position["start"] = lo + T
        return loss.item()

    return update


def cosine_lr(c, step) -> float:
    """The learning rate of update ``step`` (1-based) on bptt's cosine schedule (train/schedules.py):
    c.lr at the first update, 0 at update c.steps and after."""
    return c.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - 1) / max(1, c.steps - 1))))


def update_gflop(c, vocab, gates=4) -> float:
    """GFLOP of the dense products in one update of an LSTM (gates = 4) language model with
    one-hot inputs, N = T·B rows: per layer the recurrent product forward and backward and
    ∂W_h; above the first layer also x W_xᵀ, ∂W_x and the ∂L/∂x passed down (the first
    layer's one-hot input is a row gather, no product); the head's forward, ∂W_y and ∂L/∂h."""
    N, H = c.seq_len * c.batch, c.hidden
    layer = 2.0 * N * H * gates * H
    return (3 * layer * c.layers + 3 * layer * (c.layers - 1) + 3 * 2.0 * N * H * vocab) / 1e9


def timed(update, n) -> float:
    """Updates per second over a block of n, after a pause that lets idle threads sleep."""
    time.sleep(0.5)
    start = time.perf_counter()
    for _ in range(n):
        update()
    return n / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", default="default,large", help="comma-separated: default, large")
    parser.add_argument("--updates", type=int, default=100, help="updates a block (default: 100)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: 3)")
    args = parser.parse_args()
    jobs = args.jobs.split(",")
    if not set(jobs) <= set(JOBS) or args.updates < 1 or args.rounds < 1:
        parser.error(f"expected --jobs from {', '.join(JOBS)}, --updates and --rounds >= 1; got --jobs {args.jobs} "
                     f"--updates {args.updates} --rounds {args.rounds}")
    torch.set_num_threads(cores())
    print(stamp())
    print(f"# torch threads {torch.get_num_threads()} · float32 · {args.updates} updates a block · "
          f"{args.rounds} rounds")
    print(f"{'job':<34} {'bptt upd/s':>11} {'torch upd/s':>12} {'bptt/torch':>11}")
    for job in jobs:
        with tempfile.TemporaryDirectory() as run_dir:
            trainer, ours = bptt_side(job, run_dir)
            theirs = torch_side(trainer)
            for _ in range(3):                                    # compile, warm caches
                ours()
                theirs()
            rates, gemm = [], []
            for _ in range(args.rounds):
                rates.append((timed(ours, args.updates), timed(theirs, args.updates)))
                gemm.append(gemm_rate(min_block_s=0.25))
        c = trainer.config
        label = f"{job}: LSTM {c.layers}×{c.hidden}, B {c.batch}, T {c.seq_len}"
        ratio = statistics.median(a / b for a, b in rates)
        print(f"{label:<34} {statistics.median(a for a, _ in rates):>11.1f} "
              f"{statistics.median(b for _, b in rates):>12.1f} {ratio:>11.2f}")
        print("  rounds (bptt, torch): " + ", ".join(f"({a:.1f}, {b:.1f})" for a, b in rates))
        flop = update_gflop(c, trainer.task.vocab_size)
        ours_share, theirs_share = (statistics.median(flop * r[i] / g for r, g in zip(rates, gemm)) for i in (0, 1))
        print(f"  {flop:.2f} GFLOP of products an update; against the GEMM rate of each round "
              f"({statistics.median(gemm):.0f} GFLOP/s, median): bptt {100 * ours_share:.0f}%, torch "
              f"{100 * theirs_share:.0f}%; 1.2× torch's updates/s needs {120 * theirs_share:.0f}%")


if __name__ == "__main__":
    np.seterr(all="ignore")
    with recorded(__file__):
        main()
