"""A run folder: config.json, metrics.jsonl, checkpoints (safetensors + JSON), loss.png.

A checkpoint is two files, ckpt-STEP.safetensors (parameters, optimizer state, carried
stream state) and ckpt-STEP.json (config, step, random-generator state, data position).
Each is written to a temporary name, flushed and renamed; the JSON goes last, so a
checkpoint counts only once both are whole. The two newest are kept. No pickle anywhere.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

FORMAT = 1


def _atomic_write(path: Path, write):
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(run: Path, step: int, arrays: dict, meta: dict, keep: int = 2) -> Path:
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    _atomic_write(run / f"ckpt-{step:08d}.safetensors", lambda p: save_file(arrays, str(p)))
    body = json.dumps({"format": FORMAT, "step": step} | meta, indent=1)
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
    try:
        meta = json.loads(meta_path.read_text())
        arrays = load_file(str(meta_path.with_suffix(".safetensors")))
    except (ValueError, OSError) as exc:
        raise ValueError(f"RUN: checkpoint {meta_path.name} is unreadable: {exc}") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"RUN: checkpoint {meta_path.name} has format {meta.get('format')!r}, expected {FORMAT}")
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
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:                                  # pragma: no cover
        return None
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    valid = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
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
    plt.close(fig)
    return path
