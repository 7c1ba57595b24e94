"""Scalar functions for compiled cell kernels (Numba): tanh and sigmoid in the array's dtype.

Call them from a cell's ``forward_kernel`` / ``backward_kernel`` (cells/protocol.py) on
float32 or float64 scalars. NumPy's float32 tanh is not vectorised on many CPUs (~3 ns an
element); here float32 takes x·P(x²)/Q(x²) on [−9, 9], within 4e-7 absolute of tanh (a few
float32 ulp), which LLVM vectorises, clipped to [−1, 1] (past |x| ≈ 8.3 the rational
exceeds 1 by an ulp or two, and 1 − tanh² must not turn negative); float64, the
verification dtype, takes libm's tanh, so that the compiled loops equal the NumPy
reference to 1e-12. sigmoid is ½·tanh(z/2) + ½ (A3).
"""
from __future__ import annotations

import math

import numpy as np
from numba import types
from numba.extending import overload


def tanh(x):
    return math.tanh(x)


def sigmoid(z):
    return 0.5 * math.tanh(0.5 * z) + 0.5                                  # (A3)


@overload(tanh, jit_options={"fastmath": True})
def _tanh_for(x):
    if x == types.float32:
        def rational(x):
            x = min(max(x, np.float32(-9.0)), np.float32(9.0))
            x2 = x * x
            p = np.float32(-2.76076847742355e-16)
            p = p * x2 + np.float32(2.00018790482477e-13)
            p = p * x2 + np.float32(-8.60467152213735e-11)
            p = p * x2 + np.float32(5.12229709037114e-08)
            p = p * x2 + np.float32(1.48572235717979e-05)
            p = p * x2 + np.float32(6.37261928875436e-04)
            p = p * x2 + np.float32(4.89352455891786e-03)
            q = np.float32(1.19825839466702e-06)
            q = q * x2 + np.float32(1.18534705686654e-04)
            q = q * x2 + np.float32(2.26843463243900e-03)
            q = q * x2 + np.float32(4.89352518554385e-03)
            return min(max(x * p / q, np.float32(-1.0)), np.float32(1.0))         # |tanh| ≤ 1: σ in [0, 1]
        return rational
    return lambda x: math.tanh(x)                                          # float64: libm


@overload(sigmoid, jit_options={"fastmath": True})
def _sigmoid_for(z):
    if z == types.float32:                                                  # stay in float32
        return lambda z: np.float32(0.5) * tanh(np.float32(0.5) * z) + np.float32(0.5)   # (A3)
    return lambda z: 0.5 * tanh(0.5 * z) + 0.5
