"""A long training run whose resident memory is recorded as it goes: does anything leak?

    python benchmarks/soak.py [--updates 20000] [--every 250] [--out docs/images/soak_rss.png] [--redraw]

A small LSTM on the adding problem, with everything a real run does: validation, metrics,
a checkpoint every 1000 updates (two kept), clipping and Adam. The resident set size
(VmRSS from /proc/self/status) is read every ``--every`` updates. The script prints the
RSS after warm-up, at the end and the growth per 1000 updates (a least-squares slope over
the second half), and draws the curve.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from machine import recorded, stamp


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=20000, help="updates of the run (default: 20000)")
    parser.add_argument("--every", type=int, default=250, help="updates between two readings of the RSS (default: 250)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "images" / "soak_rss.png"),
                        help="the figure's path (default: docs/images/soak_rss.png)")
    parser.add_argument("--redraw", action="store_true",
                        help="draw loss.png after every chunk too (matplotlib's caches then grow)")
    args = parser.parse_args()
    if args.every < 1 or args.updates < 4 * args.every:
        parser.error(f"--updates: expected at least 4 × --every ({4 * args.every}) for a slope over the second "
                     f"half of two points or more, got {args.updates}")
    import numpy as np

    from bptt.train.config import Config
    from bptt.train.trainer import Trainer
    with tempfile.TemporaryDirectory() as run:
        trainer = Trainer(Config(task="adding", cell="lstm", hidden=32, seq_len=30, batch=16, steps=args.updates,
                                 eval_every=1000, checkpoint_every=1000, out=run))
        draw = trainer.plot
        if not args.redraw:                     # a run draws loss.png once, at its end
            trainer.plot = lambda: None
        steps, rss = [], []
        start = time.perf_counter()
        for stop in range(args.every, args.updates + 1, args.every):
            trainer.train(progress=False, stop_at=stop)
            steps.append(stop)
            rss.append(rss_mib())
        seconds = time.perf_counter() - start
        draw()
    steps, rss = np.array(steps), np.array(rss)
    half = len(steps) // 2
    slope = np.polyfit(steps[half:], rss[half:], 1)[0] * 1000
    print(stamp())
    print(f"# {args.updates} updates in {seconds:.0f} s "
          f"(LSTM H=32, adding T=30, B=16, checkpoint and validation every 1000)")
    print(f"RSS after {steps[0]} updates: {rss[0]:.1f} MiB; after {steps[-1]}: {rss[-1]:.1f} MiB; "
          f"max {rss.max():.1f} MiB")
    print(f"growth over the second half: {slope:+.3f} MiB per 1000 updates")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.5), constrained_layout=True)
    ax.plot(steps, rss, lw=1)
    ax.set(xlabel="update", ylabel="resident memory (MiB)",
           title=f"soak: {args.updates} updates, {slope:+.3f} MiB per 1000 in the second half")
    ax.set_ylim(0, rss.max() * 1.2)
    fig.savefig(args.out, dpi=110)
    out, root = Path(args.out).resolve(), Path(__file__).resolve().parents[1]
    print(f"figure: {out.relative_to(root) if out.is_relative_to(root) else args.out}")     # the repository's: relative


if __name__ == "__main__":
    with recorded(__file__):
        main()
