"""Checks at the door: every public entry point validates what it is given here.

Each failure raises ``ValueError`` naming the argument, what came and what was
expected, so a user never has to read a traceback from deep inside a kernel.
"""
from __future__ import annotations

import math

import numpy as np

FLOAT_DTYPES = {"float32": np.float32, "float64": np.float64}


def argument(kind, expected: str, test=lambda value: True):
    """An argparse ``type``: ``kind(text)``, refused in argparse's one line ("argument
    --opt: expected …, got '…'") when it does not parse or ``test`` fails."""
    import argparse

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not test(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    parse.__name__ = kind.__name__
    return parse


def dtype_of(name: str, value) -> np.dtype:
    """Resolve a dtype given as a string or numpy dtype; only float32 and float64, in the
    machine's native byte order: '>f4' (big-endian float32) gives float32, the same numbers
    in the order the kernels compute in."""
    try:
        dt = None if value is None else np.dtype(value)        # np.dtype(None) would be float64
    except TypeError:
        dt = None
    if dt is None or dt.name not in FLOAT_DTYPES:
        raise ValueError(f"{name}: expected 'float32' or 'float64', got {value!r}")
    return dt.newbyteorder("=")


def choice(name: str, value, options) -> str:
    if value not in options:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def flag(name: str, value) -> bool:
    """True or False (Python's or NumPy's bool); a value that only tests true or false
    ("False", "no", 0, None) is refused: a string "False" is true."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def generator(name: str, value) -> np.random.Generator:
    """np.random.default_rng(value), or a ValueError naming the argument (a bool too: NumPy
    would take True as the seed 1)."""
    try:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        return np.random.default_rng(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a seed (an integer >= 0, or None) or a numpy Generator, "
                         f"got {value!r}") from None


def number(name: str, value, test=lambda v: True, expected: str = "a number") -> float:
    """A finite real number (not a bool or a string; NumPy's numbers too) that passes ``test``."""
    real = not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, float, np.integer, np.floating))
    try:
        finite = real and math.isfinite(value)
    except OverflowError:                          # an int too large for a float
        finite = False
    if not finite or not test(value):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return float(value)


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _shape_text(dims) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def on_gpu(name: str, value) -> None:
    """Refuse an array on a GPU (CuPy, or any with __cuda_array_interface__): a Model, its
    trainer, save and the exports run on NumPy arrays; only the layers of bptt.cells take
    CuPy ones (docs/gpu.md)."""
    try:
        gpu = hasattr(value, "__cuda_array_interface__")
    except Exception:                              # a property that raises anything but AttributeError
        gpu = False
    if gpu:
        kind = f"{type(value).__module__.split('.')[0]}.{type(value).__name__}"
        raise ValueError(f"{name}: expected a NumPy array (a Model runs on the CPU; only the layers of bptt.cells "
                         f"take CuPy arrays), got a {kind} on the GPU; copy it to the host first "
                         f"(cupy.asnumpy(a), or a.cpu().numpy() for a torch tensor)")


def plain(name: str, value):
    """``value`` with an ndarray subclass (np.matrix, np.memmap) seen as a plain ndarray of
    the same numbers; a masked array is refused, as its mask would be dropped unseen."""
    on_gpu(name, value)
    if isinstance(value, np.ma.MaskedArray):
        raise ValueError(f"{name}: expected a plain array, got a numpy.ma.MaskedArray, whose mask would be "
                         f"ignored; hint: pass mask= for padded steps, or .filled() for the values")
    return np.asarray(value) if isinstance(value, np.ndarray) and type(value) is not np.ndarray else value


