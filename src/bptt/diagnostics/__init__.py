"""Floor 5: the gradient through time made visible (flow report, plots, `bptt explain`)."""
from .flow import FlowReport, flow

__all__ = ["FlowReport", "flow"]
