"""The cell protocol: a recurrent cell defined once, run by one time loop (cells/loop.py).

A cell says what is particular to it; the loop does the rest for every cell: the input
projection of all steps in one GEMM, the recurrent GEMM of each step, masks, resets, the
state and the gradient carried in, and the weight gradients in bulk after the loop. Per
layer, with G gate blocks of H units, for t = 1 … T (rows are the B sequences):

    u_t = x_t W_xᵀ + b_h                    (B, G·H)  input part, every step in one GEMM   (K1)
    v_t = s⁰_{t-1} W_hᵀ                     (B, G·H)  recurrent part, one GEMM a step      (K2)
    s_t, cache_t = cell.step(p, u_t, v_t, s_{t-1})     the pointwise part                  (K3)

s is the tuple of state arrays named by ``cell.state``, each (B, H); s⁰ = h, the first,
is the layer's output and the one W_h multiplies. Backward, with ds_t the gradient that
reaches the state at step t (from the layer above and from step t + 1):

    du_t, dv_t, ds_{t-1}', dp_t = cell.step_backward(p, ds_t, cache_t)                    (K4)
    ds_{t-1} = ds_{t-1}' + (dv_t W_h, 0, …)                                                (K5)
    ∂L/∂W_x = Σ_t du_tᵀ x_t   ∂L/∂b_h = Σ_t du_t   ∂L/∂W_h = Σ_t dv_tᵀ s⁰_{t-1}
    ∂L/∂x_t = du_t W_x        ∂L/∂p = Σ_t dp_t  (the cell's extra parameters)             (K6)

ds_{t-1}' is what reaches s_{t-1} other than through v_t (the LSTM's f ⊙ dc, the GRU's
z ⊙ dh). docs/derivation.md block K derives the loop; docs/custom_cell.md writes a cell.
A cell subclasses ``Cell`` and gives:

    name         a short name (messages, repr)
    gates        G: W_x is (G·H, D), W_h is (G·H, H), b_h is (G·H,)
    state        names of the carried arrays, the output first: ("h",) or ("h", "c")
    extra_shapes(H) -> {name: shape}   parameters beyond W_x, W_h, b_h (default none), each
                                       shape a tuple: (H,), (H, H), () for a scalar
    initialize(params, rng, H)         adjust the default U(±1/√H) initialisation in place
                                       (optional; the same names and shapes)
    config() -> {argument: value}      a cell built with arguments: its constructor's keyword
                                       arguments, JSON values, which a saved model records
    step(p, u, v, state) -> (new_state, cache)
    step_backward(p, dstate, cache) -> (du, dv, dstate_prev, dextra)
    exact_backward                     False where step_backward is not step's derivative on
                                       purpose (a surrogate gradient; default True)

``p`` maps parameter names (W_x, W_h, b_h, the extras) to arrays. step must not write
into p, u, v or state (views of the tape; the Python loop hands u and state over read-only,
as NumPy views); ``cache`` is a tuple of arrays step_backward needs, each with the batch
as its first axis (B, …), since RTRL and the flow report take a row of the batch from
it: a parameter it needs comes from ``p`` again, not from the cache. step_backward gets
``dstate`` as a tuple of (B, H) arrays, is linear in it, reads it and the cache without
writing into them (the caller's gradient and the tape; forward mode hands the same unit
rows to every step, read-only), and
returns du and dv (B, G·H), ``dstate_prev`` like ``state``, and ``dextra`` {name:
gradient} of the extra parameters summed over the batch ({} when there are none). Use
NumPy's array functions; float32 and float64 both occur. These two are the cell's
reference: the Python loop runs them, for every array the compiled loop cannot take too.
It checks what each returns at its first step (a ValueError names the cell and the part);
a Model built with the cell runs both once on one row first (bptt/cell_check.py), p
read-only too, and holds step_backward to central differences of step on two rows, in
float64 (where an extra parameter's gradient averaged over the batch, not summed, differs).

Compiled kernels (optional; cells/compiled.py runs them in one compiled loop):

    kernels = (forward_kernel, backward_kernel)     two Numba functions (@numba.njit)
    tape_width(H) -> A     values per row the forward kernel keeps for backward (default 0)
    dv_is_du               True when dv always equals du (then one array serves both)
    backward_reads_z       False when the backward kernel never reads z (the tape drops it)
    option                 an int handed to both kernels (say, which nonlinearity)

each for ONE row of the batch, with 1-D rows of length G·H, H or A and (S, H) blocks
for the S carried arrays (row s of the block is s^s):

    forward_kernel(z, rec, bias, extra, prev, new, aux, option)
        the pre-activations are z + rec + bias: z = x_t W_xᵀ (no bias), rec = s⁰_{t-1} W_hᵀ;
        write the new state into ``new`` and what backward needs into ``z`` (its tape row,
        which it may overwrite) and ``aux``; ``extra``: the extra parameters, flattened
        one after the other in the order of extra_shapes; ``prev`` is read only
    backward_kernel(ds, z, aux, extra, prev, new, du, dv, ds_prev, dextra, option)
        ds: the gradient reaching s_t; write du and dv (K4), ds_prev (every element: what
        reaches s_{t-1} other than through v_t, zeros where nothing does), and ADD the
        extra parameters' gradient for this row into dextra (flattened as extra)

Write constants in the row's dtype (``one = du.dtype.type(1)``): Numba types an integer 1
with a float32 value as float64, which halves the vector width. Both kernels must give
what step and step_backward give for the same row; the tests of
a cell hold the two loops together (docs/custom_cell.md shows how), and a Model built with
the cell runs both kernels once in Python on one row first (bptt/cell_check.py): an index
outside a row or a result other than the step's is a ValueError there. A kernel Numba
cannot compile with these arguments is a ValueError at the first pass, naming the cell and
kernel.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Cell(ABC):
    """Base class of a recurrent cell; see the module docstring for the protocol. A
    subclass without ``step`` or ``step_backward`` cannot be built (TypeError names them)."""

    name = "cell"
    gates = 1
    state = ("h",)
    kernels = None
    dv_is_du = False
    backward_reads_z = True
    option = 0

    def extra_shapes(self, hidden_size: int) -> dict:
        """Parameters beyond W_x, W_h and b_h, as {name: shape}."""
        return {}

    def tape_width(self, hidden_size: int) -> int:
        """Values per row that the forward kernel keeps in ``aux`` for the backward kernel."""
        return 0

    def param_shapes(self, input_size: int, hidden_size: int) -> dict:
        G, H = self.gates, hidden_size
        shapes, extra = {"W_x": (G * H, input_size), "W_h": (G * H, H), "b_h": (G * H,)}, self.extra_shapes(H)
        if set(shapes) & set(extra):
            raise ValueError(f"cell: {type(self).__name__}.extra_shapes expected names other than W_x, W_h and b_h, "
                             f"got {sorted(extra)}")
        return shapes | extra

    def initialize(self, params: dict, rng, hidden_size: int) -> None:
        """Change the default initialisation (every entry U(±1/√H)) in place; default: keep it."""

    @abstractmethod
    def step(self, params: dict, u, v, state: tuple):
        """(K3): (new state tuple, cache)."""

    @abstractmethod
    def step_backward(self, params: dict, dstate: tuple, cache: tuple):
        """(K4): (du, dv, dstate_prev, dextra)."""

    def __repr__(self):                     # with the arguments config() gives: what builds it again
        config = self.config() if callable(getattr(self, "config", None)) else {}
        shown = ", ".join(f"{k}={v!r}" for k, v in config.items()) if isinstance(config, dict) else "…"
        return f"{type(self).__name__}({shown})"


def tape_width(cell, hidden_size: int) -> int:
    """``cell.tape_width(hidden_size)``, checked: a whole number of values, 0 or more."""
    width = cell.tape_width(hidden_size)
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 0:
        raise ValueError(f"cell: {type(cell).__name__}.tape_width({hidden_size}) expected a whole number of "
                         f"values, 0 or more, got {width!r}")
    return int(width)


def check_cell(cell) -> Cell:
    """``cell`` if it follows the protocol, else a ValueError naming what is missing."""
    if isinstance(cell, type):
        raise ValueError(f"cell: expected a Cell instance, got the class {cell.__name__}; build it: "
                         f"cell={cell.__name__}()")
    if not isinstance(cell, Cell):          # Cell gives the defaults the loops read (extra_shapes, tape_width, …)
        raise ValueError(f"cell: expected 'rnn', 'lstm', 'gru', 'module:Class' or a bptt.Cell, got "
                         f"{type(cell).__name__}, which does not subclass bptt.Cell")
    if isinstance(cell.gates, bool) or not isinstance(cell.gates, int) or cell.gates < 1:
        raise ValueError(f"cell: {type(cell).__name__}.gates expected a positive integer, got {cell.gates!r}")
    if not (isinstance(cell.state, tuple) and cell.state and all(isinstance(s, str) for s in cell.state)
            and len(set(cell.state)) == len(cell.state)):
        raise ValueError(f"cell: {type(cell).__name__}.state expected a tuple of distinct names, the output "
                         f"first, got {cell.state!r}")
    kernels = getattr(cell, "kernels", None)
    if kernels is not None and not (isinstance(kernels, (tuple, list)) and len(kernels) == 2
                                    and all(hasattr(k, "py_func") for k in kernels)):
        raise ValueError(f"cell: {type(cell).__name__}.kernels expected (forward_kernel, backward_kernel), two "
                         f"Numba functions (@numba.njit), or None, got {kernels!r}")
    return cell
