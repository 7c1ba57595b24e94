"""Floor 2: recurrent layers over whole sequences, and the output head.

Every layer module has the same contract (DESIGN.md, "The layer contract"):

    forward(params, x[T,B,D], state0, mask=None) -> (h[T,B,H], stateT, tape)
    backward(params, dh[T,B,H] | None, dstateT | None, tape, need_dx=True)
        -> (dx[T,B,D] or None when not need_dx, dstate0, grads)

with ``GATES`` (blocks of H rows in W_x, W_h), ``STATE`` (names of the state
arrays) and ``param_shapes(input_size, hidden_size)``.
"""
from . import gru, head, lstm, rnn

CELLS = {"rnn": rnn, "lstm": lstm, "gru": gru}

__all__ = ["CELLS", "head", "rnn", "lstm", "gru"]
