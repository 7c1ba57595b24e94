"""Stream resets: the state of stream b is set to zero before step t where resets[t, b].

Forward, the step reads s_in = (1 − r_t) ⊙ s_{t-1} instead of s_{t-1}            (M4)
Backward, whatever reaches s_in goes on to s_{t-1} times (1 − r_t): nothing crosses
a reset, and weight gradients use s_in, the state the step really read.           (M5)
"""
from __future__ import annotations

from ..backends.arrays import array_module, empty


def steps_with_resets(resets, T):
    """Per step, whether any stream resets there (a list of bools; all False without resets)."""
    return [False] * T if resets is None else resets.any(axis=1).tolist()


def zero_where(state, resets_t):
    """(M4) the state a step reads: zero rows for the streams that reset."""
    xp = array_module(state)
    return xp.where(resets_t[:, None], 0, state).astype(state.dtype, copy=False)


def previous_states(first, seq, resets=None):
    """(T, B, H): the state each step read, [first, seq[0], …, seq[T-2]], after (M4) when
    resets are given; a workspace array for NumPy."""
    prev = empty(array_module(seq), seq.shape, seq.dtype)
    prev[0] = first
    prev[1:] = seq[:-1]
    if resets is not None:
        prev *= ~resets[:, :, None]
    return prev
