"""The `bptt` command: train, resume, sample, eval, flow, explain (also `python -m bptt`).

Every error is one line on stderr, never a traceback, and leaves what is saved as it was:

    exit 2     a mistake of the user's: a bad option, config file, text file or run folder;
               also a gradient that is not finite, sizes too large for the memory ("not
               enough memory for these sizes"), and a RuntimeError (MPI ranks whose
               parameters drifted apart, BPTT_STEP_GEMM=mkl without oneMKL)
    exit 1     the file system failed (read-only, full, a file where a folder should be);
               the line names the path, or stdout where the output cannot be written
    exit 130   SIGINT (Ctrl-C), 143 SIGTERM, 129 SIGHUP (the terminal closed): the update in
               flight is finished and saved, the line names the checkpoint; a second
               signal stops at once
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import math
import os
import re
import signal
import sys
import threading
from pathlib import Path

import numpy as np

from . import __version__, _checks, cli_flow
from .train.config import Config, coerce, load_toml
from .train.signals import HANGUP, release_terminal

DEFAULTS = Config()


def _option(parser, name, kind, help_text, unset=None):
    """--name, its help ending with the default, or with what leaving it unset does."""
    flag = "--" + name.replace("_", "-")
    default = getattr(DEFAULTS, name)
    said = f"default: {default}" if default is not None else f"unset: {unset}" if unset else None
    kind = {int: INTEGER, float: NUMBER}.get(kind, kind)
    parser.add_argument(flag, dest=name, type=kind, default=None,
                        help=f"{help_text} ({said})" if said else help_text)


def _train_options(p):
    _option(p, "task", str, "text, adding, copy, sine or digits (--seq-len 8: rows, 64: pixels)")
    _option(p, "text", str, "a UTF-8 text file for --task text", unset="the built-in corpus")
    _option(p, "cell", str, "rnn, lstm, gru, or module:Class for a bptt.Cell of your own (docs/custom_cell.md)")
    _option(p, "hidden", int, "hidden units per layer")
    _option(p, "layers", int, "stacked recurrent layers")
    _option(p, "nonlinearity", str, "f of the Elman RNN: tanh, relu, sigmoid, identity")
    _option(p, "init", str, "default, orthogonal, identity (IRNN) or chrono (LSTM, GRU)")
    _option(p, "chrono_t_max", float, "--init chrono: the longest dependency expected, in steps", unset="--seq-len")
    _option(p, "forget_bias", float, "added to the LSTM forget-gate bias")
    _option(p, "dropout", float, "dropout between stacked layers, a fresh mask every step (PyTorch's)")
    _option(p, "input_dropout", float, "variational dropout of every layer's input, one mask per window")
    _option(p, "recurrent_dropout", float, "variational dropout of h_{t-1} before W_h, one mask per window")
    _option(p, "zoneout", float, "probability that a state unit keeps its previous value at a step")
    p.add_argument("--layer-norm", dest="layer_norm", action="store_true", default=None,
                   help="layer-normalised LSTM or GRU (Ba et al. 2016)")
    _option(p, "proj_size", int, "LSTM: project h to this many units (Sak et al. 2014, PyTorch's proj_size); 0: none")
    p.add_argument("--bidirectional", dest="bidirectional", action="store_true", default=None,
                   help="every layer also reads each sequence backward (not with --task text: streams)")
    _option(p, "seq_len", int, "sequence length (text: steps per update)")
    _option(p, "batch", int, "sequences per update (text: parallel streams)")
    _option(p, "steps", int, "updates in all")
    _option(p, "optimizer", str, "sgd, adagrad, rmsprop, adam or adamw")
    _option(p, "lr", float, "learning rate")
    _option(p, "schedule", str, "constant, step (halves the rate every 1000 updates) or cosine")
    _option(p, "warmup", int, "updates of linear warm-up")
    _option(p, "clip_norm", float, "clip the global gradient norm to this; 0: none")
    _option(p, "clip_value", float, "clip every gradient entry to ± this; 0: none", unset="entries are not clipped")
    _option(p, "k1", int, "text: truncated BPTT, steps between updates", unset="--seq-len")
    _option(p, "k2", int, "text: truncated BPTT, steps backpropagated (>= k1)", unset="--k1")
    _option(p, "checkpointing", int, "synthetic tasks: checkpointed BPTT with this many steps of tape",
            unset="the whole tape")
    _option(p, "through_time", str, "bptt (default), or forward mode without a backward pass: rtrl, snap1, "
                                    "snap2, uoro, kf-rtrl, eprop, rflo (text: an update every --k1 steps)")
    _option(p, "on_nonfinite", str, "stop, or skip (and count) an update whose gradient is not finite")
    _option(p, "seed", int, "random seed")
    _option(p, "dtype", str, "float32 or float64")
    _option(p, "eval_every", int, "updates between validations")
    _option(p, "checkpoint_every", int, "updates between checkpoints")
    _option(p, "patience", int, "stop after this many evaluations without a lower validation loss", unset="never")
    _option(p, "threads", int, "2: two halves of each batch run at once on two threads, BLAS on one (only "
                               "with a cell that has compiled kernels, the compiled loops on (BPTT_LOOPS not 0), "
                               "--batch 2 or more and one MPI rank; else one pass); 1: one pass, BLAS on its own threads. The two sum the batch "
                               "in another order",
            unset="2 where the compiled loops may use two threads (BPTT_LOOP_THREADS, by default 2 cores or "
                  "more) but the layer is too small to share its rows, else 1")
    p.add_argument("--out", dest="out", default=None, metavar="RUN_DIR",
                   help="run folder, new or empty (default: runs/DATE-TIME, a new name for every run)")
    p.add_argument("--fresh", action="store_true",
                   help="start over in a --out that holds an earlier run: its checkpoints, best model, metrics, "
                        "config, plot and set-aside/ folder are deleted first (other files stay)")
    p.add_argument("--config", default=None, metavar="FILE.toml", help="options from a TOML file; flags win")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


INTEGER, NUMBER = _checks.argument(int, "an integer"), _checks.argument(float, "a number")
POSITIVE_INT = _checks.argument(int, "a positive integer", lambda v: v >= 1)
SEED = _checks.argument(int, "an integer >= 0", lambda v: v >= 0)
POSITIVE_FLOAT = _checks.argument(float, "a positive number", lambda v: v > 0 and math.isfinite(v))
RUN_HELP = "a run folder that `bptt train` wrote"
MOVED_TEXT_HELP = ("the run's text file where it is now, if it moved (it must be the same text: its SHA-256 is "
                   "checked against the checkpoint's)")
BEST_HELP = "use the best model (best.json: the lowest validation loss) instead of the latest checkpoint"


class _Parser(argparse.ArgumentParser):
    def error(self, message):                       # one line, exit status 2, no usage dump
        # "argument --hidden: …" as every other error names an option: "--hidden: …"
        message = re.sub(r"^argument (\S+): ", r"\1: ", message)
        if not _launcher_rank():                    # under mpiexec every rank reads the same argv: rank 0 says it
            print(f"bptt: error: {message}", file=sys.stderr)
        raise SystemExit(2)

    def _print_message(self, message, file=None):
        """--help and --version: a stdout that cannot take them (a full disk) is one line
        naming stdout and exit status 1, where argparse dropped the error and exited 0."""
        file = file or sys.stderr
        if not message or file is None:
            return
        try:
            file.write(message)
            file.flush()
        except OSError as exc:
            _drop_stdout(file)                      # the flush at exit must not fail again
            if isinstance(exc, BrokenPipeError) or file is not sys.stdout:
                return                              # piped into `head` and closed: not an error
            print(f"bptt: error: stdout: {exc.strerror or exc}", file=sys.stderr)
            raise SystemExit(1) from None


def build_parser():
    parser = _Parser(prog="bptt", description="Recurrent networks trained by hand-derived backpropagation "
                                              "through time.")
    parser.add_argument("--version", action="version", version=f"bptt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,resume,sample,eval,export,flow,explain}")
    sub.required = True
    train = sub.add_parser("train", help="train a model (default: a character LSTM on Python's standard library)")
    _train_options(train)
    resume = sub.add_parser("resume", help="continue a run from its latest checkpoint")
    resume.add_argument("run", metavar="RUN", help=RUN_HELP)
    resume.add_argument("--steps", type=POSITIVE_INT, default=None,
                        help="train until this many updates in all; a cosine schedule is stretched over the "
                             "new total, so the rate rises again in a finished run (default: the run's own)")
    resume.add_argument("--patience", type=POSITIVE_INT, default=None,
                        help="stop after this many evaluations without a lower validation loss (default: the run's own)")
    resume.add_argument("--best", action="store_true",
                        help="continue from the best model; later checkpoints and metrics move to RUN/set-aside/")
    resume.add_argument("--quiet", action="store_true", help="no progress bar")
    resume.add_argument("--text", default=None, metavar="FILE", help=MOVED_TEXT_HELP)
    sample = sub.add_parser("sample", help="generate text from a text run")
    sample.add_argument("run", metavar="RUN", help=RUN_HELP + " on --task text, or a folder of model.save")
    sample.add_argument("--length", type=POSITIVE_INT, default=400, help="characters to draw (default: 400)")
    sample.add_argument("--temperature", type=POSITIVE_FLOAT, default=0.8,
                        help="divides the log-probabilities: below 1 sharper, above 1 more random (default: 0.8)")
    sample.add_argument("--top-k", type=POSITIVE_INT, default=None,
                        help="draw only among the k likeliest characters (default: all)")
    sample.add_argument("--prime", default=None,
                        help="text to start from, printed before the sample (default: a newline, not printed)")
    sample.add_argument("--seed", type=SEED, default=None, help="random seed of the draws (default: a fresh one)")
    sample.add_argument("--best", action="store_true", help=BEST_HELP)
    evaluate = sub.add_parser("eval", help="validation figures of a run's latest checkpoint")
    evaluate.add_argument("run", metavar="RUN", help=RUN_HELP)
    evaluate.add_argument("--best", action="store_true", help=BEST_HELP)
    evaluate.add_argument("--text", default=None, metavar="FILE", help=MOVED_TEXT_HELP)
    export = sub.add_parser("export", help="write a run's model to another format (ONNX)")
    export.add_argument("run", metavar="RUN", help=RUN_HELP + ", or a folder of model.save")
    export.add_argument("--onnx", metavar="FILE", required=True,
                        help="the ONNX file to write (ONNX's own RNN, GRU and LSTM operators)")
    export.add_argument("--lengths", action="store_true",
                        help="add the input 'lengths' (B,) int32: each sequence's number of valid steps")
    export.add_argument("--best", action="store_true", help=BEST_HELP)
    export.add_argument("--overwrite", action="store_true",
                        help="replace FILE where it exists (default: an existing FILE is refused, nothing written)")
    cli_flow.add_parser(sub)
    explain = sub.add_parser("explain", help="print every step of BPTT on a tiny network, with equation numbers")
    explain.add_argument("--cell", default="rnn", choices=("rnn", "lstm", "gru"), help="rnn, lstm or gru (default: rnn)")
    return parser


def _config_from(args) -> Config:
    if args.out is not None and not args.out.strip():
        raise ValueError("--out: expected a folder name, got ''")
    flags = {f.name: coerce(f.name, getattr(args, f.name)) for f in dataclasses.fields(Config)
             if getattr(args, f.name, None) is not None}
    in_file = load_toml(args.config) if args.config else {}
    args.file_keys = set(in_file) - set(flags)              # named "KEY in FILE" in errors (_where_given)
    return Config(**(in_file | flags)).check().refuse_unused()


def _where_given(message, from_file, path) -> str:
    """An error of `bptt train` or `flow` as the command names its values (Config's and
    Model's errors name their arguments): "--hidden: …" for a flag (or a default), "hidden in
    FILE: …" for a key of the --config file (load_toml names its own keys so)."""
    named = re.match(r"(-{0,2})([a-z][a-z0-9_-]*): ", message)
    key = named[2].replace("-", "_") if named else None
    if key not in {f.name for f in dataclasses.fields(Config)}:
        return message
    where = f"{key} in {path}" if key in from_file else "--" + key.replace("_", "-")
    return where + message[named.end() - 2:]


def _text_option(args) -> str:
    """Where a new run's text file was named: --text, or the text key of its --config file."""
    return "--text" if args.text is not None or not args.config else f"text in {args.config}"


def _figures(trainer, final) -> str:
    task = trainer.task
    if trainer.text:
        b = task.baselines
        return (f"validation: {final['val_loss']:.4f} nats/char ({final['val_bits']:.3f} bits/char), "
                f"accuracy {final['val_acc']:.3f}; baselines on the same split: unigram {b['unigram']:.4f}, "
                f"bigram {b['bigram']:.4f} nats/char")
    line = f"validation {task.name}: loss {final['val_loss']:.5f}"
    if task.baseline is not None:
        line += f" (baseline, {task.baseline_name}: {task.baseline:.5f})"
    if task.name == "digits":
        line += (f", accuracy {final['val_acc']:.3f}; test ({len(task.splits['test'][1])} images): loss "
                 f"{final['test_loss']:.5f}, accuracy {final['test_acc']:.3f}")
    elif "val_acc" in final:
        line += f", accuracy of the copied symbols {final['val_acc']:.3f}"
    return line


def _finish(trainer, final):
    from .train.trainer import sample
    if not trainer.world.root:                # under mpiexec, rank 0 speaks for the job
        return
    print(f"run folder: {trainer.run}  (metrics.jsonl, loss.png, checkpoints)")
    if trainer.stopped_early:
        print(f"stopped early at update {trainer.step}: no lower validation loss in {trainer.stale} evaluations "
              f"(--patience {trainer.config.patience})")
    if trainer.skipped:
        print(f"skipped {trainer.skipped} of {trainer.step} updates: their gradient was not finite "
              f"(--on-nonfinite skip); metrics.jsonl counts them")
    if trainer.best is not None:
        print(f"best model: {trainer.run / 'best.json'} (update {trainer.best['step']}, validation "
              f"{trainer.best['val_loss']:.4f}); --best in sample, eval and resume takes it")
    if trainer.text:
        print("sample:")
        print(sample(trainer.model, trainer.task.first, 300, 0.8, rng=np.random.default_rng(trainer.config.seed)))
    print(_figures(trainer, final))


def _mpi_rank():
    """This process's rank when it is one of several MPI ranks, else None."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized() or mpi.COMM_WORLD.Get_size() == 1:
        return None
    return mpi.COMM_WORLD.Get_rank()


def _launcher_rank():
    """The rank mpiexec gave this process (its environment), read where MPI is not started
    yet, or None outside mpiexec."""
    for name in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return None


def _abort_other_ranks(code):
    """An error on one rank ends the whole MPI job at once: the others must not wait in a
    collective for a rank that has left."""
    if _mpi_rank() is not None:
        sys.stderr.flush()
        sys.modules["mpi4py.MPI"].COMM_WORLD.Abort(code)


class _StdoutError(OSError):
    """A write to stdout that failed (a full disk): the error line names stdout."""


class _Stdout:
    """sys.stdout while a command runs: a write or flush that fails names stdout (its
    OSError carries no file name, and the error line named the run, or None)."""

    def __init__(self, stream):
        self.stream = stream
        self.escaped = False

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def write(self, text):
        try:
            return self._named(self.stream.write, text)
        except UnicodeEncodeError:
            # A stdout whose encoding lacks characters of a sample (PYTHONIOENCODING=ascii, a
            # Latin-1 locale, a redirect on Windows) takes them as \u escapes, as stderr does,
            # said once: the sample and the figures printed after it are not lost.
            encoding = self.stream.encoding
            if not self.escaped:
                self.escaped = True
                print(f"bptt: stdout: its encoding ({encoding}) cannot write some characters; they are written as "
                      f"\\x, \\u escapes (PYTHONIOENCODING=utf-8 writes them as they are)", file=sys.stderr)
            return self._named(self.stream.write, text.encode(encoding, "backslashreplace").decode(encoding))

    def flush(self):
        return self._named(self.stream.flush)

    @staticmethod
    def _named(call, *args):
        try:
            return call(*args)
        except BrokenPipeError:                 # output piped into `head` and closed: not an error
            raise
        except OSError as exc:
            raise _StdoutError(exc.errno, exc.strerror or str(exc), "stdout") from None


def _drop_stdout(stream):
    """What stdout could not take is dropped: its descriptor writes to /dev/null from now
    on, so the interpreter's flush at exit does not fail a second time (a second message,
    exit status 120). A stream without a descriptor of its own is left as it is."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


