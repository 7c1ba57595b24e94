"""Floor 4: schedules of backpropagation through time, on top of the layer contract.

    full(model, x, targets, ...)               the reference: one backward over the whole sequence
    truncated(model, x, targets, k1, k2, ...)  TBPTT(k1, k2): one (loss, grads, state) per update
    checkpointed(model, x, targets, budget=…)  full BPTT's gradient in O(√T) (or budgeted) memory
    rtrl(model, x, targets, ...)               forward-mode exact gradient (RTRL), any cell
    truncation_bias(model, x, targets, ks)     how far truncated gradients are from the full one

docs/through_time.md defines each schedule exactly.
"""
from .bias import TruncationBias, truncation_bias
from .checkpointed import checkpoint_plan, checkpointed
from .rtrl import ExactInfluence, rtrl
from .schedules import full, truncated

__all__ = ["full", "truncated", "checkpointed", "checkpoint_plan", "rtrl", "ExactInfluence", "truncation_bias",
           "TruncationBias"]
