"""Floor 2: recurrent cells, the time loops that run them, and the output head.

Every layer has the same contract (docs/architecture.md, the layer contract):

    forward(params, x[T,B,D], state0, mask=None, resets=None, noise=None) -> (h[T,B,H], stateT, tape)
    backward(params, dh[T,B,H] | None, dstateT | None, tape, need_dx=True)
        -> (dx[T,B,D] or None when not need_dx, dstate0, grads)

with ``GATES`` (blocks of H rows in W_x, W_h), ``STATE`` (names of the state arrays) and
``param_shapes(input_size, hidden_size)``. ``noise`` (loop.Noise): recurrent dropout's mask
and zoneout's d_t, kept on the tape (bptt/dropout.py draws them). A layer is a cell of the protocol
(protocol.py) in a time loop: ``CompiledLayer`` (compiled.py) for a cell with kernels,
``CellLayer`` (loop.py, the Python loop) for one without. The built-in cells rnn, lstm
and gru are such cells, with no other path.
"""
from __future__ import annotations

import importlib
import os
import sys

from . import head
from .compiled import CompiledLayer
from .gru import GRU
from .loop import CellLayer
from .lstm import LSTM
from .protocol import Cell, check_cell
from .rnn import RNN

CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


def layer_of(cell) -> CellLayer:
    """The layer that runs a Cell: compiled when it has kernels, else the Python loop."""
    check_cell(cell)
    return CompiledLayer(cell) if getattr(cell, "kernels", None) is not None else CellLayer(cell)


def resolve(cell, nonlinearity: str = "tanh"):
    """(name, layer) for "rnn", "lstm", "gru", "package.module:ClassName" (a Cell class,
    built with no arguments) or a Cell instance."""
    if isinstance(cell, str):
        if cell in CELLS:
            return cell, layer_of(RNN(nonlinearity) if cell == "rnn" else CELLS[cell]())
        if ":" not in cell:
            raise ValueError(f"cell: expected one of 'rnn', 'lstm', 'gru' or 'package.module:ClassName', "
                             f"got {cell!r}")
        return cell, layer_of(build(cell))
    return check_cell(cell).name, layer_of(cell)


def build(spec: str, arguments: dict | None = None):
    """The Cell that "package.module:ClassName" names, built with ``arguments`` (keyword
    arguments, as a saved model records them from the cell's ``config()``) or none."""
    module_name, _, class_name = spec.partition(":")
    if not (module_name.strip() and class_name.isidentifier()):
        raise ValueError(f"cell: expected 'package.module:ClassName' (a module and a class in it), got {spec!r}")
    if os.getcwd() not in sys.path:               # as `python -m` would: a module beside the user
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:           # a run or saved model opened elsewhere than where it was trained
        raise ValueError(f"cell: cannot import {module_name!r} for {spec!r}: {exc}; bptt imports it from the "
                         f"working directory and PYTHONPATH") from None
    except Exception as exc:       # the module itself fails (a SyntaxError, a NameError, its own raise): one line
        raise ValueError(f"cell: importing {module_name!r} for {spec!r} failed: {type(exc).__name__}: {exc}") from None
    if not hasattr(module, class_name):
        raise ValueError(f"cell: module {module_name!r} has no {class_name!r}")
    kind = getattr(module, class_name)
    if not (isinstance(kind, type) and issubclass(kind, Cell)):
        what = f"the class {kind.__name__}, not a bptt.Cell" if isinstance(kind, type) else f"a {type(kind).__name__}"
        raise ValueError(f"cell: {spec} is {what}, expected a Cell class")
    try:
        return kind(**(arguments or {}))
    except Exception as exc:             # TypeError (its arguments), or the constructor's own raise
        how = f"with the arguments {arguments}" if arguments else "with no arguments"
        raise ValueError(f"cell: {spec} cannot be built {how}: {exc}") from None


def layer(name: str, nonlinearity: str = "tanh") -> CellLayer:
    """The layer of a built-in cell by name ("rnn", "lstm", "gru")."""
    return resolve(name, nonlinearity)[1]


__all__ = ["CELLS", "Cell", "CellLayer", "CompiledLayer", "RNN", "LSTM", "GRU", "build", "layer", "layer_of",
           "resolve", "head"]
