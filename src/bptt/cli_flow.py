"""`bptt flow`: the gradient through time of one or several cells, before and after training.

For each cell it builds the task's model (as `bptt train` would), measures the flow report
on a fixed batch of the task at initialisation, trains it for ``--train`` updates into
OUT/<cell> (a run folder `bptt resume`/`bptt flow --run` can read) and measures again
(a run there that the same command started and a signal stopped goes on from its
checkpoint);
or it measures saved runs (``--run``). It writes OUT/flow.png and OUT/flow.json and prints
one table row per report. ``--explode`` adds the clipping study (OUT/clipping.png),
``--estimators`` OUT/estimators.png. An OUT that holds one of the files it would write is
refused unless ``--overwrite``.

Every option is checked by ``check`` before anything is written or trained: a bad value is
a ValueError naming the option, what was expected and what came (one line, exit 2).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from . import _checks
from .cells import CELLS, resolve
from .diagnostics import flow
from .diagnostics.estimators import estimator_error
from .diagnostics.plots import plot_clipping, plot_estimator_error, plot_flow
from .distributed import World
from .ops import ACTIVATIONS
from .train import folder, runs
from .train.config import Config
from .train.explosion import clipping_study
from .train.tasks import TASKS, make_task
from .through_time.online import ESTIMATORS
from .train.trainer import Trainer

# Values every option that takes one must refuse at the door (tests/test_cli_flow.py runs
# each: exit 2, one line naming the option, nothing written).
BAD_VALUES = {
    "--task": ["nope", "", "ADDING"],
    "--seq-len": ["0", "-5", "1", "x", "2.5"],             # 1: the adding task (the default) needs 2
    "--cell": ["foo", "rnn,foo", "", ",", "rnn,rnn"],
    "--hidden": ["0", "-1", "x"],
    "--nonlinearity": ["foo", "", "Tanh"],
    "--batch": ["0", "-2", "x"],
    "--train": ["-1", "x", "1.5"],
    "--lr": ["-1", "0", "nan", "inf", "x"],
    "--run": ["/nonexistent/bptt-flow-run", "/", ""],
    "--gain": ["0", "-3", "nan", "inf", "x"],
    "--seed": ["-3", "x", "1.5"],
    "--out": ["", "/dev/null", "/dev/null/flow"],
    "--estimators": ["nope", "", "snap1,nope", "snap1,,uoro"],
}


def add_parser(sub):
    integer, number = _checks.argument(int, "an integer"), _checks.argument(float, "a number")
    p = sub.add_parser("flow", help="see the gradient flow through time: per-step norms, credit, Jacobians, bound")
    p.add_argument("--task", default="adding",
                   help="adding, copy, sine, digits (--seq-len 8: rows, 64: pixels) or text (default: adding)")
    p.add_argument("--seq-len", type=integer, default=200,
                   help="sequence length, >= 1 (>= 2 for adding; text: at most the validation split's "
                        "characters per stream) (default: 200)")
    p.add_argument("--cell", default="rnn,lstm", help="cells to compare, comma-separated, each once: "
                                                      "rnn, lstm, gru or package.module:ClassName "
                                                      "(default: rnn,lstm)")
    p.add_argument("--hidden", type=integer, default=64, help="hidden units, >= 1 (default: 64)")
    p.add_argument("--nonlinearity", default="tanh",
                   help=f"f of the Elman RNN (--cell rnn; the other cells keep tanh): {', '.join(ACTIVATIONS)} "
                        f"(default: tanh)")
    p.add_argument("--batch", type=integer, default=4, help="sequences in the measured batch, >= 1 (default: 4)")
    p.add_argument("--train", type=integer, default=0, metavar="UPDATES",
                   help="also measure after this many updates (>= 0) of `bptt train` defaults (default: 0)")
    p.add_argument("--lr", type=number, default=None,
                   help="learning rate for --train, a positive number (default: train's)")
    p.add_argument("--run", action="append", default=[], metavar="RUN",
                   help="measure a saved run (a folder `bptt train` wrote) at its latest checkpoint "
                        "instead (repeatable)")
    p.add_argument("--explode", action="store_true",
                   help="also train the first --cell (32 units, W_h scaled to η = --gain) twice from that "
                        "initialisation, without and with the gradient norm clipped at 1: 300 SGD updates on "
                        "the same batches of --task (adding for text), T = min(--seq-len, 50) (digits: --seq-len, "
                        "its only lengths)")
    p.add_argument("--gain", type=number, default=None,
                   help="--explode: η = γ·σ_max(W_h) at init, a positive number (default: clipping_study's, 3)")
    p.add_argument("--seed", type=integer, default=0,
                   help="random seed of the models, the measured batch and training, >= 0 (default: 0)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder; flow trains each cell into DIR/<cell>, which must be new or empty, or "
                        "hold the run that flow with the same options left there when stopped (it goes on from its "
                        "checkpoint), and refuses a DIR that holds the files of its report (default: "
                        "runs/flow-DATE-TIME)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the report's files where DIR holds them: flow.json, flow.png, and "
                        "estimators.png and clipping.png where written (default: a DIR holding one is refused, "
                        "nothing written)")
    p.add_argument("--estimators", default=None, metavar="LIST",
                   help="also measure online methods' influence error against RTRL per step, on the batch's "
                        "first sequence: comma-separated from rtrl, snap1, snap2, uoro, kf-rtrl, eprop, rflo "
                        "(RTRL's cost: use a small --hidden)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def check(args) -> tuple:
    """Every option of `bptt flow`, checked before anything is written or trained: a
    ValueError that names the option, what was expected and what came. Returns the cells
    and the output folder (not created yet)."""
    if args.task not in TASKS:
        raise ValueError(f"--task: expected one of {', '.join(TASKS)}, got {args.task!r}")
    for name in ("seq_len", "hidden", "batch"):
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer, got {value!r}")
    explode_task, _ = _explode_task(args)
    if args.seq_len < 2 and (args.task == "adding" or (args.explode and explode_task == "adding")):
        raise ValueError(f"--seq-len: expected at least 2 for the adding task (one marked value in each "
                         f"half of the sequence), got {args.seq_len}")
    if args.seq_len not in (8, 64) and (args.task == "digits" or (args.explode and explode_task == "digits")):
        raise ValueError(f"--seq-len: --task digits reads an 8x8 image row by row (--seq-len 8) or pixel by "
                         f"pixel (--seq-len 64), got {args.seq_len}")
    cells = [c.strip() for c in str(args.cell).split(",")]
    if not any(cells):
        raise ValueError(f"--cell: expected one or more of {', '.join(CELLS)}, comma-separated, got {args.cell!r}")
    for c in cells:
        if c not in CELLS and ":" not in c:
            raise ValueError(f"--cell: expected names from {', '.join(CELLS)} or package.module:ClassName, got {c!r}"
                             + (f" in {args.cell!r}" if len(cells) > 1 else ""))
        if c not in CELLS:
            try:
                resolve(c)                                  # a user's cell, built as `bptt train --cell` builds it
            except ValueError as exc:
                raise ValueError(f"--{exc}") from None
    if len(set(cells)) < len(cells):
        raise ValueError(f"--cell: expected each cell once (each trains into OUT/<cell>), got {args.cell!r}")
    if args.nonlinearity not in ACTIVATIONS:
        raise ValueError(f"--nonlinearity: expected one of {', '.join(ACTIVATIONS)}, got {args.nonlinearity!r}")
    if args.nonlinearity != "tanh" and "rnn" not in cells:
        raise ValueError(f"--nonlinearity: the f of the Elman RNN, which --cell {args.cell} does not include; "
                         f"expected tanh (the default) or --cell rnn among the cells, got {args.nonlinearity!r}")
    if isinstance(args.train, bool) or not isinstance(args.train, int) or args.train < 0:
        raise ValueError(f"--train: expected a number of updates >= 0, got {args.train!r}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr: expected a positive number, got {args.lr!r}")
    if args.gain is not None and not (math.isfinite(args.gain) and args.gain > 0):
        raise ValueError(f"--gain: expected a positive number, got {args.gain!r}")
    if len({os.path.realpath(r) for r in args.run}) != len(args.run):
        raise ValueError(f"--run: expected each run once, got {args.run}")
    if isinstance(args.seed, bool) or not isinstance(args.seed, int) or args.seed < 0:
        raise ValueError(f"--seed: expected an integer >= 0, got {args.seed!r}")
    if args.run:
        defaults = vars(add_parser(argparse.ArgumentParser().add_subparsers()).parse_args([]))
        for name in ("hidden", "train", "lr") + (() if args.explode else ("task", "seq_len", "cell", "nonlinearity")):
            if getattr(args, name) != defaults[name]:
                raise ValueError(f"--{name.replace('_', '-')}: describes the models flow builds; --run measures "
                                 f"the run's own model on its own task"
                                 + ("" if name in ("hidden", "train", "lr") else " (--explode uses it)"))
    if args.lr is not None and not args.train:
        raise ValueError(f"--lr: the learning rate of --train, which is 0 (no training); got --lr {args.lr} alone")
    if args.gain is not None and not args.explode:
        raise ValueError(f"--gain: the initial gain of --explode, which is not given; got --gain {args.gain} alone")
    for run_dir in args.run:
        where = Path(run_dir)
        if not str(run_dir).strip():
            raise ValueError(f"--run: expected a run folder's name, got {run_dir!r}")
        if not where.is_dir():
            raise ValueError(f"--run: expected a run folder, got {run_dir!r} "
                             f"({'a file' if where.exists() else 'no such folder'})")
        runs.check_readable(where, "--run")
        if not runs.checkpoints(where):
            raise ValueError(f"--run: expected a run folder with a checkpoint (ckpt-*.json and its "
                             f".safetensors), got {run_dir!r} (none in it)")
    if args.estimators is not None:
        methods = [m.strip() for m in str(args.estimators).split(",")]
        if not all(m in ESTIMATORS for m in methods) or len(set(methods)) != len(methods):
            raise ValueError(f"--estimators: expected names from {', '.join(ESTIMATORS)}, comma-separated, "
                             f"each once, got {args.estimators!r}")
        if {"kf-rtrl", "rflo"} & set(methods) and (args.run or any(c != "rnn" for c in cells)):
            raise ValueError(f"--estimators: kf-rtrl and rflo are defined for the Elman layer; --cell must be rnn, "
                             f"got --estimators {args.estimators!r} with --cell {args.cell}")
    if args.out is not None and not str(args.out).strip():
        raise ValueError("--out: expected a folder name, got ''")
    if args.out is None:                      # run() makes a new runs/flow-DATE-TIME[-n]
        folder.check_folder(Path("runs"), "--out", writer="bptt flow")
        out = None
    else:
        out = Path(args.out)
        folder.check_folder(out, "--out", writer="bptt flow")
    if out is not None and out.is_dir() and folder.run_step(out) is not None:
        raise ValueError(f"--out: {os.fspath(out)} is a training run's folder; expected a new folder, an empty "
                         f"one or an earlier flow report's")
    if not args.run and out is not None:
        for cell in cells:
            if args.train and _started_here(args, cell, out):
                continue                                    # its run goes on (_report)
            try:
                folder.check_new(out / _folder(cell), option="--out")    # flow trains into OUT/<cell>
            except folder.FolderError as exc:
                raise ValueError(f"{str(exc).split('; ')[0]}; flow trains each cell into a new or empty "
                                 f"OUT/<cell>, or goes on with the run flow with the same options left there: "
                                 f"choose another --out") from None
    if out is not None and out.is_dir():
        _check_report_files(out, args)
    if not args.run and args.task == "text":
        task = make_task("text", args.seq_len)
        _check_text_length(task, args.seq_len, args.batch, "--seq-len")
    return cells, out


def _explode_task(args) -> tuple:
    """The task and T that --explode trains on: --task (adding for text) at T = min(--seq-len,
    50); digits at --seq-len itself, since 8 (rows) and 64 (pixels) are the only lengths an
    image has."""
    task = args.task if args.task != "text" else "adding"
    return task, args.seq_len if task == "digits" else min(args.seq_len, 50)


def _report_files(args) -> list:
    """The files the report writes in OUT: flow.json and flow.png, estimators.png with
    --estimators, clipping.png with --explode."""
    return (["flow.json", "flow.png"] + (["estimators.png"] if args.estimators is not None else [])
            + (["clipping.png"] if args.explode else []))


def _check_report_files(out: Path, args):
    """An earlier report in OUT is refused unless --overwrite; a folder where a file of the
    report goes is refused in any case."""
    found = [out / name for name in _report_files(args) if os.path.lexists(out / name)]
    for path in found:
        if path.is_dir():
            raise ValueError(f"--out: {os.fspath(path)} is a folder; expected a file that --overwrite replaces, "
                             f"got a folder: choose another --out, or move it away")
    if found and not args.overwrite:
        names = ", ".join(os.fspath(p) for p in found)
        them = "it" if len(found) == 1 else "them"
        raise ValueError(f"--out: {names} {'exists' if len(found) == 1 else 'exist'}; expected a folder without "
                         f"a flow report, got {os.fspath(out)}; choose another --out, remove {them}, or pass "
                         f"--overwrite to replace {them}")


def _check_text_length(task, T, B, option):
    """B streams of the validation text must each give T steps (and the targets one more)."""
    steps = task.streams(task.valid, B).shape[0] - 1
    if steps >= T:
        return
    if option == "--batch":                   # a saved run: its sequence length is fixed
        raise ValueError(f"--batch: expected at most {len(task.valid) // (T + 1)} streams, so that the "
                         f"validation text gives each the run's {T} steps, got {B}")
    raise ValueError(f"--seq-len: expected at most {steps}, the steps the validation text gives each of "
                     f"--batch {B} streams, got {T}")


def _batch(trainer, B, seed, option):
    """A fixed batch of the trainer's task: synthetic draws, or B streams of the text's validation split."""
    task, dtype = trainer.task, trainer.model.dtype
    if trainer.text:
        T = trainer.config.seq_len
        _check_text_length(task, T, B, option)
        codes = task.streams(task.valid, B)
        return task.one_hot(codes[:T], dtype), codes[1:T + 1]
    return task.batch(np.random.default_rng(seed + 7), B, dtype)


def _estimators(args, models, out, title):
    """--estimators: each method's influence error (O5) per step, on the first sequence."""
    methods = [m.strip() for m in args.estimators.split(",")]
    errors = {label: estimator_error(model, x[:, :1], methods, rng=args.seed) for label, (model, x) in models.items()}
    figure = plot_estimator_error(errors, out / "estimators.png", title=title)
    def steps(T):                     # a quarter, half and all of T steps, counted from 1
        return sorted({max(1, T // 4), max(1, T // 2), T})

    lengths = {len(e) for by_method in errors.values() for e in by_method.values()}   # --run: each run's own T
    where = "at steps " + ", ".join(map(str, steps(lengths.pop()))) if len(lengths) == 1 else \
        "at a quarter, half and all of each run's steps"
    print(f"\ninfluence error ‖M̂_t − M_t‖/‖M_t‖ against RTRL, first sequence, {where}")
    for label, by_method in errors.items():
        for method, e in by_method.items():
            print(f"{label:<24} {method:<8} " + " ".join(f"{e[t - 1]:>9.3g}" for t in steps(len(e))))
    print(f"figure: {figure}")


def _config(args, cell, out) -> Config:
    """The run flow trains for ``cell`` in OUT/<cell>."""
    return Config(task=args.task, cell=cell, hidden=args.hidden, seq_len=args.seq_len,
                  nonlinearity=_nonlinearity(args, cell), steps=max(args.train, 1), seed=args.seed,
                  out=str(out / _folder(cell)), **({} if args.lr is None else {"lr": args.lr})).check()


def _started_here(args, cell, out) -> bool:
    """Whether OUT/<cell> holds the run this same command trains there (its config.json
    is the one flow writes, up to the folder's name and the threads it chose), stopped by a
    signal or a crash: then flow continues it from its latest checkpoint."""
    run = out / _folder(cell)
    try:
        saved = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        return False
    ours = _config(args, cell, out).to_dict()
    same = {k: v for k, v in saved.items() if k not in ("out", "threads")} == \
        {k: v for k, v in ours.items() if k not in ("out", "threads")}
    return same and bool(runs.checkpoints(run))


def _nonlinearity(args, cell) -> str:
    """--nonlinearity is the Elman RNN's f: the other cells of the comparison keep their tanh."""
    return args.nonlinearity if cell == "rnn" else "tanh"


def _folder(cell):
    """OUT/<cell>: the cell's name, "package.module.ClassName" for a user's cell."""
    return cell.replace(":", ".")


def _strict(summary):
    """The summary as strict JSON takes it: a figure that is not finite (an exploded loss,
    a gradient that vanished at the last step) is null; the table prints it as it is."""
    return {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in summary.items()}


def _row(label, s):
    rate = "—" if s["jacobian_rate"] is None else f"{s['jacobian_rate']:.3f}"       # None: one step, no lag
    return (f"{label:<24} {s['loss']:>9.4f} {s['sigma_max']:>7.3f} {s['eta']:>6.3f} {rate:>7} "
            f"{s['grad_first_over_last']:>10.2e} {s['long_lag_share']:>7.3f} {s['seconds']:>6.1f}")


HEADER = (f"{'':<24} {'loss':>9} {'σmax':>7} {'η':>6} {'rate':>7} {'‖g₁‖/‖g_T‖':>10} {'τ≥10':>7} {'sec':>6}\n"
          "rate: per-step factor fitted to ‖∂s_t/∂s_k‖ ≈ rate^(t−k)\n"
          "τ≥10: Σ_{τ≥10}‖G_τ‖ / Σ_τ‖G_τ‖, a share in [0, 1]; G_τ: the part of G = ∂L/∂W_h\n"
          "      from dependencies τ steps long. (flow.json's long_lag_signed_projection,\n"
          "      ⟨Σ_{τ≥10}G_τ, G⟩/‖G‖², is signed: below 0 where the long lags pull W_h against\n"
          "      the total, above 1 where the short ones do)")


def run(args) -> int:
    cells, out = check(args)
    measured = []
    if args.run:                              # every run is read before anything is written
        for run_dir in args.run:
            try:
                trainer = Trainer.load(run_dir, world=World())      # measured, not trained: nothing is split
            except ValueError as exc:
                message = str(exc)
                raise ValueError(f"--run: {message[5:] if message.startswith('RUN: ') else message}") from None
            x, y = _batch(trainer, args.batch, args.seed, "--batch")
            measured.append((f"{trainer.model.cell} @ {trainer.step} ({Path(run_dir).name})", trainer, x, y))
    made = out is None or not out.exists()
    out = folder.default_name(prefix="flow-") if out is None else out
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _report(args, cells, out, measured)
    except BaseException:                     # stopped or failed: a folder made here and left empty goes
        if made:
            folder.remove_if_empty(out)
        raise


def _report(args, cells, out, measured) -> int:
    """The flow report of the saved runs (``measured``) or of the cells, into ``out``."""
    reports = {}
    models = {}                               # label -> (model at that stage, batch) for --estimators
    for label, trainer, x, y in measured:
        reports[label] = flow(trainer.model, x, y)
        if args.estimators is not None:
            models[label] = (trainer.model.astype("float64"), x.astype(np.float64))
    if not args.run:
        for cell in cells:
            config, run = _config(args, cell, out), out / _folder(cell)
            # Measured at initialisation only, the model is not trained: its folder is not made.
            # A run this command started there goes on: its initial model is made again from
            # the seed, to be measured, and the run resumes from its latest checkpoint.
            going_on = args.train and _started_here(args, cell, out)
            trainer = Trainer(config) if args.train and not going_on else \
                Trainer(config, run_dir=run, _claim="read")
            x, y = _batch(trainer, args.batch, args.seed, "--seq-len")
            name = f"rnn-{args.nonlinearity}" if cell == "rnn" else cell
            reports[f"{name}, init"] = flow(trainer.model, x, y)
            if args.estimators is not None:
                models[f"{name}, init"] = (trainer.model.astype("float64"), x.astype(np.float64))
            if going_on:
                trainer = Trainer.load(run)
                if trainer.step < args.train:
                    trainer = Trainer.resume(run)
                print(f"bptt: continuing {run} from update {trainer.step}", file=sys.stderr)
            if args.train:
                # a run that went on may have finished before the stop (an earlier cell, or the
                # report itself interrupted): its last checkpoint is the trained model to measure
                if trainer.step < args.train:
                    trainer.train(progress=not args.quiet)
                reports[f"{name}, {args.train} updates"] = flow(trainer.model, x, y)
                if args.estimators is not None:
                    models[f"{name}, {args.train} updates"] = (trainer.model.astype("float64"), x.astype(np.float64))
    if not trainer.world.root:                # under mpiexec the ranks measured (and trained) alike:
        return 0                              # rank 0 alone writes and prints the report
    title = f"{args.task}, T = {args.seq_len}" if not args.run else "saved runs"
    figure = plot_flow(reports, out / "flow.png", title=title)
    (out / "flow.json").write_text(json.dumps({k: _strict(r.summary()) for k, r in reports.items()}, indent=1,
                                              allow_nan=False))
    print(HEADER)
    for label, r in reports.items():
        print(_row(label, r.summary()))
    print(f"figure: {figure}")
    if args.estimators is not None:
        _estimators(args, models, out, title)
    if args.explode:
        explode_task, explode_len = _explode_task(args)
        study = clipping_study(cell=cells[0], task=explode_task, seq_len=explode_len, seed=args.seed,
                               nonlinearity=_nonlinearity(args, cells[0]),
                               **({} if args.gain is None else {"gain": args.gain}))
        print(f"\nexploding start ({study.label}, η = {study.gain:g}, plain SGD, same batches):")
        print(f"{'':<16} {'median ‖g‖':>11} {'max ‖g‖':>10} {'>10×clip':>9} {'final loss':>11}  diverged at")
        for s in study.summary():
            print(f"{s['run']:<16} {s['median_norm']:>11.3g} {s['max_norm']:>10.3g} {s['spikes']:>9d} "
                  f"{s['final_loss']:>11.4g}  {s['diverged_at'] if s['diverged_at'] is not None else '-'}")
        print(f"figure: {plot_clipping(study, out / 'clipping.png')}")
    return 0