def _note(lines):
    for line in lines:
        print(f"bptt: {line}", file=sys.stderr)


def _note_cut_short(run, best):
    """sample, eval and export read the newest complete checkpoint and change nothing: a
    half written after it (a save cut short) is named, as resume names it."""
    from .train import runs
    if best or not os.path.isdir(run):
        return
    for half in runs.incomplete(run):
        other = ".json" if half.suffix == ".safetensors" else ".safetensors"
        _note([f"{half.name} has no {half.stem}{other} (a checkpoint cut short); reading the newest complete one"])


def _finished(trainer) -> bool:
    """Whether the run has nothing left to train: its newest complete checkpoint is at its
    last update, or --patience stopped it there."""
    from .train import runs
    found = runs.checkpoints(trainer.run) if getattr(trainer, "run", None) is not None else []
    return bool(found) and (runs.step_of(found[-1]) >= trainer.config.steps or trainer.stopped_early)


def _last_checkpoint(run, finished=False) -> str:
    from .train import runs
    # os.path.isdir: False for a path the OS refuses (a name too long), where Path.is_dir
    # raises on the way out of the error that names it
    found = runs.checkpoints(run) if run is not None and os.path.isdir(run) else []
    if not found:           # a run stopped before it wrote has no folder left to name
        return "no checkpoint was written, nothing to resume" + (f" (in {run})" if run is not None and
                                                                 os.path.isdir(run) else "")
    if finished:
        return f"the run is complete: its last checkpoint is {found[-1]}; its final sample and figures were not printed"
    return f"the last complete checkpoint is {found[-1]} (`bptt resume {run}` continues from it)"


