"""Floor 3: a user's cell run on one row before a Model uses it.

When a Model is built with a cell of the user's, ``check_on_one_row`` runs the cell's
``step`` and ``step_backward`` once on one row of random numbers (a batch of one; the
parameters as ``initialize`` gives them where random ones make step's values not finite,
outside a parameter's domain): an error they raise there, or arrays of the wrong shape
or dtype (cells/loop.py's checks), is a ValueError naming the cell and the sizes it got,
at construction rather than deep in the first pass.

Compiled code does not check indices: kernels whose indexing disagrees with the cell's
``gates``, ``state`` or ``tape_width`` would write over other memory in the compiled time
loop (cells/compiled.py). So, where the cell has kernels and the compiled loop is on,
each kernel's Python function (``kernel.py_func``, where NumPy checks every index) runs
on the same row first, with the rows exactly as the loop hands them over
(cells/protocol.py):

    forward_kernel(z, rec, bias, extra, prev, new, aux, option)
        z, rec, bias (G·H,)  extra (the extras' sizes summed,)  prev, new (S, H)  aux (A,)
    backward_kernel(ds, z, aux, extra, prev, new, du, dv, ds_prev, dextra, option)
        ds, ds_prev (S, H)  du, dv (G·H,), one array when dv_is_du  z (0,) when not
        backward_reads_z  dextra (the extras' sizes summed,)

and what they write is compared with what the steps give: the new state (K3); du, dv,
ds_prev and what the kernel adds to dextra (K4). The outputs start as NaN, so a value
the kernel never writes differs too, and dextra at random values, so a kernel that sets
it instead of adding to it differs. An index outside a row, or a difference beyond float
rounding (1e-4 in float32, 1e-9 in float64, relative to the value's size where it
exceeds 1), is a ValueError naming the cell, the kernel, and the line or the value. A
kernel that Python cannot run (Numba-only code) is left to the loop's own first pass.
The verdict is kept per cell class, the arguments its config() gives, its attributes,
kernels, sizes and dtype for the process. step_backward is also held to central
differences of step, in float64 on two rows (a batch of two, where a gradient averaged
over the batch instead of summed differs; a cell whose backward is not that derivative on
purpose, a surrogate gradient, sets exact_backward = False).
"""
from __future__ import annotations

import inspect
import json
import os
import re
import traceback

import numpy as np

from .cells.loop import check_step, check_step_backward
from .cells.protocol import tape_width

TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-9}

_CHECKED: set = set()


