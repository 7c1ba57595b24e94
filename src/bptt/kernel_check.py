"""Floor 3: a user cell's kernels checked against its NumPy step before a Model runs them.

Compiled code does not check indices: kernels whose indexing disagrees with the cell's
``gates``, ``state`` or ``tape_width`` write over other memory in the compiled time loop
(cells/compiled.py), and the run goes wrong later or crashes. So when a Model is built
with a user's cell that has kernels, ``check_kernels`` runs each kernel's Python function
(``kernel.py_func``, where NumPy checks every index) once on one row of random numbers,
with the rows exactly as the loop hands them over (cells/protocol.py):

    forward_kernel(z, rec, bias, extra, prev, new, aux, option)
        z, rec, bias (G·H,)  extra (the extras' sizes summed,)  prev, new (S, H)  aux (A,)
    backward_kernel(ds, z, aux, extra, prev, new, du, dv, ds_prev, dextra, option)
        ds, ds_prev (S, H)  du, dv (G·H,), one array when dv_is_du  z (0,) when not
        backward_reads_z  dextra (the extras' sizes summed,)

and compares what they write with ``step`` and ``step_backward`` on the same row (a
batch of one): the new state (K3); du, dv, ds_prev and what the kernel adds to dextra
(K4). The outputs start as NaN, so a value the kernel never writes differs too, and
dextra at random values, so a kernel that sets it instead of adding to it differs. An
error raised by the cell's own step or step_backward on that row is a ValueError naming
the cell and the sizes it got. An index outside a row, or a
difference beyond float rounding (1e-4 in float32, 1e-9 in float64, relative to the
value's size where it exceeds 1), is a ValueError naming the cell, the kernel, and the
line or the value. A kernel that Python cannot run (Numba-only code) is left to the
loop's own first pass. The verdict is kept per cell class, kernels, sizes and dtype for
the process.
"""
from __future__ import annotations

import os
import re
import traceback

import numpy as np

from .cells.loop import check_step, check_step_backward
from .cells.protocol import tape_width

TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-9}

_CHECKED: set = set()


class _NotRunnable(Exception):
    """A kernel Python cannot run (Numba-only code)."""


def check_kernels(cell, hidden_size: int, dtype) -> None:
    """Raise ValueError if ``cell``'s kernels index outside their rows or disagree with its
    ``step`` / ``step_backward`` at ``hidden_size`` units in ``dtype``; see the module docstring."""
    dtype = np.dtype(dtype)
    forward_kernel, backward_kernel = cell.kernels
    H, G, S = hidden_size, cell.gates, len(cell.state)
    A, extra_shapes = tape_width(cell, H), cell.extra_shapes(H)
    key = (type(cell), forward_kernel, backward_kernel, cell.option, cell.dv_is_du, cell.backward_reads_z,
           G, S, A, H, dtype.str, tuple(extra_shapes.items()))
    if key in _CHECKED:
        return
    rng = np.random.default_rng(0)

    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)

    def unwritten(*shape):
        return np.full(shape, np.nan, dtype)

    p = {"W_x": normal(G * H, 1), "W_h": normal(G * H, H) / H ** 0.5, "b_h": normal(G * H)}
    p |= {k: normal(*shape) / H ** 0.5 for k, shape in extra_shapes.items()}
    extra = np.concatenate([p[k].ravel() for k in extra_shapes] or [np.zeros(0, dtype)])
    z, rec, prev = normal(G * H), normal(G * H), normal(S, H)
    u, bias = z + p["b_h"], p["b_h"]
    new, aux = unwritten(S, H), unwritten(A)
    rows = (f"with H = {H} it gets rows of G·H = {G * H} (gates = {G}), (S, H) = ({S}, {H}) blocks "
            f"(state = {cell.state}) and aux of tape_width({H}) = {A}")
    try:
        _run(cell, "forward", forward_kernel, (z, rec, bias, extra, prev, new, aux, cell.option), rows)
    except _NotRunnable:
        _CHECKED.add(key)
        return
    state, cache = _reference(cell, "step", rows, p, u[None], rec[None], tuple(prev[s][None] for s in range(S)))
    check_step(cell, state, cache, S, (1, H), dtype)
    _compare(cell, "forward", "step", [(f"new state {name!r}", new[s], state[s][0])
                                       for s, name in enumerate(cell.state)], dtype, H)

    ds = normal(S, H)
    du = unwritten(G * H)
    dv = du if cell.dv_is_du else unwritten(G * H)
    ds_prev, dextra_start = unwritten(S, H), normal(extra.size)      # not 0: the kernel must add to it
    dextra = dextra_start.copy()
    z_tape = z if cell.backward_reads_z else np.zeros(0, dtype)
    if not cell.backward_reads_z:
        rows += ", and z empty (backward_reads_z = False)"
    try:
        _run(cell, "backward", backward_kernel, (ds, z_tape, aux, extra, prev, new, du, dv, ds_prev, dextra,
                                                 cell.option), rows)
    except _NotRunnable:
        _CHECKED.add(key)
        return
    result = _reference(cell, "step_backward", rows, p, tuple(ds[s][None] for s in range(S)), cache)
    check_step_backward(cell, result, S, (1, H), (1, G * H), {k: p[k] for k in extra_shapes}, dtype)
    du_ref, dv_ref, back_ref, dextra_ref = result
    flat_ref = np.concatenate([np.asarray(dextra_ref[k]).ravel() for k in extra_shapes] or [np.zeros(0, dtype)])
    _compare(cell, "backward", "step_backward",
             [("du", du, du_ref[0]), ("dv", dv, dv_ref[0])]
             + [(f"ds_prev of state {name!r}", ds_prev[s], back_ref[s][0]) for s, name in enumerate(cell.state)]
             + [("dextra (what it adds)", dextra - dextra_start, flat_ref)], dtype, H)
    _CHECKED.add(key)


