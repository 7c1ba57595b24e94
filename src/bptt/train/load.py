"""``bptt.load``: a trained model from a saved-model folder or from a run folder."""
from __future__ import annotations

import os
from pathlib import Path

from .. import _checks, saved


def load(path, best: bool = False):
    """The Model at ``path``: a folder written by ``model.save`` (model.json +
    model.safetensors), or a run folder of ``bptt train``, at its latest checkpoint
    (``best=True``: at the checkpoint with the lowest validation loss, best.json). A text
    model comes with its ``vocabulary``, ready for ``bptt.generate``."""
    best = _checks.flag("best", best)
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise ValueError(f"path: expected the folder of a saved model (model.json) or a run, got {path!r}")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"path: {folder} is a file; expected a saved model's folder (model.json) or a run folder")
    if not folder.is_dir():
        raise ValueError(f"path: no such folder: {folder}; expected a saved model (model.json) or a run folder")
    try:
        return read(folder, best)
    except ValueError as exc:                   # read's errors name the CLI's arguments
        message = str(exc)
        for cli_name, name in (("RUN: ", "path: "), ("--best: ", "best: ")):
            if message.startswith(cli_name):
                raise ValueError(name + message[len(cli_name):] + ("; expected a saved model (model.json) or "
                                 "a run folder" if "has no checkpoint" in message else "")) from None
        raise


def read(folder: Path, best: bool = False):
    """``load`` for `bptt export`: its errors name the command's RUN and --best."""
    from .trainer import load_model
    if saved.is_saved(folder):
        if best:
            raise ValueError(f"--best: {folder} is a saved model, not a run folder with checkpoints")
        return saved.read(folder)
    return load_model(folder, best=best)[0]