def check_on_one_row(cell, hidden_size: int, dtype, kernels: bool = True) -> None:
    """Raise ValueError if ``cell``'s step or step_backward fails on one row at
    ``hidden_size`` units in ``dtype``, or (``kernels``, where the cell has them) its
    kernels index outside their rows or disagree with those steps; see the module docstring."""
    dtype = np.dtype(dtype)
    kernels = kernels and getattr(cell, "kernels", None) is not None
    forward_kernel, backward_kernel = cell.kernels if kernels else (None, None)
    H, G, S = hidden_size, cell.gates, len(cell.state)
    _check_extra_shapes(cell, H)
    shapes = cell.param_shapes(1, H)                  # checks the extras' names first
    A, extra_shapes = tape_width(cell, H), cell.extra_shapes(H)
    key = (type(cell), forward_kernel, backward_kernel, cell.option, cell.dv_is_du, cell.backward_reads_z,
           G, S, A, H, dtype.str, tuple(extra_shapes.items()), _arguments(cell))
    if key in _CHECKED:
        return
    rng = np.random.default_rng(0)

    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)

    def unwritten(*shape):
        return np.full(shape, np.nan, dtype)

    p = {k: normal(*shape) / (1 if k in ("W_x", "b_h") else H ** 0.5) for k, shape in shapes.items()}
    z, rec, prev = normal(G * H), normal(G * H), normal(S, H)
    p = _in_domain(cell, p, (z + p["b_h"])[None], rec[None], tuple(prev[s][None] for s in range(S)), H, rng)
    extra = np.concatenate([np.ravel(p[k]) for k in extra_shapes] or [np.zeros(0, dtype)])
    u, bias = z + p["b_h"], p["b_h"]
    new, aux = unwritten(S, H), unwritten(A)
    rows = (f"with H = {H} it gets rows of G·H = {G * H} (gates = {G}), (S, H) = ({S}, {H}) blocks "
            f"(state = {cell.state})" + (f" and aux of tape_width({H}) = {A}" if kernels else ""))
    if kernels:
        kernels = _run(cell, "forward", forward_kernel, (z, rec.copy(), bias, extra, prev, new, aux, cell.option),
                       rows)                       # rec: the loop's scratch row, which a kernel may reuse
    state, cache = _pair(cell, _reference(cell, "step", rows, _read_only_params(p), *_read_only(u[None], rec[None]),
                                          _read_only(*(prev[s][None] for s in range(S)))))
    check_step(cell, state, cache, S, (1, H), dtype)
    if kernels:
        _compare(cell, "forward", "step", [(f"new state {name!r}", new[s], state[s][0])
                                           for s, name in enumerate(cell.state)], dtype, H)

    ds = normal(S, H)
    du = unwritten(G * H)
    dv = du if cell.dv_is_du else unwritten(G * H)
    ds_prev, dextra_start = unwritten(S, H), normal(extra.size)      # not 0: the kernel must add to it
    dextra = dextra_start.copy()
    z_tape = z if cell.backward_reads_z else np.zeros(0, dtype)
    if kernels:
        if not cell.backward_reads_z:
            rows += ", and z empty (backward_reads_z = False)"
        kernels = _run(cell, "backward", backward_kernel, (ds, z_tape, aux, extra, prev, new, du, dv, ds_prev,
                                                           dextra, cell.option), rows)
    result = _reference(cell, "step_backward", rows, _read_only_params(p),
                        _read_only(*(ds[s][None] for s in range(S))),
                        _read_only(*cache) if isinstance(cache, tuple) else cache)
    check_step_backward(cell, result, S, (1, H), (1, G * H), {k: p[k] for k in extra_shapes}, dtype)
    if kernels:
        du_ref, dv_ref, back_ref, dextra_ref = result
        flat_ref = np.concatenate([np.asarray(dextra_ref[k]).ravel() for k in extra_shapes] or [np.zeros(0, dtype)])
        _compare(cell, "backward", "step_backward",
                 [("du", du, du_ref[0]), ("dv", dv, dv_ref[0])]
                 + [(f"ds_prev of state {name!r}", ds_prev[s], back_ref[s][0]) for s, name in enumerate(cell.state)]
                 + [("dextra (what it adds)", dextra - dextra_start, flat_ref)], dtype, H)
    if getattr(cell, "exact_backward", True):
        _check_derivative(cell, extra_shapes, H, S)
    _CHECKED.add(key)


def _in_domain(cell, p, u, v, state, H, rng) -> dict:
    """``p``, or, where step gives a value that is not finite with it (a parameter drawn
    outside its domain: the square root or log of a gain the cell keeps positive), the
    parameters as a Model initialises them: U(±1/√H), then the cell's ``initialize``."""
    with np.errstate(all="ignore"):
        try:
            if all(np.isfinite(s).all() for s in cell.step(p, u, v, state)[0]):
                return p
            drawn = {k: rng.uniform(-1, 1, np.shape(a)) / H ** 0.5 for k, a in p.items()}
            cell.initialize(drawn, rng, H)
            return {k: np.asarray(drawn[k], np.asarray(a).dtype) for k, a in p.items()}
        except Exception:
            return p                      # the checks below name what fails


def _arguments(cell) -> str:
    """The arguments a cell was built with, as its ``config()`` gives them ("" without one),
    and its attributes (a cell without config() keeps its arguments there): two cells of one
    class built with other arguments are checked each."""
    config = getattr(cell, "config", None)
    attributes = repr(sorted(getattr(cell, "__dict__", {}).items()))
    try:
        return (json.dumps(config(), sort_keys=True, default=repr) if callable(config) else "") + attributes
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}" + attributes


def _check_extra_shapes(cell, H) -> None:
    """extra_shapes(H) must be {name: shape}, each shape a tuple of whole numbers >= 1 (() for a scalar)."""
    extra = cell.extra_shapes(H)
    bad = None if isinstance(extra, dict) else extra
    for name, shape in extra.items() if isinstance(extra, dict) else ():
        if not (isinstance(name, str) and name and isinstance(shape, tuple)
                and all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 for n in shape)):
            bad = {name: shape}
            break
    if bad is not None:
        raise ValueError(f"cell: {type(cell).__name__}.extra_shapes({H}) expected {{name: shape}}, each shape a tuple "
                         f"of whole numbers >= 1 (say (H,) or (H, H); () for a scalar), got {bad!r}")


def _read_only(*arrays) -> tuple:
    """Views of the arrays that refuse writes, as the loops hand the steps their inputs."""
    views = tuple(np.asarray(a).view() for a in arrays)
    for v in views:
        v.flags.writeable = False
    return views


