"""Floor 2: recurrent layers over whole sequences, and the output head.

Every layer has the same contract (DESIGN.md, "The layer contract"):

    forward(params, x[T,B,D], state0, mask=None) -> (h[T,B,H], stateT, tape)
    backward(params, dh[T,B,H] | None, dstateT | None, tape, need_dx=True)
        -> (dx[T,B,D] or None when not need_dx, dstate0, grads)

with ``GATES`` (blocks of H rows in W_x, W_h), ``STATE`` (names of the state
arrays) and ``param_shapes(input_size, hidden_size)``. The built-in layers are the
modules rnn, lstm, gru; any cell of the protocol (protocol.py) becomes one through
``loop.CellLayer``.
"""
from __future__ import annotations

import importlib
import os
import sys

from . import gru, head, lstm, rnn
from .loop import CellLayer
from .protocol import Cell, check_cell

CELLS = {"rnn": rnn, "lstm": lstm, "gru": gru}


def resolve(cell):
    """(name, layer) for "rnn", "lstm", "gru", "package.module:ClassName" (a Cell class,
    built with no arguments) or a Cell instance."""
    if isinstance(cell, str):
        if cell in CELLS:
            return cell, CELLS[cell]
        if ":" not in cell:
            raise ValueError(f"cell: expected one of 'rnn', 'lstm', 'gru' or 'package.module:ClassName', "
                             f"got {cell!r}")
        module_name, _, class_name = cell.partition(":")
        if os.getcwd() not in sys.path:           # as `python -m` would: a module beside the user
            sys.path.append(os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"cell: cannot import {module_name!r} for {cell!r}: {exc}") from None
        if not hasattr(module, class_name):
            raise ValueError(f"cell: module {module_name!r} has no {class_name!r}")
        try:
            instance = getattr(module, class_name)()
        except TypeError as exc:
            raise ValueError(f"cell: {cell} must be built with no arguments: {exc}") from None
        return cell, CellLayer(instance)
    return check_cell(cell).name, CellLayer(cell)


__all__ = ["CELLS", "Cell", "CellLayer", "resolve", "head", "rnn", "lstm", "gru"]
