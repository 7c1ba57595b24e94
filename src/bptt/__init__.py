"""bptt: recurrent networks trained by backpropagation through time, every derivative by hand."""
from .backends.settings import shorten_blas_idle_spin

shorten_blas_idle_spin()             # before NumPy loads OpenBLAS (backends/settings.py)

from .cells import Cell  # noqa: E402
from .gradcheck import GradcheckReport, gradcheck  # noqa: E402
from .model import Gradients, Model  # noqa: E402

from .generate import generate  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Model", "Cell", "Gradients", "gradcheck", "GradcheckReport", "generate", "load", "Trainer", "Config",
           "__version__"]

_TRAINING = {"load": ("bptt.train.load", "load"), "Trainer": ("bptt.train.trainer", "Trainer"),
             "Config": ("bptt.train.config", "Config")}


def __getattr__(name):
    """bptt.load, bptt.Trainer and bptt.Config, imported at first use: the training floor
    (tqdm, the run folders) loads only for those who train or load runs."""
    if name in _TRAINING:
        import importlib
        module, attr = _TRAINING[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'bptt' has no attribute {name!r}")
