"""`bptt flow`: the gradient through time of one or several cells, before and after training.

For each cell it builds the task's model (as `bptt train` would), measures the flow report
on a fixed batch of the task at initialisation, trains it for ``--train`` updates into
OUT/<cell> (a run folder `bptt resume`/`bptt flow --run` can read) and measures again;
or it measures saved runs (``--run``). It writes OUT/flow.png and OUT/flow.json and prints
one table row per report. ``--explode`` adds the clipping study (OUT/clipping.png).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .cells import CELLS
from .diagnostics import flow
from .diagnostics.plots import plot_clipping, plot_flow
from .train.config import Config
from .train.explosion import clipping_study
from .train.trainer import Trainer


def add_parser(sub):
    p = sub.add_parser("flow", help="see the gradient flow through time: per-step norms, credit, Jacobians, bound")
    p.add_argument("--task", default="adding", help="adding, copy, sine or text (default: adding)")
    p.add_argument("--seq-len", type=int, default=200, help="sequence length (default: 200)")
    p.add_argument("--cell", default="rnn,lstm", help="cells to compare, comma-separated (default: rnn,lstm)")
    p.add_argument("--hidden", type=int, default=64, help="hidden units (default: 64)")
    p.add_argument("--nonlinearity", default="tanh", help="f of the Elman RNN (default: tanh)")
    p.add_argument("--batch", type=int, default=4, help="sequences in the measured batch (default: 4)")
    p.add_argument("--train", type=int, default=0, metavar="UPDATES",
                   help="also measure after this many updates of `bptt train` defaults (default: 0)")
    p.add_argument("--lr", type=float, default=None, help="learning rate for --train (default: train's)")
    p.add_argument("--run", action="append", default=[], metavar="RUN",
                   help="measure a saved run at its latest checkpoint instead (repeatable)")
    p.add_argument("--explode", action="store_true",
                   help="also train from an exploding initialisation with and without clipping")
    p.add_argument("--gain", type=float, default=3.0, help="--explode: η = γ·σ_max(W_h) at init (default: 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: runs/flow-DATE-TIME)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _batch(trainer, B, seed):
    """A fixed batch of the trainer's task: synthetic draws, or B streams of the text's validation split."""
    task, dtype = trainer.task, trainer.model.dtype
    if trainer.text:
        T = trainer.config.seq_len
        codes = task.streams(task.valid, B)
        if codes.shape[0] < T + 1:
            raise ValueError(f"--seq-len: the validation text gives {codes.shape[0] - 1} steps per stream, "
                             f"expected at least {T}")
        return task.one_hot(codes[:T], dtype), codes[1:T + 1]
    return task.batch(np.random.default_rng(seed + 7), B, dtype)


def _row(label, s):
    return (f"{label:<24} {s['loss']:>9.4f} {s['sigma_max']:>7.3f} {s['eta']:>6.3f} {s['jacobian_rate']:>7.3f} "
            f"{s['grad_first_over_last']:>10.2e} {s['long_lag_share']:>7.3f} {s['seconds']:>6.1f}")


HEADER = (f"{'':<24} {'loss':>9} {'σmax':>7} {'η':>6} {'rate':>7} {'‖g₁‖/‖g_T‖':>10} {'τ≥10':>7} {'sec':>6}\n"
          "rate: per-step factor fitted to ‖∂s_t/∂s_k‖ ≈ rate^(t−k); τ≥10: share of ‖∂L/∂W_h‖ from lags ≥ 10")


def run(args) -> int:
    cells = [c.strip() for c in args.cell.split(",") if c.strip()]
    for c in cells:
        if c not in CELLS:
            raise ValueError(f"--cell: expected names from {', '.join(CELLS)}, got {c!r}")
    for name in ("seq_len", "hidden", "batch"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    if args.train < 0:
        raise ValueError(f"--train: expected a number of updates >= 0, got {args.train}")
    out = Path(args.out or time.strftime("runs/flow-%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    reports = {}
    if args.run:
        for run_dir in args.run:
            trainer = Trainer.resume(run_dir)
            x, y = _batch(trainer, args.batch, args.seed)
            reports[f"{trainer.model.cell} @ {trainer.step} ({Path(run_dir).name})"] = flow(trainer.model, x, y)
    else:
        for cell in cells:
            config = Config(task=args.task, cell=cell, hidden=args.hidden, seq_len=args.seq_len,
                            nonlinearity=args.nonlinearity, steps=max(args.train, 1), seed=args.seed,
                            out=str(out / cell), **({} if args.lr is None else {"lr": args.lr}))
            trainer = Trainer(config.check())
            x, y = _batch(trainer, args.batch, args.seed)
            name = f"rnn-{args.nonlinearity}" if cell == "rnn" else cell
            reports[f"{name}, init"] = flow(trainer.model, x, y)
            if args.train:
                trainer.train(progress=not args.quiet)
                reports[f"{name}, {args.train} updates"] = flow(trainer.model, x, y)
    title = f"{args.task}, T = {args.seq_len}" if not args.run else "saved runs"
    figure = plot_flow(reports, out / "flow.png", title=title)
    (out / "flow.json").write_text(json.dumps({k: r.summary() for k, r in reports.items()}, indent=1))
    print(HEADER)
    for label, r in reports.items():
        print(_row(label, r.summary()))
    print(f"figure: {figure}")
    if args.explode:
        study = clipping_study(cell=cells[0], task=args.task if args.task != "text" else "adding",
                               seq_len=min(args.seq_len, 50), gain=args.gain, seed=args.seed,
                               nonlinearity=args.nonlinearity)
        print(f"\nexploding start ({study.label}, η = {study.gain:g}, plain SGD, same batches):")
        print(f"{'':<16} {'median ‖g‖':>11} {'max ‖g‖':>10} {'>10×clip':>9} {'final loss':>11}  diverged at")
        for s in study.summary():
            print(f"{s['run']:<16} {s['median_norm']:>11.3g} {s['max_norm']:>10.3g} {s['spikes']:>9d} "
                  f"{s['final_loss']:>11.4g}  {s['diverged_at'] if s['diverged_at'] is not None else '-'}")
        print(f"figure: {plot_clipping(study, out / 'clipping.png')}")
    return 0
