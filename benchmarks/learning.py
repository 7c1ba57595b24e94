"""Full-size learning runs: the updates and seconds each model needs to reach a stated loss.

    python benchmarks/learning.py                    # everything (hours on 2 cores)
    python benchmarks/learning.py --only adding      # one family: adding, chrono, copy, digits, text,
                                                     # regularised

Adding problem at T=100 and T=200 for LSTM, GRU, tanh RNN and IRNN, with Arjovsky et
al.'s recipe (hidden 128, RMSprop lr 1e-3, batch 20; IRNN: relu, identity init, lr 1e-4
as Le et al.): the updates needed to reach validation MSE < 0.01, checked every 100
updates, or the MSE after --max-updates. Copy task at T=100 (LSTM and GRU; baseline
10·ln 8/120 = 0.173): the updates to reach a tenth of the baseline, or the loss after
--max-updates. The default text run (`bptt train`) and its validation loss.

chrono: the LSTM with chrono initialisation (T_max = T) on the adding problem at T=200,
batch 20, within 3,500 updates, and on the copy task at T=100 (T_max = 3T/2, Tallec &
Ollivier's choice). digits: scikit-learn's 8x8 digits row by row (T=8) and pixel by pixel
(T=64), the test accuracy of the best validation checkpoint's run. regularised: the
default text run with and without layer normalisation, at the same number of updates.
online: the adding problem at T=50 trained with each forward-mode method of
through_time/online.py (`bptt train --through-time`) against BPTT, an LSTM of 8 units
(chrono, Adam 1e-2, batch 20, one update per batch of sequences), within 8,000 updates:
the updates to half the baseline (MSE 1/12, as good as knowing one of the two numbers)
and to 0.01, checked every 250 updates, and the time per update.
"""
from __future__ import annotations

import bptt  # noqa: F401  (before NumPy: bptt shortens OpenBLAS's idle spin, backends/settings.py)

import argparse
import atexit
import shutil
import tempfile
import time

import numpy as np

from bptt.train.config import Config
from bptt.train.trainer import Trainer
from machine import recorded, stamp

ONLINE_UPDATES = 8000
ADDING = [("lstm", {}), ("gru", {}), ("rnn", {}),
          ("rnn", {"nonlinearity": "relu", "init": "identity", "lr": 1e-4})]