def _read_only_params(p: dict) -> dict:
    """p with read-only views: a step that writes into a parameter (clips it, say) is named."""
    return dict(zip(p, _read_only(*p.values())))


INPUTS = {"step": ("p", "u", "v", "state"), "step_backward": ("p", "dstate", "the cache")}


def _reference(cell, method, rows, *args):
    """cell.step or cell.step_backward on the row: an error of the cell's own code is a
    ValueError naming the cell and the sizes it was given; a write into an input names the input."""
    try:
        return getattr(cell, method)(*args)
    except ValueError as exc:
        if "read-only" not in str(exc):
            raise _failed(cell, method, rows, exc) from exc
        inputs = _written(cell, method, args)
        why = "; the model's parameters change only by the optimizer's update" if inputs.startswith("p[") else ""
        raise ValueError(f"cell: {type(cell).__name__}.{method} writes into {inputs}, which it may only read "
                         f"({exc}); return new arrays{why}") from exc
    except Exception as exc:
        raise _failed(cell, method, rows, exc) from exc


def _written(cell, method, args) -> str:
    """The input (for p, the parameter) that ``method`` writes into: the one that fails
    alone read-only; all of them where none does alone."""
    def writable(a):
        if isinstance(a, dict):
            return {k: np.array(v) for k, v in a.items()}
        return tuple(np.array(b) for b in a) if isinstance(a, tuple) else np.array(a)

    def writes(i, key=None):
        trial = [writable(a) for a in args]
        trial[i] = args[i] if key is None else trial[i] | {key: args[i][key]}
        try:
            getattr(cell, method)(*trial)
        except ValueError as exc:
            return "read-only" in str(exc)
        except Exception:
            return False
        return False

    names = INPUTS[method]
    for i, name in enumerate(names):
        if writes(i):
            keys = [k for k in args[i] if writes(i, k)] if name == "p" else []
            return f"p[{keys[0]!r}]" if keys else name
    return ", ".join(names[:-1]) + " or " + names[-1]


def _pair(cell, result) -> tuple:
    """What step returned, if it is the pair (new state, cache); else a ValueError saying so."""
    if not (isinstance(result, tuple) and len(result) == 2):
        length = f" of length {len(result)}" if hasattr(result, "__len__") else ""
        raise ValueError(f"cell: {type(cell).__name__}.step must return (state, cache), a pair of tuples, got "
                         f"{type(result).__name__}{length}")
    return result


def _failed(cell, method, rows, exc):
    return ValueError(f"cell: {type(cell).__name__}.{method} fails on one row: {type(exc).__name__}: {exc}; "
                      f"{rows}; expected gates and state to match what step and step_backward compute")


KERNEL_ARGUMENTS = {"forward": "(z, rec, bias, extra, prev, new, aux, option)",
                    "backward": "(ds, z, aux, extra, prev, new, du, dv, ds_prev, dextra, option)"}


def _run(cell, direction, kernel, args, rows) -> bool:
    """kernel.py_func(*args) in Python: an index outside a row is a ValueError naming the line,
    and so is a kernel that does not take the protocol's arguments; False where Python cannot
    run it (Numba-only code: the loop's first pass says what fails)."""
    try:
        inspect.signature(kernel.py_func).bind(*args)
    except TypeError as exc:
        raise ValueError(f"cell: {type(cell).__name__}'s {direction}_kernel takes {kernel.__name__}"
                         f"{inspect.signature(kernel.py_func)}, which cannot take the {len(args)} arguments the "
                         f"loop hands it ({exc}); expected {direction}_kernel{KERNEL_ARGUMENTS[direction]} "
                         f"(bptt.cells.protocol)") from None
    try:
        kernel.py_func(*args)
        return True
    except IndexError as exc:
        frames = traceback.extract_tb(exc.__traceback__)[1:]      # the kernel's frame, then any it calls
        if frames:
            path, line = frames[-1].filename, re.sub(r"\s+#[^'\"]*$", "", frames[-1].line)   # without its comment
            path = os.path.relpath(path) if os.path.abspath(path).startswith(os.getcwd() + os.sep) else path
        where = f" at {path}:{frames[-1].lineno} ({line})" if frames else ""
        raise ValueError(f"cell: {type(cell).__name__}'s {direction}_kernel indexes outside the rows it is "
                         f"given{where}: IndexError: {exc}; {rows}; expected gates, state and tape_width to "
                         f"match what the kernel indexes") from None
    except Exception:
        return False


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
                f"to compute what step and step_backward compute (bptt.cells.protocol)")