def float_array(name: str, value, dtype: np.dtype, dims: tuple, finite: bool = True) -> np.ndarray:
    """Return ``value`` as an array of ``dtype`` whose shape matches ``dims``.

    ``dims`` holds ints (must match) or strings (any size, used in messages), e.g.
    ``("T", "B", 3)``. Lists are converted to ``dtype``; an ndarray must already
    have it (silent casts hide precision mistakes), in either byte order (a big-endian
    one is converted to the native order, the same numbers). Empty sizes are refused.
    """
    value = plain(name, value)
    if value is None:                              # np.asarray(None, float) is a shape-() nan
        raise ValueError(f"{name}: expected an array of shape {_shape_text(dims)}, got None")
    if isinstance(value, np.ndarray):
        arr, want = value, np.dtype(dtype)
        if arr.dtype != want and not arr.dtype.isnative and arr.dtype.newbyteorder("=") == want:
            arr = arr.astype(want)
        if arr.dtype != want:
            text = (lambda d: d.str) if arr.dtype.name == want.name else (lambda d: d.name)   # '>f4' beside '<f4'
            raise ValueError(
                f"{name}: expected dtype {text(want)} (the model's dtype), "
                f"got {text(arr.dtype)}; convert with .astype('{want.name}')"
            )
    else:
        try:
            arr = np.asarray(value, dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: expected an array of numbers, got {type(value).__name__}") from exc
    _check_shape(name, arr, dims)
    if finite and not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"{name}: expected finite numbers, got {arr[tuple(bad)]} at index {tuple(int(i) for i in bad)}")
    return arr


def _check_shape(name: str, arr: np.ndarray, dims: tuple) -> None:
    expected = _shape_text(dims)
    if arr.ndim != len(dims):
        raise ValueError(f"{name}: expected shape {expected}, got shape {arr.shape} ({arr.ndim} dimensions instead of {len(dims)})")
    for size, want in zip(arr.shape, dims):
        if isinstance(want, int) and size != want:
            raise ValueError(f"{name}: expected shape {expected}, got shape {arr.shape}")
        if size == 0:
            raise ValueError(f"{name}: expected shape {expected} with no empty dimension, got shape {arr.shape}")


def class_targets(name: str, value, dims: tuple, num_classes: int) -> np.ndarray:
    """Integer class indices in [0, num_classes)."""
    arr = np.asarray(plain(name, value))
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.isfinite(arr).all() and (arr == np.round(arr)).all():
            raise ValueError(f"{name}: expected integer class indices, got dtype {arr.dtype.name}; convert with .astype(int)")
        raise ValueError(f"{name}: expected integer class indices, got dtype {arr.dtype.name}")
    _check_shape(name, arr, dims)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{name}: expected class indices in [0, {num_classes - 1}], got values in [{lo}, {hi}]")
    return arr.astype(np.intp, copy=False)


VALID_STEP = "True = a valid step"
RESET = "True = the state is zeroed before the step"


def bool_mask(name: str, value, dims: tuple, meaning: str) -> np.ndarray:
    """``value`` as a boolean array of shape ``dims``; ``meaning`` says what True means."""
    arr = np.asarray(plain(name, value))
    if arr.dtype != np.bool_:
        raise ValueError(f"{name}: expected a boolean array ({meaning}), got dtype {arr.dtype.name}")
    _check_shape(name, arr, dims)
    return arr


def characters(name: str, value, size: int | None = None) -> list:
    """A vocabulary: a string, or a list or tuple of single characters, each once; with
    ``size``, exactly that many (one per input and output of a character model)."""
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    if not (isinstance(value, str) or isinstance(value, (list, tuple))
            and all(isinstance(c, str) and len(c) == 1 for c in value)):
        raise ValueError(f"{name}: expected a string or a sequence of single characters (one per output), "
                         f"got {type(value).__name__} {shown}")
    chars = list(value)
    if not chars or len(set(chars)) != len(chars):
        raise ValueError(f"{name}: expected each of the model's characters once, in the order of its inputs, "
                         f"got {shown}")
    unencodable = [c for c in chars if "\ud800" <= c <= "\udfff"]        # a lone surrogate: no UTF-8 for it
    if unencodable:
        raise ValueError(f"{name}: expected characters UTF-8 can encode, got {unencodable[0]!r} (a lone surrogate)")
    if size is not None and len(chars) != size:
        raise ValueError(f"{name}: expected {size} characters (one per output of the model), "
                         f"got {len(chars)}: {shown}")
    return chars
