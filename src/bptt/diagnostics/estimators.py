"""How far each online method's influence is from RTRL's, step by step.

``estimator_error(model, x, methods)`` runs exact RTRL (through_time/rtrl.py) and each
method of through_time/online.py side by side over one batch, from the same state, and
measures at every step t

    error_t = ‖M̂_t[h] − M_t[h]‖_F / ‖M_t[h]‖_F                                          (O5)

over the batch, where M_t[h] = ∂h_t/∂θ is what the gradient reads (T2) and M̂_t[h] the
method's picture of it (UORO: ũ θ̃ᵀ; KF-RTRL: u ⊗ A). It is NaN where M_t[h] is zero. A
biased method's error settles where its dropped terms weigh (SnAp-1, e-prop); an unbiased
one's is its spread (UORO, KF-RTRL: one draw, not the mean). The cost is RTRL's: for one
small layer.
"""
from __future__ import annotations

import numpy as np

from .. import _checks
from ..model import check_model
from ..through_time.online import ESTIMATORS
from ..through_time.rtrl import ExactInfluence


def estimator_error(model, x, methods=("snap1", "uoro"), mask=None, rng=None) -> dict:
    """{method: (T,) relative error (O5) of its influence against RTRL's}; ``methods``
    from through_time/online.py's ESTIMATORS (one recurrent layer for all but rtrl)."""
    check_model(model)
    names = tuple(methods) if isinstance(methods, (list, tuple)) else None
    if not names or not all(isinstance(m, str) and m in ESTIMATORS for m in names) or len(set(names)) < len(names):
        raise ValueError(f"methods: expected a list of names from {', '.join(ESTIMATORS)}, each once, got {methods!r}")
    methods = names
    if "rflo" in methods or "kf-rtrl" in methods:
        if model.cell != "rnn":
            raise ValueError(f"methods: rflo and kf-rtrl are defined for the Elman layer, got cell={model.cell_name!r}")
    x, mask, _ = model._check_inputs(x, mask)
    m = model if model.dtype == np.float64 else model.astype("float64")
    x = x.astype(np.float64)
    T, B, _ = x.shape
    rng = _checks.generator("rng", rng)
    exact = ExactInfluence(m, B)
    others = {name: ESTIMATORS[name](m, B, rng) for name in methods}
    errors = {name: np.full(T, np.nan) for name in methods}
    H = m.hidden_size
    for t in range(T):
        step_mask = None if mask is None else mask[t]
        exact.step(x[t], step_mask)
        truth = exact.influence()[:, :H]
        scale = np.linalg.norm(truth)
        for name, other in others.items():
            other.step(x[t], step_mask)
            if scale > 0:
                errors[name][t] = np.linalg.norm(other.influence()[:, :H] - truth) / scale
    return errors
