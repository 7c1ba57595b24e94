"""Dropout and zoneout: the masks of one training pass, drawn from a generator the caller
holds (floor 3, beside model.py).

A Model with any of these rates gets noise only where masks are handed to it
(``model.draw_masks``); evaluation, sampling, validation and ``flow`` run without. The
gradient is exact for the masks drawn (docs/derivation.md, block N):

    dropout            between stacked layers, as PyTorch's: layer l < L − 1's output h_t
                       times m_t / (1 − p), a fresh mask every step                    (N5)
    input_dropout      variational (Gal & Ghahramani 2016; Keras's ``dropout``): every
                       layer's input x_t times m / (1 − p), one mask per sequence      (N5)
    recurrent_dropout  variational, on h_{t-1} where it meets W_h, one mask per
                       sequence (Keras's ``recurrent_dropout``)                     (N1, N2)
    zoneout            (Krueger et al. 2017) each unit of the state keeps its previous
                       value with probability p at every step                       (N3, N4)

m is Bernoulli(1 − p), p taken to the nearest multiple of 2^-16 (``drawn_rate``). Without masks, zoneout uses its expectation, s_t = p s_{t-1} +
(1 − p) s̃_t, and the three dropouts are the identity. Per-sequence masks hold for the
whole window an update backpropagates through: truncated and checkpointed BPTT slice one
draw in time (``Masks.steps``), never draw per chunk.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _checks
from .cells.loop import Noise

RATES = ("dropout", "input_dropout", "recurrent_dropout", "zoneout")


class Masks(NamedTuple):
    """One pass's masks (None where that kind is off). With D directions (stack.py),
    per layer l, or per layer and direction k = l·D + d:

        between    L − 1 of (T, B, D·H)   multipliers of layer l's output, l < L − 1
        inputs     L of (B, D_l)          multipliers of layer l's input
        recurrent  L·D of (B, H)          multipliers of h_{t-1} before W_h
        zone       L·D of (T, B, S, H)    d_t, bool: True where a unit keeps its previous value
                                          (a reverse direction's t runs backward in time)
    """
    between: list
    inputs: list
    recurrent: list
    zone: list

    @property
    def shape(self):
        """(T, B) the masks were drawn for (T is None when no mask is per step)."""
        T = next((a.shape[0] for a in self.between + self.zone if a is not None), None)
        B = next((a.shape[1] for a in self.between + self.zone if a is not None), None)
        if B is None:
            B = next((a.shape[0] for a in self.inputs + self.recurrent if a is not None), None)
        return T, B

    def steps(self, lo, hi) -> "Masks":
        """The masks of steps [lo, hi): per-step masks sliced, per-sequence ones kept."""
        def cut(arrays):
            return [None if a is None else a[lo:hi] for a in arrays]
        return Masks(cut(self.between), self.inputs, self.recurrent, cut(self.zone))

    def astype(self, dtype) -> "Masks":
        """The same masks for a model of ``dtype`` (Model.astype): the multipliers cast,
        zoneout's bool draws kept."""
        def cast(arrays):
            return [None if a is None else a.astype(dtype) for a in arrays]
        return Masks(cast(self.between), cast(self.inputs), cast(self.recurrent), self.zone)

    def rows(self, rows) -> "Masks":
        """The masks of these sequences (a slice of the batch)."""
        def cut(arrays, axis):
            return [None if a is None else np.ascontiguousarray(a[(slice(None),) * axis + (rows,)])
                    for a in arrays]
        return Masks(cut(self.between, 1), cut(self.inputs, 0), cut(self.recurrent, 0), cut(self.zone, 1))


def check_rate(name: str, value) -> float:
    """A probability in [0, 1) (Python's or NumPy's number), else a ValueError naming the option."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0 <= value < 1:
        raise ValueError(f"{name}: expected a probability in [0, 1), got {value!r}")
    return float(value)


STEPS = 2 ** 16


def drawn_rate(p: float) -> float:
    """The rate the masks realise: p to the nearest multiple of 2^-16 (at most 1 − 2^-16).
    Kept entries are scaled by 1 / (1 − drawn_rate(p)), so E[m] = 1 exactly, and
    zoneout's expectation uses the same rate."""
    return min(round(p * STEPS), STEPS - 1) / STEPS


def draw(model, rng, T: int, B: int) -> Masks | None:
    """The masks of one pass over T steps of B sequences, drawn from ``rng`` in a fixed
    order (layer by layer: between, inputs, recurrent, zone); None when every rate is 0."""
    if not any(getattr(model, r) for r in RATES):
        return None
    L, H, S, dt = model.num_layers, model.hidden_size, len(model.layer.STATE), model.dtype

    def below(p, shape):
        """True with probability drawn_rate(p): four 16-bit draws from each 64-bit word of
        the generator, a quarter of the words a float or 32-bit draw takes."""
        n = int(np.prod(shape))
        words = rng.bit_generator.random_raw(-(-n // 4))
        return (words.view(np.uint16)[:n] < np.uint16(round(drawn_rate(p) * STEPS))).reshape(shape)

    def kept(p, shape):
        return None if not p else np.multiply(~below(p, shape), dt.type(1 / (1 - drawn_rate(p))), dtype=dt)

    width = model.directions * model.output_width
    between, inputs, recurrent, zone = [], [], [], []
    for l in range(L):
        if l < L - 1:
            between.append(kept(model.dropout, (T, B, width)))
        inputs.append(kept(model.input_dropout, (B, model.input_size if l == 0 else width)))
        for _ in range(model.directions):
            recurrent.append(kept(model.recurrent_dropout, (B, H)))
            zone.append(below(model.zoneout, (T, B, S, H)) if model.zoneout else None)
    return Masks(between, inputs, recurrent, zone)


def check(masks, T: int, B: int, model) -> Masks | None:
    """``masks`` if they fit T steps of B sequences through ``model``'s layers, else a ValueError."""
    if masks is None:
        return None
    L = model.num_layers
    if not isinstance(masks, Masks) or len(masks.inputs) != L or len(masks.recurrent) != L * model.directions:
        raise ValueError(f"masks: expected the Masks of this model (model.draw_masks), got {type(masks).__name__}")
    mT, mB = masks.shape
    if (mT is not None and mT != T) or (mB is not None and mB != B):
        raise ValueError(f"masks: drawn for T={mT}, B={mB}; the inputs have T={T}, B={B}")
    for kind, arrays, rate, shape, dtype in _expected(masks, model, T, B):
        if len(arrays) != len(shape):
            raise ValueError(f"masks: expected the Masks of this model (model.draw_masks), got {len(arrays)} "
                             f"{kind} masks for its {len(shape)}")
        for i, (a, want) in enumerate(zip(arrays, shape)):
            if (a is None) != (rate == 0):
                raise ValueError(f"masks.{kind}[{i}]: expected {'none' if rate == 0 else 'a mask'} ({kind} rate "
                                 f"{rate} in this model), got {'none' if a is None else 'a mask'}; draw them "
                                 f"with this model's draw_masks")
            _checks.on_gpu(f"masks.{kind}[{i}]", a)
            masked = isinstance(a, np.ma.MaskedArray)                    # its mask would go unseen
            array = isinstance(a, np.ndarray) and not masked
            if a is not None and (not array or a.shape != want or a.dtype != dtype):
                got = f"{a.shape} {a.dtype}" if array else type(a).__name__
                hint = f"; masks.astype('{np.dtype(dtype).name}') casts them" if array and a.shape == want else ""
                raise ValueError(f"masks.{kind}[{i}]: expected shape {want} and dtype {np.dtype(dtype).name} "
                                 f"(this model's draw_masks), got {got}{hint}")
    return masks


def _expected(masks_of, model, T, B):
    """(kind, the arrays of that kind in ``masks_of``, the model's rate, the shapes and dtype
    draw() gives them)."""
    L, D, H, S = model.num_layers, model.directions, model.hidden_size, len(model.layer.STATE)
    width = D * model.output_width
    return [("between", masks_of.between, model.dropout, [(T, B, width)] * (L - 1), model.dtype),
            ("inputs", masks_of.inputs, model.input_dropout,
             [(B, model.input_size if l == 0 else width) for l in range(L)], model.dtype),
            ("recurrent", masks_of.recurrent, model.recurrent_dropout, [(B, H)] * (L * D), model.dtype),
            ("zone", masks_of.zone, model.zoneout, [(T, B, S, H)] * (L * D), np.bool_)]


def input_scale(masks: Masks | None, l: int):
    """What multiplies layer l's input: (T, B, D), (1, B, D) or None."""
    if masks is None:
        return None
    below = masks.between[l - 1] if l > 0 else None
    mine = None if masks.inputs[l] is None else masks.inputs[l][None]
    if below is None or mine is None:
        return below if mine is None else mine
    return below * mine


def layer_noise(model, masks: Masks | None, k: int) -> Noise | None:
    """The recurrent dropout and zoneout of layer and direction k (stack.py): the masks' in
    training; without masks, zoneout's expectation (d_t = p everywhere)."""
    if masks is None:
        if not model.zoneout:
            return None
        return Noise(None, np.full((1, 1, len(model.layer.STATE), model.hidden_size), drawn_rate(model.zoneout),
                                   model.dtype))
    if masks.recurrent[k] is None and masks.zone[k] is None:
        return None
    return Noise(masks.recurrent[k], masks.zone[k])
