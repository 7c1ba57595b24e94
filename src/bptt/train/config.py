"""A run's configuration: one flat set of options, from the command line or a TOML file.

The TOML keys are the option names with '_' for '-' (seq_len for --seq-len). An unknown
key, or a value of the wrong type, is an error that names it.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, fields

import numpy as np

from .. import _checks
from ..cells import resolve
from ..dropout import RATES, check_rate
from ..through_time.online import ESTIMATORS
from .optim import OPTIMIZERS
from .schedules import SCHEDULES
from .tasks import TASKS

if sys.version_info >= (3, 11):
    import tomllib
else:                                  # pragma: no cover
    import tomli as tomllib


# What resume takes from an edited config.json or its own options; every other key is the
# checkpoint's (the model, data and optimizer must stay what the checkpoint holds).
CHANGEABLE_ON_RESUME = ("steps", "patience", "eval_every", "checkpoint_every")
# The largest size (hidden, seq_len, batch, …): larger ones cannot be allocated, and past 2**63
# NumPy fails with a TypeError or "Maximum allowed dimension exceeded" that names no option.
MAX_SIZE = 2 ** 31 - 1


@dataclass
class Config:
    """The options of a run: one field per option of `bptt train` (``seq_len`` for
    --seq-len), with the same defaults; a --config TOML file and a run's config.json use
    the same keys.

    Building a Config checks nothing. ``check()`` checks every value (its type, its range,
    the combinations refused) and returns the Config, a bad value being a ValueError that
    names the option; ``refuse_unused()`` refuses options a new run would not use.
    ``Trainer`` runs ``check()`` (for a new run, both) before it touches the run folder.
    """

    task: str = "text"
    text: str | None = None            # a UTF-8 file for task=text; None: the built-in corpus
    cell: str = "lstm"
    hidden: int = 128
    layers: int = 1
    nonlinearity: str = "tanh"
    init: str = "default"
    chrono_t_max: float | None = None  # init=chrono: the longest dependency, in steps (default seq_len)
    forget_bias: float = 0.0
    dropout: float = 0.0               # between stacked layers (PyTorch's)
    input_dropout: float = 0.0         # variational, on every layer's input
    recurrent_dropout: float = 0.0     # variational, on h_{t-1} before W_h
    zoneout: float = 0.0
    layer_norm: bool = False           # layer-normalised LSTM or GRU
    bidirectional: bool = False        # not for text: its streams are cut in windows
    proj_size: int = 0                 # LSTM: project h to this many units (0: none)
    seq_len: int = 64
    batch: int = 32
    steps: int = 3000
    optimizer: str = "adam"
    lr: float = 3e-3
    schedule: str = "cosine"
    warmup: int = 0
    clip_norm: float | None = 5.0
    clip_value: float | None = None
    k1: int | None = None              # text: steps per update (default seq_len)
    k2: int | None = None              # text: steps backpropagated (default k1)
    checkpointing: int | None = None   # synthetic tasks: checkpointed BPTT with this budget
    through_time: str = "bptt"         # bptt, or a forward-mode method (through_time/online.py)
    on_nonfinite: str = "stop"
    seed: int = 0
    dtype: str = "float32"
    eval_every: int = 500
    checkpoint_every: int = 1000
    threads: int | None = None         # 2: two halves of each batch at once, BLAS on one thread;
                                       # 1: one pass; None: 2 where the process has 2 cores and
                                       # the loops would not share their rows (train/trainer.py),
                                       # recorded in the run so that a resume keeps it
    patience: int | None = None        # stop after this many evaluations without a better validation loss
    out: str | None = None

    def _check_through_time(self):
        method = _checks.choice("through-time", self.through_time, ("bptt",) + tuple(ESTIMATORS))
        if method == "bptt":
            return
        if self.task == "text" and self.k2 is not None and self.k2 != (self.k1 or self.seq_len):
            raise ValueError(f"k2: {method} carries the influence forward and backpropagates through no window; "
                             f"expected no --k2 (or k2 = k1), got {self.k2}")
        clashes = [f"--{name.replace('_', '-')}" for name in ("checkpointing", "bidirectional", "proj_size",
                                                              "dropout", "input_dropout", "recurrent_dropout")
                   if getattr(self, name)]
        if clashes:
            raise ValueError(f"through-time: {method} carries the influence forward without noise masks or "
                             f"segments; it cannot run with {', '.join(clashes)}")
        if method != "rtrl" and self.layers != 1:
            raise ValueError(f"through-time: {method} is defined here for one recurrent layer, got --layers {self.layers}")
        if method in ("kf-rtrl", "rflo") and self.cell != "rnn":
            raise ValueError(f"through-time: {method} is defined for the Elman layer (--cell rnn), got --cell {self.cell}")

    def check(self) -> "Config":
        for f in fields(self):                   # every value of its field's type, before any other check
            value = getattr(self, f.name)
            if isinstance(value, np.generic):    # a NumPy number: its Python value (JSON and the checks take those)
                value = value.item()
            elif isinstance(value, os.PathLike):  # a path (text, out): its string
                value = os.fspath(value)
            elif f.name == "dtype" and isinstance(value, (type, np.dtype)):
                value = np.dtype(value).name     # np.float32 or np.dtype("float32"): "float32"
            setattr(self, f.name, coerce(f.name, value, label=f.name.replace("_", "-") + ":"))
        _checks.choice("task", self.task, TASKS)
        resolve(self.cell)                       # "rnn", "lstm", "gru" or "package.module:ClassName"
        _checks.choice("optimizer", self.optimizer, tuple(OPTIMIZERS))
        _checks.choice("schedule", self.schedule, SCHEDULES)
        _checks.choice("on-nonfinite", self.on_nonfinite, ("stop", "skip"))
        _checks.dtype_of("dtype", self.dtype)
        for name in ("hidden", "layers", "seq_len", "batch", "steps", "eval_every", "checkpoint_every"):
            _checks.positive_int(name.replace("_", "-"), getattr(self, name))
        for name in ("k1", "k2", "checkpointing", "patience"):
            if getattr(self, name) is not None:
                _checks.positive_int(name, getattr(self, name))
        for name in ("hidden", "layers", "seq_len", "batch", "k1", "k2", "checkpointing"):     # sizes of arrays
            value = getattr(self, name)
            if value is not None and value > MAX_SIZE:      # past it, NumPy fails without naming the option
                raise ValueError(f"{name.replace('_', '-')}: expected a positive integer up to {MAX_SIZE} "
                                 f"(2**31 - 1), got {value}")
        # text only: a synthetic task has no windows (refuse_unused says --k2 is text's)
        if self.task == "text" and self.k2 is not None and self.k2 < (self.k1 or self.seq_len):
            raise ValueError(f"k2: expected k2 >= k1 = {self.k1 or self.seq_len}, got {self.k2}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr: expected a positive number, got {self.lr}")
        for name in ("clip_norm", "clip_value"):          # 0: no clipping (as None)
            value = getattr(self, name)
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name.replace('_', '-')}: expected a positive number, or 0 for none, got {value}")
        if not (isinstance(self.warmup, int) and self.warmup >= 0):
            raise ValueError(f"warmup: expected an integer >= 0, got {self.warmup!r}")
        if not math.isfinite(self.forget_bias):
            raise ValueError(f"forget-bias: expected a finite number, got {self.forget_bias}")
        if self.forget_bias and self.cell != "lstm":
            raise ValueError(f"forget-bias: applies to --cell lstm only, got --cell {self.cell}")
        for name in RATES:
            check_rate(name.replace("_", "-"), getattr(self, name))
        if self.bidirectional and self.task == "text":
            raise ValueError("bidirectional: --task text trains on streams cut in windows (truncated BPTT), "
                             "which the reverse direction cannot read; use it with adding, copy, sine or digits")
        self._check_through_time()
        if self.bidirectional and self.checkpointing:
            raise ValueError("bidirectional: --checkpointing runs the sequence in segments; the reverse "
                             "direction needs the whole sequence first")
        if not (isinstance(self.proj_size, int) and 0 <= self.proj_size < self.hidden) or \
                isinstance(self.proj_size, bool):
            raise ValueError(f"proj-size: expected an integer from 0 (none) to --hidden - 1 = {self.hidden - 1}, "
                             f"got {self.proj_size!r}")
        if self.proj_size and (self.cell != "lstm" or self.layer_norm):
            raise ValueError(f"proj-size: projects the output of --cell lstm (without --layer-norm), got --cell "
                             f"{self.cell}{' --layer-norm' if self.layer_norm else ''}")
        if self.layer_norm and self.cell not in ("lstm", "gru"):
            raise ValueError(f"layer-norm: applies to --cell lstm or gru, got --cell {self.cell}")
        if self.dropout and self.layers == 1:
            raise ValueError("dropout: acts between stacked layers and --layers 1 has none; use "
                             "--input-dropout or --recurrent-dropout, or --layers 2 or more")
        if self.chrono_t_max is not None:
            if self.init != "chrono":
                raise ValueError(f"chrono-t-max: applies to --init chrono only, got --init {self.init}")
            if not (self.chrono_t_max >= 2 and math.isfinite(self.chrono_t_max)):
                raise ValueError(f"chrono-t-max: expected a number of steps >= 2, got {self.chrono_t_max}")
        if self.threads is not None and (self.threads not in (1, 2) or isinstance(self.threads, bool)):
            raise ValueError(f"threads: expected 1 or 2, got {self.threads!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed: expected an integer >= 0, got {self.seed!r}")
        if self.task == "digits" and self.seq_len not in (8, 64):
            raise ValueError(f"seq-len: --task digits reads an 8x8 image row by row (--seq-len 8) or pixel by "
                             f"pixel (--seq-len 64), got {self.seq_len}")
        if self.task == "adding" and self.seq_len < 2:
            raise ValueError(f"seq-len: the adding task marks one value in each half of the sequence; "
                             f"expected at least 2, got {self.seq_len}")
        if self.out is not None and not self.out.strip():      # Path("") would be the working folder
            raise ValueError(f"out: expected a folder name, or None for a new runs/DATE-TIME, got {self.out!r}")
        if self.text is not None and self.task != "text":
            raise ValueError(f"text: applies to task='text' only, got task={self.task!r}")
        return self

    def refuse_unused(self) -> "Config":
        """Options a new run would take and not use are refused, and a cell that only this
        script defines (a run's saved config is not checked for them, so that every
        earlier run still loads)."""
        if self.cell.startswith("__main__:"):
            raise ValueError(f"cell: {self.cell} is a class of the script being run: `bptt resume`, `bptt eval` and "
                             f"bptt.load in another script cannot import it; define the cell in a module and name "
                             f"that (module:Class)")
        if self.task != "text":
            for name in ("k1", "k2"):
                if getattr(self, name) is not None:
                    raise ValueError(f"--{name}: applies to --task text (streams cut into windows); --task {self.task} "
                                     f"backpropagates through each whole sequence, got --{name} {getattr(self, name)}")
        elif self.checkpointing:
            raise ValueError("--checkpointing: applies to the synthetic tasks (whole sequences); --task text "
                             "backpropagates through windows of --k2 steps, which bound the memory already")
        if self.task == "digits" and self.batch > 1257:     # tasks.DigitsTask.SPLIT
            raise ValueError(f"--batch: --task digits draws a batch from its 1257 training images without "
                             f"replacement; expected at most 1257, got {self.batch}")
        if self.warmup >= self.steps:
            raise ValueError(f"--warmup: expected fewer updates than --steps {self.steps} (the warm-up multiplies "
                             f"the schedule's rate of update s by s/{self.warmup}), got {self.warmup}")
        return self

    def to_dict(self) -> dict:
        """The fields as JSON takes them: a NumPy number as its Python value, a path as its
        string (what ``check`` stores), so that ``from_dict`` reads it back."""
        return {k: v.item() if isinstance(v, np.generic) else os.fspath(v) if isinstance(v, os.PathLike) else v
                for k, v in dataclasses.asdict(self).items()}


def _types():
    return {f.name: f.type for f in fields(Config)}


_KINDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def coerce(key: str, value, label: str = "config:"):
    """The value for option ``key``, checked against its type (from TOML, JSON or Python);
    an error starts with ``label``."""
    types = _types()
    if key not in types:
        raise ValueError(f"config: unknown key {key!r}; known keys: {', '.join(types)}")
    kind = types[key]
    if value is None and "None" in kind:
        return None
    if kind.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind.startswith("float"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind.startswith("bool"):
        ok = isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        expected = _KINDS[kind.split(" |")[0]] + (" or None" if "None" in kind else "")
        raise ValueError(f"{label} {key} expected {expected}, got {value!r}" if label == "config:" else
                         f"{label} expected {expected}, got {value!r}")
    return value


def from_dict(values: dict) -> Config:
    return Config(**{k: coerce(k, v) for k, v in values.items()}).check()


def load_toml(path) -> dict:
    """The options of a TOML file, each checked and named as `KEY in FILE`. A byte-order
    mark that Windows editors write first is dropped, as it is from a --text file."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.loads(f.read().decode("utf-8").removeprefix("\ufeff"))
    except FileNotFoundError:
        raise ValueError(f"--config: no such file: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"--config: {path} is a folder; expected a TOML file") from None
    except OSError as exc:
        raise ValueError(f"--config: {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"--config: {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"--config: {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); expected a "
                         f"TOML file") from None
    if isinstance(raw.get("text"), str) and raw["text"]:     # a relative text is read from the file's folder
        raw["text"] = os.path.join(os.path.dirname(os.path.abspath(path)), raw["text"])
    unknown = [k for k in raw if k not in _types()]
    if unknown:
        raise ValueError(f"--config: {path} has an unknown key {unknown[0]!r}; known keys: {', '.join(_types())}")
    return {k: coerce(k, v, label=f"{k} in {path}:") for k, v in raw.items()}     # named where it was written
