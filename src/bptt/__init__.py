"""bptt: recurrent networks trained by backpropagation through time, every derivative by hand."""
from .backends.settings import shorten_blas_idle_spin

shorten_blas_idle_spin()             # before NumPy loads OpenBLAS (backends/settings.py)

from .cells import Cell  # noqa: E402
from .gradcheck import GradcheckReport, gradcheck  # noqa: E402
from .model import Gradients, Model  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Model", "Cell", "Gradients", "gradcheck", "GradcheckReport", "__version__"]