def until(config, target, max_updates, check_every=100, also=None):
    """Train until validation loss < target (checked every check_every updates): (updates,
    loss, seconds, the updates at which the loss first fell below ``also``, or None)."""
    trainer = Trainer(config)
    t0 = time.perf_counter()
    loss, first = None, None
    while trainer.step < max_updates:
        trainer.train(progress=False, stop_at=trainer.step + check_every)
        loss = trainer.evaluate()["val_loss"]
        if also is not None and first is None and loss < also:
            first = trainer.step
        if loss < target:
            break
    return trainer.step, loss, time.perf_counter() - t0, first


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["adding", "chrono", "copy", "digits", "text", "regularised", "online"],
                        default=None, help="one family of runs (default: all, hours on 2 cores)")
    parser.add_argument("--max-updates", type=int, default=10_000,
                        help="updates a run may take to reach its target (default: 10000)")
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="bptt-learning-")
    atexit.register(shutil.rmtree, out, True)            # the runs' folders are scratch
    print(stamp())
    if args.only != "online":
        print("| task | T | model | recipe | updates | validation loss | baseline | seconds |")
        print("|---|---:|---|---|---:|---:|---:|---:|")
    if args.only in (None, "adding"):
        for T in (100, 200):
            for cell, extra in ADDING:
                kw = dict(task="adding", cell=cell, hidden=128, seq_len=T, batch=20, optimizer="rmsprop",
                          lr=1e-3, schedule="constant", clip_norm=None, steps=args.max_updates,
                          eval_every=10**9, checkpoint_every=10**9, seed=0) | extra
                name = "IRNN" if extra.get("init") == "identity" else cell.upper()
                c = Config(**kw, out=f"{out}/adding-{T}-{name}")
                steps, loss, sec, _ = until(c, 0.01, args.max_updates)
                reached = f"{steps}" if loss < 0.01 else f"> {steps}"
                print(f"| adding | {T} | {name} | RMSprop {kw['lr']:g}, batch 20, H 128 | {reached} | "
                      f"{loss:.4f} | 0.1667 | {sec:.0f} |", flush=True)
    if args.only in (None, "copy"):
        for cell in ("lstm", "gru"):
            c = Config(task="copy", cell=cell, hidden=128, seq_len=100, batch=32, optimizer="adam", lr=2e-3,
                       schedule="constant", clip_norm=1.0, forget_bias=1.0 if cell == "lstm" else 0.0,
                       steps=args.max_updates, eval_every=10**9, checkpoint_every=10**9, seed=0,
                       out=f"{out}/copy-{cell}")
            baseline = 10 * np.log(8) / 120
            steps, loss, sec, _ = until(c, baseline / 10, args.max_updates, check_every=500)
            reached = f"{steps}" if loss < baseline / 10 else f"> {steps}"
            print(f"| copy | 100 | {cell.upper()} | Adam 2e-3, batch 32, H 128, clip 1 | {reached} | {loss:.4f} | "
                  f"{baseline:.4f} | {sec:.0f} |", flush=True)
    if args.only in (None, "chrono"):
        c = Config(task="adding", cell="lstm", hidden=128, seq_len=200, batch=20, optimizer="adam", lr=1e-3,
                   schedule="constant", clip_norm=1.0, init="chrono", steps=3500, eval_every=10**9,
                   checkpoint_every=10**9, seed=0, out=f"{out}/chrono-adding")
        steps, loss, sec, _ = until(c, 0.01, 3500)
        print(f"| adding | 200 | LSTM, chrono T_max 200 | Adam 1e-3, batch 20, H 128, clip 1 | "
              f"{steps if loss < 0.01 else f'> {steps}'} | {loss:.4f} | 0.1667 | {sec:.0f} |", flush=True)
        baseline = 10 * np.log(8) / 120
        for name, layer_norm in (("LSTM, chrono T_max 150", False), ("LSTM, layer norm, chrono T_max 150", True)):
            c = Config(task="copy", cell="lstm", hidden=128, seq_len=100, batch=32, optimizer="adam", lr=1e-3,
                       schedule="constant", clip_norm=1.0, init="chrono", chrono_t_max=150, layer_norm=layer_norm,
                       steps=args.max_updates, eval_every=10**9, checkpoint_every=10**9, seed=0,
                       out=f"{out}/chrono-copy-{layer_norm}")
            steps, loss, sec, _ = until(c, baseline / 10, args.max_updates, check_every=500)
            print(f"| copy | 100 | {name} | Adam 1e-3, batch 32, H 128, clip 1 | "
                  f"{steps if loss < baseline / 10 else f'> {steps}'} | {loss:.4f} | {baseline:.4f} | {sec:.0f} |",
                  flush=True)
    if args.only in (None, "digits"):
        for T, steps, name, kw in ((8, 3000, "LSTM", {}),
                                   (8, 3000, "LSTM, input + recurrent dropout 0.1",
                                    {"input_dropout": 0.1, "recurrent_dropout": 0.1}),
                                   (8, 3000, "LSTM, layer norm", {"layer_norm": True}),
                                   (8, 3000, "bidirectional LSTM", {"bidirectional": True}),
                                   (64, 6000, "LSTM", {})):
            trainer = Trainer(Config(task="digits", cell="lstm", hidden=128, seq_len=T, batch=32, steps=steps,
                                     lr=3e-3 if T == 8 else 1e-3, eval_every=250, checkpoint_every=10**9, seed=0,
                                     out=f"{out}/digits-{T}-{len(name)}", **kw))
            t0 = time.perf_counter()
            final = trainer.train(progress=False)
            reading = "rows" if T == 8 else "pixels"
            print(f"| digits ({reading}) | {T} | {name} | Adam {trainer.config.lr:g} cosine, batch 32, H 128 | {steps} | "
                  f"{final['val_loss']:.4f}; test accuracy {final['test_acc']:.3f} | {trainer.task.baseline:.4f} | "
                  f"{time.perf_counter() - t0:.0f} |", flush=True)
    if args.only in (None, "regularised"):
        for name, kw in (("LSTM", {}), ("LSTM, layer norm", {"layer_norm": True})):
            trainer = Trainer(Config(out=f"{out}/text-{len(name)}-{len(kw)}", **kw))
            t0 = time.perf_counter()
            final = trainer.train(progress=False)
            print(f"| text (stdlib) | 64 | {name} | `bptt train` defaults | {trainer.step} | {final['val_loss']:.4f} | "
                  f"bigram {trainer.task.baselines['bigram']:.4f} | {time.perf_counter() - t0:.0f} |", flush=True)
    if args.only in (None, "text"):
        trainer = Trainer(Config(out=f"{out}/text"))
        t0 = time.perf_counter()
        final = trainer.train(progress=False)
        b = trainer.task.baselines
        print(f"| text (stdlib) | 64 | LSTM | `bptt train` defaults | {trainer.step} | {final['val_loss']:.4f} | "
              f"bigram {b['bigram']:.4f} | {time.perf_counter() - t0:.0f} |", flush=True)
    if args.only in (None, "online"):
        print(f"\n# online: adding, T = 50, LSTM H 8, chrono, Adam 1e-2, batch 20, {ONLINE_UPDATES} updates at most; "
              f"baseline 0.1667")
        print("| method | updates to half the baseline (< 0.0833) | updates to < 0.01 | validation MSE | "
              "ms an update |")
        print("|---|---:|---:|---:|---:|")
        for method in ("bptt", "rtrl", "snap1", "snap2", "eprop", "uoro"):
            c = Config(task="adding", cell="lstm", hidden=8, seq_len=50, batch=20, optimizer="adam", lr=1e-2,
                       schedule="constant", init="chrono", through_time=method, steps=ONLINE_UPDATES,
                       eval_every=10**9, checkpoint_every=10**9, seed=0, out=f"{out}/online-{method}")
            steps, loss, sec, half = until(c, 0.01, ONLINE_UPDATES, check_every=250, also=1 / 12)
            print(f"| {method} | {half if half else f'> {steps}'} | {steps if loss < 0.01 else f'> {steps}'} | "
                  f"{loss:.4f} | {1e3 * sec / steps:.0f} |", flush=True)


if __name__ == "__main__":
    with recorded(__file__):
        main()
