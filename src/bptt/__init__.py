"""bptt: recurrent networks trained by backpropagation through time, every derivative by hand."""
from .cells import Cell
from .gradcheck import GradcheckReport, gradcheck
from .model import Gradients, Model

__version__ = "0.1.0"
__all__ = ["Model", "Cell", "Gradients", "gradcheck", "GradcheckReport", "__version__"]