def _reference(cell, method, rows, *args):
    """cell.step or cell.step_backward on the row: an error of the cell's own code is a
    ValueError naming the cell and the sizes it was given."""
    try:
        return getattr(cell, method)(*args)
    except Exception as exc:
        raise ValueError(f"cell: {type(cell).__name__}.{method} fails on one row: {type(exc).__name__}: {exc}; "
                         f"{rows}; expected gates and state to match what step and step_backward "
                         f"compute") from exc


def _run(cell, direction, kernel, args, rows) -> None:
    """kernel.py_func(*args) in Python: an index outside a row is a ValueError naming the line."""
    try:
        kernel.py_func(*args)
    except IndexError as exc:
        frames = traceback.extract_tb(exc.__traceback__)[1:]      # the kernel's frame, then any it calls
        if frames:
            path, line = frames[-1].filename, re.sub(r"\s+#[^'\"]*$", "", frames[-1].line)   # without its comment
            path = os.path.relpath(path) if os.path.abspath(path).startswith(os.getcwd() + os.sep) else path
        where = f" at {path}:{frames[-1].lineno} ({line})" if frames else ""
        raise ValueError(f"cell: {type(cell).__name__}'s {direction}_kernel indexes outside the rows it is "
                         f"given{where}: IndexError: {exc}; {rows}; expected gates, state and tape_width to "
                         f"match what the kernel indexes") from None
    except Exception:       # Python cannot run it (Numba-only code): the loop's first pass says what fails
        raise _NotRunnable from None


def _compare(cell, direction, reference, pairs, dtype, H) -> None:
    """Each (what, kernel's value, reference value): a ValueError at the first that differs."""
    for what, got, want in pairs:
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        if got.shape != want.shape:
            raise ValueError(f"cell: {type(cell).__name__}'s {direction}_kernel writes {what} of {got.size} values, "
                             f"{type(cell).__name__}.{reference} gives {want.size}")
        scale = np.maximum(1.0, np.abs(want))
        off = ~(np.abs(got - want) <= TOLERANCE[np.dtype(dtype)] * scale)       # NaN counts as off
        if off.any():
            i = int(np.flatnonzero(off.ravel())[0])
            index = np.unravel_index(i, got.shape)
            raise ValueError(
                f"cell: {type(cell).__name__}'s {direction}_kernel disagrees with {type(cell).__name__}.{reference}: "
                f"{what}[{', '.join(map(str, index))}] is {got.ravel()[i]:.6g} against {want.ravel()[i]:.6g} "
                f"(H = {H}, {np.dtype(dtype).name}, one row of random numbers"
                f"{'; NaN: the kernel never writes it' if np.isnan(got.ravel()[i]) else ''}); expected the kernels "
                f"to compute what step and step_backward compute (bptt.Cell's docstring)")
