"""A model saved on its own: a folder with model.safetensors (the parameters) and
model.json (what builds the model again, the vocabulary of a text model, and the
safetensors file's SHA-256). No pickle.

    model.save("my-model")           # my-model/model.safetensors + my-model/model.json
    model = bptt.load("my-model")    # also takes a run folder (train/load.py)

Both files are written to temporary names and flushed, then renamed, the JSON last: a
save that fails leaves the previous model whole. A folder that holds anything but a saved
model is refused rather than written into.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_tensors, save as save_tensors

from . import _checks
from .cell_check import random_row
from .model import check_model
from ._files import atomic_write_all, kept_instead, read_file

KIND = "bptt-model"
FORMAT = 1
FILES = ("model.safetensors", "model.json")
CUT_SHORT = ("model.safetensors.tmp", "model.json.tmp", "model.safetensors.old.tmp")   # of a save killed midway


def cell_spec(cell, hidden_size: int = 4, dtype=np.float64):
    """What builds the cell again: its name, "module:ClassName" for a class built with no
    arguments, or {"class": "module:ClassName", "arguments": cell.config()} for a cell
    whose ``config()`` gives its constructor's keyword arguments (JSON values). A cell
    whose class takes arguments and has no ``config()`` is refused: loading it with the
    defaults would build another cell. So is one that ``Class(**config())`` builds again
    computing another step on one row at ``hidden_size`` units in ``dtype`` (a config()
    that leaves out an argument)."""
    if isinstance(cell, str):
        return cell
    kind = type(cell)
    if kind.__module__ == "__main__" or "<locals>" in kind.__qualname__:
        raise ValueError(f"cell: {kind.__qualname__} is defined in a script or a function, where loading cannot "
                         f"import it; define it in a module (package.module:ClassName) to save the model")
    name = f"{kind.__module__}:{kind.__qualname__}"
    if callable(getattr(cell, "config", None)):
        arguments = cell.config()
        try:
            ok = isinstance(arguments, dict) and all(isinstance(k, str) for k in arguments) and \
                json.loads(json.dumps(arguments, allow_nan=False)) == arguments
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"cell: {kind.__qualname__}.config() expected a dict of keyword arguments with JSON "
                             f"values (numbers, strings, lists), got {arguments!r}")
        try:                                 # as bptt.load builds it: the same cell again, or refused now
            rebuilt = kind(**arguments)
            again = rebuilt.config()
        except Exception as exc:
            again = f"{type(exc).__name__}: {exc}"
        if again == arguments:
            differs = _computes_otherwise(cell, rebuilt, hidden_size, dtype)
            if differs:
                raise ValueError(f"cell: {kind.__qualname__}.config() gives {arguments!r}, but "
                                 f"{kind.__qualname__}(**{arguments!r}) computes another step: {differs}; "
                                 f"expected config() to give every constructor argument that changes what the "
                                 f"cell computes, since bptt.load builds the cell again from it")
        if again != arguments:
            raise ValueError(f"cell: {kind.__qualname__}.config() expected its constructor's keyword arguments, "
                             f"from which bptt.load builds the cell again as {kind.__qualname__}(**config()), got "
                             f"{arguments!r}, and {kind.__qualname__}(**{arguments!r}) gives "
                             + (again if isinstance(again, str) else f"config() {again!r}"))
        return {"class": name, "arguments": arguments}
    takes = [p.name for p in inspect.signature(kind.__init__).parameters.values()
             if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if takes:
        raise ValueError(f"cell: {kind.__qualname__} takes arguments ({', '.join(takes)}) that the saved model "
                         f"would not record; give the class config() -> {{argument: value}}, from which bptt.load "
                         f"builds it again as {kind.__qualname__}(**config())")
    return name


def _computes_otherwise(cell, rebuilt, H, dtype):
    """What ``rebuilt`` computes other than ``cell`` on one row of random numbers (its
    declared shapes and ``option``, step's new state, step_backward's gradients), or None
    where both give the same bits."""
    declared = lambda c: (c.gates, c.state, c.param_shapes(1, H), getattr(c, "option", 0),
                          getattr(c, "dv_is_du", False))
    if declared(rebuilt) != declared(cell):
        return f"gates, state, parameter shapes, option or dv_is_du {declared(rebuilt)} against {declared(cell)}"
    p, u, v, state, ds = random_row(cell, H, dtype, np.random.default_rng(0))

    def run(c):                       # each on its own copies: a step that writes into them cannot leak
        new, cache = c.step({k: a.copy() for k, a in p.items()}, u.copy(), v.copy(), tuple(a.copy() for a in state))
        du, dv, back, dextra = c.step_backward(p, ds, cache)
        return {"new state": new, "du": (du,), "dv": (dv,), "dstate_prev": back,
                "dextra": tuple(dextra[k] for k in sorted(dextra))}
    try:
        want = run(cell)
    except Exception:
        return None                   # the Model's own check of the cell names what fails
    try:
        got = run(rebuilt)
    except Exception as exc:
        return f"its step or step_backward fails: {type(exc).__name__}: {exc}"
    for what in want:
        a, b = ([np.asarray(x, np.float64) for x in arrays] for arrays in (got[what], want[what]))
        if len(a) != len(b) or any(x.shape != y.shape or not np.array_equal(x, y, equal_nan=True)
                                   for x, y in zip(a, b)):
            off = max((float(np.abs(x - y).max()) for x, y in zip(a, b) if x.shape == y.shape), default=np.nan)
            return f"{what} differs by {off:.3g} on one row of random numbers"
    return None


def save(model, path) -> Path:
    """Write ``model`` into the folder ``path`` (created if missing); returns the folder."""
    check_model(model)
    if model.vocabulary is not None:        # as read() will take it back: one character per output
        _checks.characters("model.vocabulary", model.vocabulary, model.output_size)
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise ValueError(f"path: expected the path of a folder to hold {' and '.join(FILES)}, got {path!r}")
    folder = Path(path)
    above = next((p for p in folder.absolute().parents if p.exists()), None)
    if folder.exists() and not folder.is_dir() or above is not None and not above.is_dir():
        raise ValueError(f"path: {folder} {'is' if folder.exists() else f'is inside {above},'} a file; expected "
                         f"a folder to hold {' and '.join(FILES)}")
    if folder.is_dir():
        others = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()
                        if p.name not in FILES + CUT_SHORT or not p.is_file())
        if others:
            raise ValueError(f"path: {folder} holds other files ({', '.join(others[:3])}); expected a new folder "
                             f"or one with a saved model only")
    config = model.config | {"cell": cell_spec(model.cell, model.hidden_size, model.dtype)}
    data = save_tensors({k: np.asarray(v, order="C") for k, v in model.params.items()})
    meta = {"kind": KIND, "format": FORMAT, "config": config, "vocabulary": model.vocabulary,
            "sha256": hashlib.sha256(data).hexdigest()}
    body = json.dumps(meta, indent=1, ensure_ascii=False).encode()
    try:                    # both files whole before either is renamed: a failed save keeps the model there
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_all([(folder / FILES[0], lambda p: p.write_bytes(data)),
                          (folder / FILES[1], lambda p: p.write_bytes(body))])
    except OSError as exc:
        raise OSError(exc.errno, f"path: could not write {exc.filename or folder} ({exc.strerror or exc}); "
                                 f"expected a folder this process may create and write, with room for the "
                                 f"model") from None
    return folder


def is_saved(path) -> bool:
    return os.path.isfile(Path(path) / FILES[1])       # False where the folder cannot be read (run_folder says so)


def read(path):
    """The Model saved in the folder ``path``, checked against its recorded digest."""
    from .cells import build
    from .model import Model
    folder = Path(path)
    meta_path, tensors = folder / FILES[1], folder / FILES[0]
    try:
        meta = json.loads(read_file(meta_path).decode("utf-8"))
        data = read_file(tensors)
    except (ValueError, RecursionError, OSError) as exc:      # RecursionError: JSON nested past the stack
        raise ValueError(f"path: {folder} is not a readable saved model: {exc}") from None
    if not isinstance(meta, dict) or meta.get("kind") != KIND or meta.get("format") != FORMAT:
        raise ValueError(f"path: {meta_path} is not a bptt model of format {FORMAT} "
                         f"(kind {meta.get('kind') if isinstance(meta, dict) else None!r})")
    digest = hashlib.sha256(data).hexdigest()
    data, digest = kept_instead(tensors, data, digest, meta.get("sha256"))
    if digest != meta.get("sha256"):
        raise ValueError(f"path: {tensors} does not match the SHA-256 in {FILES[1]} ({str(meta.get('sha256'))[:12]}…, "
                         f"the file gives {digest[:12]}…): it is truncated, corrupted or was changed")
    config = _config(meta, meta_path, Model)
    vocabulary = meta.get("vocabulary")
    try:
        if isinstance(config.get("cell"), dict):               # a cell built with the arguments of its config()
            spec = config["cell"]
            if not (isinstance(spec.get("class"), str) and isinstance(spec.get("arguments"), dict)):
                raise ValueError(f"cell expected {{'class': 'module:ClassName', 'arguments': {{...}}}}, got {spec!r}")
            config["cell"] = build(spec["class"], spec["arguments"])
        model = Model(**config)
    except (ValueError, TypeError) as exc:          # a value Model refuses: named with the file it came from
        raise ValueError(f"path: {meta_path}: {exc}") from None
    if vocabulary is not None:                      # one character per output, as save() wrote it
        _checks.characters(f"path: {meta_path}: vocabulary", vocabulary, model.output_size)
    try:
        arrays = load_tensors(data)
    except SafetensorError as exc:
        raise ValueError(f"path: {tensors} is not a readable safetensors file: {exc}") from None
    return with_params(model, arrays, str(tensors), vocabulary)


def _config(meta: dict, meta_path: Path, Model) -> dict:
    """model.json's "config": a dict of Model's arguments, the four it needs among them."""
    config = meta.get("config")
    if not isinstance(config, dict):
        shown = "no \"config\"" if "config" not in meta else f"{type(config).__name__} {config!r:.60}"
        raise ValueError(f"path: {meta_path}: expected a \"config\" holding the arguments of bptt.Model "
                         f"(a JSON object), got {shown}")
    arguments = [p for name, p in inspect.signature(Model.__init__).parameters.items() if name != "self"]
    unknown = sorted(set(config) - {p.name for p in arguments})
    if unknown:
        raise ValueError(f"path: {meta_path}: config: unknown key {unknown[0]!r}; expected arguments of bptt.Model "
                         f"({', '.join(p.name for p in arguments)})")
    missing = [p.name for p in arguments if p.default is p.empty and p.name not in config]
    if missing:
        needed = ", ".join(p.name for p in arguments if p.default is p.empty)
        raise ValueError(f"path: {meta_path}: config: expected the arguments bptt.Model needs ({needed}), "
                         f"got none for {', '.join(map(repr, missing))}")
    return dict(config)


def with_params(model, arrays: dict, source: str, vocabulary=None):
    """``model`` with its parameters copied from ``arrays`` (same names, shapes and dtypes)."""
    if set(arrays) != set(model.params):
        missing, extra = sorted(set(model.params) - set(arrays)), sorted(set(arrays) - set(model.params))
        raise ValueError(f"path: {source} does not hold this model's parameters "
                         f"(missing {missing[:3]}, unexpected {extra[:3]})")
    for name, value in model.params.items():
        src = arrays[name]
        if src.shape != value.shape or src.dtype != value.dtype:
            raise ValueError(f"path: {source}: {name} is {src.shape} {src.dtype}, the model expects "
                             f"{value.shape} {value.dtype}")
        value[...] = src
    model.vocabulary = vocabulary
    return model
