"""A run folder: config.json, metrics.jsonl, checkpoints (safetensors + JSON), loss.png.

A checkpoint is two files, ckpt-STEP.safetensors (parameters, optimizer state, carried
stream state) and ckpt-STEP.json (config, step, random-generator state, data position,
and the SHA-256 of the safetensors file). Both are written to temporary names and
flushed before either is renamed, the JSON last, so a checkpoint counts only once both are
whole, and a write that fails leaves the one it would replace (best.*) as it was. The two
newest are kept; best.safetensors + best.json, the checkpoint with the lowest validation
loss so far, are kept apart and never pruned. Loading checks the JSON's keys and the
digest first (check_meta): a JSON with a key missing, of another type or out of range, and
a truncated, corrupted or altered tensor file, are refused with their names, never loaded.
No pickle anywhere.

A folder belongs to one run (folder.py claims it and holds its lock); files the run did not
write are never overwritten: what is in the way is moved into set-aside/ with a word.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path

import numpy as np
from safetensors.numpy import load, save

from .._files import atomic_write, atomic_write_all, kept_instead, read_file  # noqa: F401  (atomic_write: the trainer's and the CLI's too)
from .config import Config, from_dict

FORMAT = 2          # 2: the JSON records the safetensors file's SHA-256
BEST = "best"       # best.json + best.safetensors
SET_ASIDE = "set-aside"


def aside_name(run: Path, name: str) -> Path:
    """RUN/set-aside/NAME, or NAME.1, NAME.2, … where taken: set-aside/ is never overwritten
    (the folder is made here)."""
    folder = Path(run) / SET_ASIDE
    folder.mkdir(exist_ok=True)
    target, n = folder / name, 1
    while target.exists():
        target, n = folder / f"{name}.{n}", n + 1
    return target


def set_aside(run: Path, path: Path) -> Path:
    """Move ``path`` into RUN/set-aside/ under its own name (numbered if taken)."""
    target = aside_name(run, path.name)
    os.replace(path, target)
    return target


def save_checkpoint(run: Path, step: int, arrays: dict, meta: dict, keep: int = 2, name: str | None = None,
                    written: set | None = None) -> Path:
    """ckpt-STEP.* (or NAME.* for the best model, never pruned). ``written``: the names this
    process wrote; a file of that name it did not write is set aside, not overwritten."""
    run = Path(run)
    stem = name or f"ckpt-{step:08d}"
    data = save({k: np.asarray(v, order="C") for k, v in arrays.items()})
    body = json.dumps({"format": FORMAT, "step": step, "sha256": hashlib.sha256(data).hexdigest()} | meta,
                      indent=1)
    for suffix in (".safetensors", ".json"):
        path = run / (stem + suffix)
        if written is not None and path.name not in written and path.exists() and name is None:
            set_aside(run, path)
    # both flushed before either is renamed, the JSON last: a write that fails (a full disk)
    # leaves the checkpoint of this name as it was, which matters where one is replaced (best)
    atomic_write_all([(run / f"{stem}.safetensors", lambda p: p.write_bytes(data)),
                      (run / f"{stem}.json", lambda p: p.write_bytes(body.encode()))])
    if written is not None:
        written.update({f"{stem}.safetensors", f"{stem}.json"})
    if name is None:
        for old in checkpoints(run)[:-keep]:
            old.with_suffix(".safetensors").unlink(missing_ok=True)
            old.unlink(missing_ok=True)
    return run / f"{stem}.json"


def numbered(run: Path, suffix: str) -> list:
    """RUN/ckpt-<update><suffix>: the checkpoint files of a run (not a user's ckpt-notes.json)."""
    return [p for p in Path(run).glob(f"ckpt-[0-9]*{suffix}") if re.fullmatch("[0-9]+", p.name[5:-len(suffix)])]


def checkpoints(run: Path) -> list:
    """The complete checkpoints of a run, oldest first (as their JSON paths), by update: a
    name of nine digits (update 10⁸ on) sorts before the eight-digit ones."""
    return sorted((p for p in numbered(run, ".json") if p.with_suffix(".safetensors").exists()), key=step_of)


def step_of(path: Path) -> int:
    return int(path.stem.split("-")[1])


def incomplete(run: Path) -> list:
    """Halves of checkpoints cut short (a tensor file without its JSON, or the reverse)."""
    run = Path(run)
    halves = [p for p in numbered(run, ".safetensors") if not p.with_suffix(".json").exists()]
    halves += [p for p in numbered(run, ".json") if not p.with_suffix(".safetensors").exists()]
    return sorted(halves)


def best_path(run: Path) -> Path:
    return Path(run) / f"{BEST}.json"


def restore_params(params: dict, arrays: dict) -> None:
    """Copy a checkpoint's ``param.*`` arrays into ``params``, which must match them."""
    expected = {f"param.{k}" for k in params}
    got = {k for k in arrays if k.startswith("param.")}
    if got != expected:             # a cell of one's own whose extra_shapes changed since, say: say which way
        missing, unexpected = ([k[len("param."):] for k in sorted(names)] for names in (expected - got, got - expected))
        raise ValueError(f"RUN: the checkpoint's parameters do not match the model of its config (missing "
                         f"{missing}, unexpected {unexpected})")
    for k, v in params.items():
        src = arrays[f"param.{k}"]
        if src.shape != v.shape or src.dtype != v.dtype:
            raise ValueError(f"RUN: checkpoint {k} is {src.shape} {src.dtype}, the model expects {v.shape} {v.dtype}")
        if not np.isfinite(src).all():          # Trainer.save never writes one (NonFiniteParameters)
            raise ValueError(f"RUN: checkpoint {k} holds {src[~np.isfinite(src)].flat[0]}, which training never "
                             f"saves: the tensor file was altered")
        v[...] = src


def run_path(run) -> Path:
    """RUN as a Path, or a ValueError naming what came instead of a path."""
    if not isinstance(run, (str, os.PathLike)):
        raise ValueError(f"RUN: expected the path of a run folder, got {type(run).__name__} {run!r}")
    return Path(run)


def run_folder(run) -> Path:
    """RUN as a Path to a folder that exists, or a ValueError saying what it is instead."""
    run = run_path(run)
    if run.exists() and not run.is_dir():
        raise ValueError(f"RUN: {run} is a file; expected a run folder")
    if not run.is_dir():
        raise ValueError(f"RUN: no such run folder: {run}")
    check_readable(run)
    return run


def check_readable(run: Path, option: str = "RUN") -> None:
    """A folder whose files cannot be listed or opened is refused as such: its listing
    would be empty, and the run reported as having no checkpoint."""
    if not os.access(run, os.R_OK | os.X_OK):
        raise ValueError(f"{option}: expected a run folder bptt can read, got {run} (not readable: its "
                         f"permissions forbid listing or opening its files)")


def saved_model_note(path) -> str:
    """What a folder of ``model.save`` is, for the error that meets one where a run was
    wanted; "" for any other folder."""
    return ("it holds a model.save (model.json), which `bptt sample` and `export` read, where this needs a run "
            "folder of `bptt train`" if (Path(path) / "model.json").is_file() else "")


def load_checkpoint(run, best: bool = False) -> tuple:
    """(meta, arrays, path) of the newest complete checkpoint, or of best.json."""
    run = run_folder(run)
    saved = saved_model_note(run)
    if best:
        meta_path = best_path(run)
        if not (meta_path.exists() and meta_path.with_suffix(".safetensors").exists()):
            tensors = meta_path.with_suffix(".safetensors")
            raise ValueError(f"--best: {run} has no best model (best.json with best.safetensors); " +
                             (saved or ("its best.safetensors is missing" if meta_path.exists() else
                                        "its best.safetensors is alone, a best model cut short" if tensors.exists()
                                        else "it is written at the first evaluation")))
        found = [meta_path]
    else:
        found = checkpoints(run)
        if not found:
            raise ValueError(f"RUN: {run} has no checkpoint (ckpt-*.json with its .safetensors)" +
                             (f"; {saved}" if saved else ""))
        meta_path = found[-1]
    tensors = meta_path.with_suffix(".safetensors")
    previous = _previous(meta_path)
    try:
        meta = json.loads(read_file(meta_path).decode("utf-8"))
        data = read_file(tensors)
    except (ValueError, RecursionError, OSError) as exc:      # RecursionError: JSON nested past the stack
        raise ValueError(f"RUN: checkpoint {meta_path.name} is unreadable: {exc}{previous}") from None
    if not isinstance(meta, dict) or meta.get("format") not in (1, FORMAT):
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"RUN: checkpoint {meta_path.name} has format {got!r}, expected {FORMAT}")
    check_meta(meta, meta_path)
    if meta["format"] >= 2:
        if not isinstance(meta.get("sha256"), str):
            raise ValueError(f"RUN: checkpoint {meta_path.name} records no SHA-256 of {tensors.name}, which its "
                             f"format {meta['format']} does: it was changed{previous}")
        digest = hashlib.sha256(data).hexdigest()
        data, digest = kept_instead(tensors, data, digest, meta.get("sha256"))
        if digest != meta.get("sha256"):
            raise ValueError(f"RUN: {tensors.name} does not match the SHA-256 its checkpoint records "
                             f"({str(meta.get('sha256'))[:12]}…, the file gives {digest[:12]}…): it is truncated, "
                             f"corrupted or was changed{previous}")
    try:
        arrays = load(data)
    except Exception as exc:                   # safetensors' own error type is not a ValueError
        raise ValueError(f"RUN: {tensors.name} is not a valid safetensors file: {exc}{previous}") from None
    w_x = arrays.get("param.layer0.W_x")
    if meta.get("text") is not None and w_x is not None and w_x.ndim == 2 \
            and len(meta["text"]["vocabulary"]) != w_x.shape[1]:       # one character per input of a text model
        raise damaged(meta_path, '"vocabulary" of "text"', f"{w_x.shape[1]} characters, one per input of the "
                      f"model in {tensors.name}", meta["text"]["vocabulary"])
    return meta, arrays, meta_path


