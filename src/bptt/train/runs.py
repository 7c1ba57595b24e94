"""A run folder: config.json, metrics.jsonl, checkpoints (safetensors + JSON), loss.png.

A checkpoint is two files, ckpt-STEP.safetensors (parameters, optimizer state, carried
stream state) and ckpt-STEP.json (config, step, random-generator state, data position,
and the SHA-256 of the safetensors file). Each is written to a temporary name, flushed
and renamed; the JSON goes last, so a checkpoint counts only once both are whole. The two
newest are kept. Loading checks the digest first: a truncated, corrupted or altered tensor
file is refused with its name, never loaded. No pickle anywhere.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import load, save

FORMAT = 2          # 2: the JSON records the safetensors file's SHA-256


def _atomic_write(path: Path, write):
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(run: Path, step: int, arrays: dict, meta: dict, keep: int = 2) -> Path:
    data = save({k: np.ascontiguousarray(v) for k, v in arrays.items()})
    _atomic_write(run / f"ckpt-{step:08d}.safetensors", lambda p: p.write_bytes(data))
    body = json.dumps({"format": FORMAT, "step": step, "sha256": hashlib.sha256(data).hexdigest()} | meta,
                      indent=1)
    _atomic_write(run / f"ckpt-{step:08d}.json", lambda p: p.write_text(body))
    for old in checkpoints(run)[:-keep]:
        old.with_suffix(".safetensors").unlink(missing_ok=True)
        old.unlink(missing_ok=True)
    return run / f"ckpt-{step:08d}.json"


def checkpoints(run: Path) -> list:
    """The complete checkpoints of a run, oldest first (as their JSON paths)."""
    return sorted(p for p in Path(run).glob("ckpt-*.json") if p.with_suffix(".safetensors").exists())


def load_checkpoint(run) -> tuple:
    run = Path(run)
    if not run.is_dir():
        raise ValueError(f"RUN: no such run folder: {run}")
    found = checkpoints(run)
    if not found:
        raise ValueError(f"RUN: {run} has no checkpoint (ckpt-*.json with its .safetensors)")
    meta_path = found[-1]
    tensors = meta_path.with_suffix(".safetensors")
    previous = f"; the previous checkpoint {found[-2].name} may be intact (move the broken one away " \
               f"to resume from it)" if len(found) > 1 else ""
    try:
        meta = json.loads(meta_path.read_text())
        data = tensors.read_bytes()
    except (ValueError, OSError) as exc:
        raise ValueError(f"RUN: checkpoint {meta_path.name} is unreadable: {exc}{previous}") from None
    if not isinstance(meta, dict) or meta.get("format") not in (1, FORMAT):
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"RUN: checkpoint {meta_path.name} has format {got!r}, expected {FORMAT}")
    if not isinstance(meta.get("step"), int) or isinstance(meta.get("step"), bool) or meta["step"] < 0:
        raise ValueError(f"RUN: checkpoint {meta_path.name}: step must be an integer >= 0, got {meta.get('step')!r}")
    if meta["format"] >= 2:
        digest = hashlib.sha256(data).hexdigest()
        if digest != meta.get("sha256"):
            raise ValueError(f"RUN: {tensors.name} does not match the SHA-256 its checkpoint records "
                             f"({str(meta.get('sha256'))[:12]}…, the file gives {digest[:12]}…): it is truncated, "
                             f"corrupted or was changed{previous}")
    try:
        arrays = load(data)
    except Exception as exc:                   # safetensors' own error type is not a ValueError
        raise ValueError(f"RUN: {tensors.name} is not a valid safetensors file: {exc}{previous}") from None
    return meta, arrays

class Metrics:
    """Appends one JSON object per line to metrics.jsonl."""

    def __init__(self, run: Path):
        self.path = Path(run) / "metrics.jsonl"

    def write(self, record: dict):
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int):
        """Drop records past ``step`` (a resumed run writes them again)."""
        kept = [r for r in self.read() if r["step"] <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def plot_losses(run: Path, records: list, baseline=None, baseline_name="", ylabel="loss"):
    """loss.png: training loss and validation loss against the update."""
    try:
        # A bare Figure, not pyplot: no global figure registry for a long run to fill.
        from matplotlib.figure import Figure
    except ImportError:                                  # pragma: no cover
        return None
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    valid = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), lw=1, alpha=0.8, label="training loss")
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
    fig.savefig(path)
    return path
