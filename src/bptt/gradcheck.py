"""Finite-difference gradient checking, as public API (floor 4).

``gradcheck`` copies the model to float64, computes the hand-derived gradient of the
loss with respect to every parameter, the inputs x and the initial state, and compares
each entry with a fourth-order central difference (see ``_central_differences``).

The error of an entry is |analytic − numeric| / max(|analytic|, |numeric|, s), where
the floor s = ``floor`` × the tensor's largest |gradient| keeps entries that are
nearly zero (whose finite difference is pure rounding noise) from reporting noise as
error; entries above the floor are measured by their own size.

An entry whose error at ε exceeds ``RETRY_ABOVE`` is measured again at 10ε, and while
it still does at 100ε, ε/10, ε/100, ε/1000 and ε/10⁴; it keeps its smallest error. A wrong
derivative disagrees at every step. A loss curved on the scale of ε (layer norm of a
nearly constant vector, as the recurrent part is at the zero initial state) agrees once
the step is small enough; an entry far smaller than the loss's rounding over ε (a deep
layer's tiny gradient under a projection) agrees once the step is larger.
"""
from __future__ import annotations

import numpy as np

from .dropout import Masks
from .model import Model, check_model


class GradcheckReport(dict):
    """name -> worst relative error of that tensor; ``str()`` prints a table."""

    def worst(self) -> float:
        return max(self.values())

    def __str__(self):
        width = max(len(k) for k in self)
        lines = [f"{'tensor':<{width}}  worst relative error"]
        lines += [f"{k:<{width}}  {v:.2e}" for k, v in self.items()]
        return "\n".join(lines)


def gradcheck(model: Model, x, targets, state0=None, mask=None, eps: float = 1e-3,
              floor: float = 1e-3, **options) -> GradcheckReport:
    """Worst relative error per tensor between backward and central finite differences.

    Keys: every name of ``model.params``, then ``"x"`` and one per name of the cell's
    state with a 0: ``"h0"``, and ``"c0"`` for an LSTM (a cell of one's own with
    ``state = ("h", "k")`` gives ``"h0"`` and ``"k0"``). Everything runs in float64 on a
    copy; ``model`` is not changed.
    ``options`` (resets, loss_mask, loss_count, masks) go to ``Model.gradients`` and
    ``Model.loss_value``, ``masks`` cast to float64 with the model: the check holds the
    dropout and zoneout masks fixed.

    Shapes, as ``Model.gradients`` takes them: x (T, B, D); targets (T, B, O), or class
    indices (T, B) for cross_entropy, and (B, O) or (B,) with outputs="last"; state0
    (L, B, H), or the tuple (h, c) for an LSTM; mask (T, B) bool.
    """
    for name, value in (("eps", eps), ("floor", floor)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
                or not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    check_model(model)
    unknown = [k for k in options if k not in OPTIONS]
    if unknown:
        raise ValueError(f"{unknown[0]}: expected an option gradcheck passes on to Model.gradients and "
                         f"Model.loss_value ({', '.join(OPTIONS)}), got {unknown[0]}")
    model._check_params()                  # before the copy reads them
    m = model.astype("float64")
    if targets is None:
        raise ValueError("targets: expected the targets of x (gradcheck differentiates the loss), got None")
    # The model's own checks of x, mask, targets and state0 (the float64 copy's: a float32
    # array is taken as float64), before anything is cast: a complex, ragged or text input
    # is named as Model.gradients names it, never cast to something else.
    x = _float64(x)
    if not model.tuple_state and isinstance(state0, (tuple, list)) and len(state0) == 1:
        state0 = state0[0]                             # one array in a tuple, as Model takes it
    state0 = [_float64(s) for s in state0] if model.tuple_state and isinstance(state0, (tuple, list)) \
        else _float64(state0)
    if model.loss != "cross_entropy":                  # class indices are checked as they came
        targets = _float64(targets)
    T, B, _ = m._check_inputs(x, mask, options.get("resets"), carried=state0 is not None)[0].shape
    m._check_targets(targets, T, B)
    if state0 is None:
        state0 = m.init_state(B)
    m._split_state(state0, B)
    # Copies the differences perturb in place (the caller's arrays stay as they are).
    x = np.array(x, dtype=np.float64)
    if model.loss != "cross_entropy":
        targets = np.array(targets, dtype=np.float64)
    state0 = tuple(np.array(s, dtype=np.float64) for s in state0) if model.tuple_state \
        else np.array(state0, dtype=np.float64)
    if isinstance(options.get("masks"), Masks):
        options["masks"] = options["masks"].astype(np.float64)
    g = m.gradients(x, targets, state0, mask, **options)

    def loss():
        return m.loss_value(x, targets, state0, mask, **options)

    tensors = [(name, m.params[name], g.params[name]) for name in m.params]
    tensors.append(("x", x, g.x))
    if model.tuple_state:
        tensors += [(f"{name}0", s, gs) for name, s, gs in zip(model.layer.STATE, state0, g.state0)]
    else:
        tensors.append(("h0", state0, g.state0))
    report = GradcheckReport()
    for name, value, analytic in tensors:
        numeric = _central_differences(loss, value, eps, range(value.size))
        scale = max(np.abs(analytic).max(), np.abs(numeric).max())
        errors = _relative_errors(analytic.reshape(-1), numeric, floor * scale)
        for step in (eps * 10, eps * 100, eps / 10, eps / 100, eps / 1000, eps / 10000):
            again = np.flatnonzero(errors > RETRY_ABOVE)
            if again.size:
                finer = _relative_errors(analytic.reshape(-1)[again],
                                         _central_differences(loss, value, step, again), floor * scale)
                errors[again] = np.minimum(errors[again], finer)
        report[name] = float(errors.max())
    return report


OPTIONS = ("resets", "loss_mask", "loss_count", "masks")       # what the loss alone depends on, too
RETRY_ABOVE = 1e-7          # a tenth of the error the tests call a failure


def _float64(value):
    """A float array (float32 or float64) as float64; anything else as it came, for the
    model's checks to take or name."""
    if isinstance(value, np.ndarray) and not isinstance(value, np.ma.MaskedArray) and value.dtype.kind == "f":
        return np.asarray(value, dtype=np.float64)
    return value


def _central_differences(loss, value, eps, entries):
    """Fourth-order central differences of the flat ``entries`` of ``value``, perturbing
    it in place; one number per entry.

    (−L(θ+2ε) + 8L(θ+ε) − 8L(θ−ε) + L(θ−2ε)) / 12ε has error O(ε⁴) instead of the
    two-point formula's O(ε²), so ε can be large enough that float64 rounding in the
    loss (~1e-16·|L|/ε) stays far below the 1e-6 the tests ask for.
    """
    flat = value.reshape(-1)
    out = np.empty(len(entries))
    for i, k in enumerate(entries):
        keep = flat[k]
        at = {}
        for step in (-2, -1, 1, 2):
            flat[k] = keep + step * eps
            at[step] = loss()
        flat[k] = keep
        out[i] = (8 * (at[1] - at[-1]) - (at[2] - at[-2])) / (12 * eps)
    return out


def _relative_errors(analytic, numeric, floor):
    """|analytic − numeric| / max(|analytic|, |numeric|, floor), entry by entry."""
    denom = np.maximum(np.maximum(np.abs(analytic), np.abs(numeric)), max(floor, 1e-300))
    return np.abs(analytic - numeric) / denom