def _previous(path: Path) -> str:
    """The end of a refusal of checkpoint ``path``: the checkpoint before it, where there is one."""
    earlier = [p for p in checkpoints(path.parent) if step_of(p) < step_of(path)] if path.name != f"{BEST}.json" else []
    return f"; the previous checkpoint {earlier[-1].name} may be intact (move the broken one away to resume " \
           f"from it)" if earlier else ""


_ABSENT = object()


def damaged(path: Path, key: str, expected: str, value=_ABSENT) -> ValueError:
    """The refusal of checkpoint ``path`` whose ``key`` is not ``expected``: one line naming both."""
    if value is _ABSENT:
        got = "none"
    else:
        got = json.dumps(value, ensure_ascii=False)
        got = got if len(got) <= 60 else got[:57] + "..."
    return ValueError(f"RUN: checkpoint {path.name}: expected {key} ({expected}), got {got}; a damaged or "
                      f"foreign file{_previous(path)}")


def _integer(value, low: int, high: int | None = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value and (high is None or value <= high)


def check_meta(meta: dict, path: Path) -> None:
    """Every key of checkpoint JSON ``path`` that eval, sample, export and resume read, with
    its type and range, or a ValueError naming the file and the key (``damaged``). The data
    position's end is checked against the text by the trainer, which reads it."""
    def need(key, test, expected, where=meta, name=None, optional=False):
        if key not in where:
            if optional:
                return
            raise damaged(path, name or f'"{key}"', expected)
        if not test(where[key]):
            raise damaged(path, name or f'"{key}"', expected, where[key])

    step = meta.get("step")
    if path.name == f"{BEST}.json":
        need("step", lambda v: _integer(v, 0), "an integer >= 0")
    else:
        need("step", lambda v: v == step_of(path) and _integer(v, 0), f"{step_of(path)}, the update in its name")
    need("config", lambda v: isinstance(v, dict), "a JSON object of options")
    own_cell = ":" in str(meta["config"].get("cell"))     # imported later: a module missing here is no damage
    try:                # each key's type, then the ranges and combinations `bptt train` refuses
        from_dict(meta["config"] | ({"cell": "lstm"} if own_cell else {}))
    except ValueError as exc:
        raise ValueError(f"RUN: checkpoint {path.name}: {exc}; a damaged or foreign "
                         f"file{_previous(path)}") from None
    need("rng", _generator_state, "the state of a PCG64 random generator")
    up_to_step = f'an integer from 0 to {step}, its "step"'
    need("skipped", lambda v: _integer(v, 0, step), up_to_step, optional=True)
    need("stale", lambda v: _integer(v, 0, step), up_to_step, optional=True)
    need("row_losses", lambda v: isinstance(v, list) and all(x is None or isinstance(x, (int, float))
                                                             and not isinstance(x, bool) for x in v),
         "a list of numbers or nulls", optional=True)
    need("best", lambda v: v is None or isinstance(v, dict), 'null or an object of "step" and "val_loss"',
         optional=True)
    if meta.get("best") is not None:
        best, name = meta["best"], '"step" of "best"'
        if path.name == f"{BEST}.json":
            need("step", lambda v: v == step and _integer(v, 0), f'{step}, its "step"', best, name)
        else:
            need("step", lambda v: _integer(v, 0, step), up_to_step, best, name)
        need("val_loss", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
             "a finite number", best, '"val_loss" of "best"')
    need("text", lambda v: v is None or isinstance(v, dict), 'null or an object of "vocabulary", "first" and '
         '"sha256"', optional=True)
    if meta.get("text") is not None:
        text = meta["text"]
        need("vocabulary", lambda v: isinstance(v, str) and len(v) > 0 and len(set(v)) == len(v),
             "a string of distinct characters", text, '"vocabulary" of "text"')
        need("first", lambda v: isinstance(v, str) and len(v) == 1 and v in text["vocabulary"],
             "a character of the vocabulary", text, '"first" of "text"')
        need("sha256", lambda v: isinstance(v, str) and re.fullmatch("[0-9a-f]{64}", v) is not None,
             "64 hexadecimal digits", text, '"sha256" of "text"')
    if meta["config"].get("task", Config.task) == "text":
        need("position", lambda v: isinstance(v, dict), 'an object of "epoch" and "start"')
        for key in ("epoch", "start"):
            need(key, lambda v: _integer(v, 0), "an integer >= 0", meta["position"], f'"{key}" of "position"')


def _generator_state(value) -> bool:
    try:
        np.random.PCG64().state = value
    except (KeyError, TypeError, ValueError, OverflowError):
        return False
    return True


class Metrics:
    """Appends one JSON object per line to metrics.jsonl."""

    def __init__(self, run: Path):
        self.path = Path(run) / "metrics.jsonl"

    def write(self, record: dict):
        """One record; a number that is not finite (a skipped update's gradient norm) is
        written as null, which every JSON reader takes (NaN is not JSON)."""
        record = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record, allow_nan=False) + "\n")
        except OSError as exc:
            if exc.filename is None:
                raise OSError(exc.errno, exc.strerror or str(exc), str(self.path)) from None
            raise

    def read(self) -> list:
        """The records; a last line cut short (a process killed, a full disk) is left out, and
        so is one whose "step" is not an integer (resume and the plot compare and sort by it)."""
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except (ValueError, RecursionError):
                continue
        return [r for r in records if isinstance(r, dict) and _integer(r.get("step"), 0)]

    def truncate_after(self, step: int):
        """Drop records past ``step`` (a resumed run writes them again); atomically."""
        kept = "".join(json.dumps(r) + "\n" for r in self.read() if r["step"] <= step)
        atomic_write(self.path, lambda p: p.write_text(kept))


def plot_losses(run: Path, records: list, baseline=None, baseline_name="", ylabel="loss"):
    """loss.png: training loss and validation loss against the update."""
    try:
        # A bare Figure, not pyplot: no global figure registry for a long run to fill.
        from matplotlib.figure import Figure
    except ImportError:                                  # pragma: no cover
        return None
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    valid = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), "-" if len(train) > 1 else "o", lw=1, alpha=0.8, label="training loss")
    if valid:
        ax.plot(*zip(*valid), "o-", lw=2, label="validation loss")
    if baseline is not None:
        ax.axhline(baseline, color="gray", ls="--", lw=1, label=f"baseline: {baseline_name}")
    ax.set_xlabel("update")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(run) / "loss.png"
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    return path
