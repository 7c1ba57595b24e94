"""Floor 1: activations and losses, each a value with its derivative beside it."""
from .activations import ACTIVATIONS, HEADS, Activation
from .losses import LOSSES

__all__ = ["ACTIVATIONS", "HEADS", "Activation", "LOSSES"]