def random_row(cell, H, dtype, rng, rows: int = 1) -> tuple:
    """(p, u, v, state, ds): one row (or ``rows``) of random numbers in ``dtype`` for
    ``cell``'s step and step_backward at H units, u and v (rows, G·H), each state and ds
    array (rows, H); W_h and the extra parameters scaled by 1/√H, so that a step stays in
    its functions' range."""
    p = {k: (rng.standard_normal(shape) / (1 if k in ("W_x", "b_h") else H ** 0.5)).astype(dtype)
         for k, shape in cell.param_shapes(1, H).items()}
    u, v = (rng.standard_normal((rows, cell.gates * H)).astype(dtype) for _ in range(2))
    state, ds = [tuple(rng.standard_normal((rows, H)).astype(dtype) for _ in cell.state) for _ in range(2)]
    return p, u, v, state, ds


def _check_derivative(cell, extra_shapes, H, S) -> None:
    """step_backward against central differences of step, in float64 on two rows of random
    numbers (a batch of two: an extra parameter's gradient averaged over the batch instead
    of summed differs there, and not on one row): for each input (u, v, each state, each
    extra parameter) a random direction δ, ⟨gradient, δ⟩ against (L(x + εδ) − L(x − εδ)) / 2ε
    with L = Σ_s ⟨ds_s, s_t^s⟩. A cell that cannot run in float64, or gives another dtype
    there, is left to the model's own."""
    rng = np.random.default_rng(1)
    p, u, v, state, ds = random_row(cell, H, np.float64, rng, rows=2)
    p = _in_domain(cell, p, u, v, state, H, rng)
    try:
        new, cache = cell.step(p, u, v, state)
        du, dv, back, dextra = cell.step_backward(p, ds, cache)
        grads = [du, dv, *back, *(dextra[k] for k in extra_shapes)]
        # a NumPy scalar counts: a scalar parameter's gradient, summed over the batch, is one
        if not all(isinstance(g, (np.ndarray, np.generic)) and g.dtype == np.float64 for g in (*new, *grads)):
            return
        if not all(np.isfinite(g).all() for g in (*new, *grads)):
            return                        # no parameters in the cell's domain: nothing to compare
    except Exception:
        return
    noise = sum(float(np.abs(d * n).sum()) for d, n in zip(ds, new))     # the size of L, for its rounding

    def args(i, delta):                   # (p, u, v, state) with input i moved by delta
        a = [p, u, v, list(state)]
        if i < 2:
            a[i + 1] = a[i + 1] + delta
        elif i < 2 + S:
            a[3][i - 2] = state[i - 2] + delta
        else:
            k = list(extra_shapes)[i - 2 - S]
            a[0] = p | {k: p[k] + delta}
        return a[0], a[1], a[2], tuple(a[3])

    def slope(i, delta, eps=1e-6):
        moved = [sum(float(np.sum(d * n)) for d, n in zip(ds, cell.step(*args(i, sign * eps * delta))[0]))
                 for sign in (1, -1)]
        return (moved[0] - moved[1]) / (2 * eps)

    labels = ["du", "dv"] + [f"dstate_prev of state {n!r}" for n in cell.state] + \
             [f"dextra[{k!r}]" for k in extra_shapes]
    for i, (label, g) in enumerate(zip(labels, grads)):
        delta = rng.standard_normal(np.shape(g))
        if abs(slope(i, delta) - float(np.sum(g * delta))) <= 1e-6 * float(np.abs(g * delta).sum()) + 1e-7 * noise:
            continue
        # the entries one by one, at most 256 of them (a wide row would take G·H steps)
        probed = np.arange(g.size) if g.size <= 256 else np.sort(rng.choice(g.size, 256, replace=False))
        fd = np.array([slope(i, np.eye(1, g.size, k).reshape(np.shape(g))) for k in probed])
        at = int(np.argmax(np.abs(fd - np.ravel(g)[probed])))
        j = np.unravel_index(int(probed[at]), np.shape(g))
        entry = f"{label}[{', '.join(map(str, j))}]" if j else label          # a scalar has no index
        raise ValueError(
            f"cell: {type(cell).__name__}.step_backward's {label} disagrees with central differences of "
            f"{type(cell).__name__}.step: {entry} is {float(g[j]):.6g} against "
            f"{float(fd[at]):.6g} (H = {H}, float64, two rows of random numbers); expected step_backward to give the "
            f"derivative of step (docs/custom_cell.md); a cell whose backward is not that derivative on purpose "
            f"(a surrogate gradient) sets exact_backward = False")