# OSErrors that a second try meets again until the path is fixed: a folder where a file
# goes or a file where a folder goes, a file or folder bptt may not read or write, a name
# longer than the file system takes.
SAME_AGAIN = (errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG)


class _Terminated(BaseException):
    """SIGTERM or SIGHUP outside a training loop (which saves first, train/signals.py): said
    in one line with exit status 128 + the signal, as SIGINT is."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, frame):
    if signum == HANGUP:
        release_terminal()
    raise _Terminated(signum)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    ours = [s for s in (signal.SIGTERM, HANGUP) if s is not None and signal.getsignal(s) is not signal.SIG_IGN] \
        if main_thread else []                                  # an ignored one (nohup's SIGHUP) stays ignored
    previous = {s: signal.signal(s, _raise_terminated) for s in ours}
    stdout = sys.stdout
    if stdout is not None:
        sys.stdout = _Stdout(stdout)
    try:
        return _run(args)
    finally:
        if isinstance(sys.stdout, _Stdout):
            sys.stdout = sys.stdout.stream
        for s, old in previous.items():
            signal.signal(s, signal.SIG_DFL if old is None else old)


def _run(args) -> int:
    from .distributed import CollectiveError
    from .train.clip import NonFiniteGradient, NonFiniteParameters
    from .train.tasks import TextFileError
    from .train.trainer import Interrupted, Trainer, load_model, sample
    trainer, code = None, 0
    try:
        if getattr(args, "run", None) is not None and args.command != "flow" and not args.run.strip():
            raise ValueError(f"RUN: expected a run folder's name, got {args.run!r}")
        if args.command == "train":
            config = _config_from(args)
            if args.fresh and config.out is None:
                raise ValueError("--fresh: deletes the run in --out to start over; without --out the run gets a "
                                 "new folder, got --fresh alone")
            try:
                trainer = Trainer(config, fresh=args.fresh)
            except TextFileError as exc:
                raise exc.named(_text_option(args)) from None
            _finish(trainer, trainer.train(progress=not args.quiet))
        elif args.command == "resume":
            overrides = {k: getattr(args, k) for k in ("steps", "patience") if getattr(args, k) is not None}
            trainer = Trainer.resume(args.run, best=args.best, text=args.text, **overrides)
            if trainer.world.root:
                _note(trainer.notes)
            _finish(trainer, trainer.train(progress=not args.quiet))
        elif (args.command in ("sample", "export") or args.command == "flow" and args.run) and _launcher_rank():
            pass                          # under mpiexec rank 0 alone samples, writes the file, measures the runs
        elif args.command == "sample":
            from .saved import is_saved
            from .train.load import read
            if is_saved(Path(args.run)):                 # a folder of model.save: the model and its vocabulary
                model = read(Path(args.run), best=args.best)
                if model.vocabulary is None:
                    raise ValueError(f"RUN: {args.run} holds a model without a vocabulary (not a character "
                                     f"model); sampling needs a text model")
                first = model.vocabulary[0]
            else:
                model, meta = load_model(args.run, best=args.best)
                _note_cut_short(args.run, args.best)
                if meta["config"].get("task") != "text":
                    raise ValueError(f"RUN: {args.run} is a run of the {meta['config'].get('task')} task; sampling "
                                     f"needs a text run")
                first = meta["text"]["first"]
            try:
                drawn = sample(model, first, args.length, args.temperature, args.top_k, args.prime,
                               np.random.default_rng(args.seed))
            except ValueError as exc:                   # generate names it prime=; here it is --prime
                raise ValueError(f"--{exc}" if str(exc).startswith("prime: ") else str(exc)) from None
            print((args.prime or "") + drawn)           # the prime, then what follows
        elif args.command == "eval":
            from .distributed import World
            # under mpiexec each rank evaluates alone (nothing is split) and rank 0 says it
            trainer = Trainer.load(args.run, best=args.best, text=args.text, world=World())
            if not _launcher_rank():
                _note_cut_short(args.run, args.best)
                print(_figures(trainer, trainer.evaluate()))
        elif args.command == "export":
            from .interop.onnx import check_exportable, check_onnx_path, to_onnx
            from .train.load import read
            from .train.runs import run_folder
            check_onnx_path(args.onnx, "--onnx")
            if os.path.lexists(args.onnx) and not args.overwrite:
                raise ValueError(f"--onnx: expected a new file, got {args.onnx!r} (it exists); remove it, choose "
                                 f"another name, or pass --overwrite to replace it")
            model = read(run_folder(args.run), best=args.best)
            _note_cut_short(args.run, args.best)
            try:
                check_exportable(model)
            except ValueError as exc:               # the model is the one RUN holds
                raise ValueError(f"RUN: {args.run}: {exc}") from None
            try:
                to_onnx(model, args.onnx, lengths=args.lengths)
            except ImportError as exc:
                raise ValueError(f"--onnx: {exc}") from None
            print(f"wrote {args.onnx}: {model.cell_name}, {model.num_layers} layer(s) of {model.hidden_size}"
                  f"{', bidirectional' if model.bidirectional else ''}, head {model.head}, outputs {model.outputs!r}")
        elif args.command == "flow":
            code = cli_flow.run(args)
        elif args.command == "explain":
            from .diagnostics.explain import explain
            explain(args.cell)
        if sys.stdout is not None:
            sys.stdout.flush()              # here, where a stdout that cannot take it is one line
    except (ValueError, NonFiniteGradient, RuntimeError) as exc:
        rank = _mpi_rank()
        # Under MPI every rank judges the same summed loss and gradients and the same
        # parameters: a non-finite one stops every rank at the same update, as a mismatch does.
        collective = isinstance(exc, CollectiveError) or (
            rank is not None and isinstance(exc, (NonFiniteGradient, NonFiniteParameters)))
        where = ""
        if isinstance(exc, NonFiniteGradient) and not rank and getattr(trainer, "last_batch", None) is not None \
                and not (trainer.model.bidirectional or trainer.model.proj_size):   # (one direction, unprojected)
            from .diagnostics.nonfinite import first_nonfinite
            where = "; " + first_nonfinite(trainer.model, *trainer.last_batch).describe()
        said = _where_given(str(exc), getattr(args, "file_keys", set()), getattr(args, "config", None)) \
            if args.command in ("train", "flow") else str(exc)
        if collective:
            if not rank:                          # every rank raised it: rank 0 says it, all exit
                print(f"bptt: error: {said}{where}", file=sys.stderr)
            return 2
        if rank is None and _launcher_rank():
            return 2                              # before MPI starts, every rank reads the same argv: rank 0 says it
        print(f"bptt: error{'' if rank is None else f' (MPI rank {rank})'}: {said}{where}", file=sys.stderr)
        _abort_other_ranks(2)
        return 2
    except MemoryError as exc:              # sizes the machine cannot hold: what NumPy could not allocate
        rank = _mpi_rank()
        if rank is None and _launcher_rank():
            return 2                              # every rank reads the same argv: rank 0 says it
        hint = "; expected a smaller --hidden, --batch or --seq-len" if args.command in ("train", "flow") else ""
        tail = f"; {_last_checkpoint(trainer.run)}" if getattr(trainer, "run", None) is not None else ""
        print(f"bptt: error{'' if rank is None else f' (MPI rank {rank})'}: not enough memory for these sizes "
              f"({exc}){hint}{tail}", file=sys.stderr)
        _abort_other_ranks(2)
        return 2
    except OSError as exc:                  # the file system failed: name the path, keep what is saved
        if isinstance(exc, BrokenPipeError):    # output piped into `head` and closed: not an error
            sys.stderr = None
            return 0
        run = getattr(trainer, "run", None) or (args.run if args.command == "resume" else None)
        path = exc.filename if exc.filename is not None else run
        if isinstance(exc, _StdoutError):
            _drop_stdout(getattr(sys.stdout, "stream", sys.stdout))
        tail = ""
        if isinstance(exc, IsADirectoryError):      # a folder where bptt reads or writes a file
            tail = "; expected a file there, got a folder (move it away)"
        # A resume that failed before training on a path of the wrong kind, or one it may not
        # write, would fail the same way again: it is not sent back to itself.
        same_again = trainer is None and exc.errno in SAME_AGAIN
        if run is not None and args.command in ("train", "resume") and not same_again:
            tail += f"; {_last_checkpoint(run, _finished(trainer))}"
        print(f"bptt: error: {path}: {exc.strerror or exc}{tail}", file=sys.stderr)
        _abort_other_ranks(1)
        return 1
    except Interrupted as stop:
        if stop.checkpoint is not None:
            if trainer is None:             # flow --train: its trainers are cli_flow's
                after = (f"the flow report was not written; `bptt flow` with the same options and --out "
                         f"{Path(stop.checkpoint).parent.parent} continues it")
            else:
                after = ("the run is complete (its last update); its final sample and figures were not printed"
                         if _finished(trainer) else f"`bptt resume {trainer.run}` continues from it")
            print(f"bptt: {stop.name}: stopped after update {stop.step}, saved as {stop.checkpoint}; {after}",
                  file=sys.stderr)
        elif trainer is None:
            print(f"bptt: second {stop.name}: stopped at once; the flow report was not written; `bptt flow` with the "
                  f"same options and the same --out continues from the last complete checkpoint", file=sys.stderr)
        elif trainer.world.root:
            print(f"bptt: second {stop.name}: stopped at once; {_last_checkpoint(trainer.run, _finished(trainer))}",
                  file=sys.stderr)
        return stop.code
    except (KeyboardInterrupt, _Terminated) as exc:      # before or after the training loop
        run = getattr(trainer, "run", None)
        signum = exc.signum if isinstance(exc, _Terminated) else signal.SIGINT
        name = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}.get(signum, "hung up")
        print(f"bptt: {name}; {_last_checkpoint(run, _finished(trainer))}" if args.command in ("train", "resume")
              else f"bptt: {name}", file=sys.stderr)
        code = 128 + signum
        _abort_other_ranks(code)
        return code
    return code


if __name__ == "__main__":                  # pragma: no cover
    sys.exit(main())
