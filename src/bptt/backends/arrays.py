"""The array module of the inputs (NumPy or CuPy), and a column sum on either.

The same layer code runs on a GPU (docs/gpu.md). The Python loop (cells/loop.py)
asks ``array_module(x)`` for ``xp``; CuPy is only imported when a CuPy array is passed in.
"""
from __future__ import annotations

import numpy as np


def array_module(*arrays):
    """numpy, or cupy when any argument is a CuPy array."""
    for a in arrays:
        if type(a).__module__.split(".")[0] == "cupy":
            import cupy
            return cupy
    return np


def column_sums(a):
    """Σ over the rows of a 2-D array (a bias gradient) as a product with ones: BLAS's gemv
    runs on all threads, a.sum(axis=0) on one."""
    xp = array_module(a)
    return xp.ones(a.shape[0], dtype=a.dtype) @ a
