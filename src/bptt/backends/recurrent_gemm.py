"""The recurrent GEMM of the forward loop, W_h h_{t-1}, in whichever orientation is faster.

Every step of every layer multiplies the state by W_h: rec = h_{t-1} W_hᵀ, shape (B, G·H).
OpenBLAS is not equally fast both ways round. Computed as recᵀ = W_h h_{t-1}ᵀ, with
the state and the result transposed by two small copies, it measured 1.3–1.7× faster for
B = 32, G·H = 2048 here, and slower for small H once the copies are paid. So the choice is
measured, once per (B, H, G·H, dtype) and process, as cuDNN picks its algorithms: a few
timed repeats of each, the faster kept. BPTT_GEMM=plain or BPTT_GEMM=transposed fixes it.
Both give the same numbers up to the order of the sums inside the GEMM.
"""
from __future__ import annotations

import os
import time

import numpy as np

_CHOICE: dict = {}
MODE = os.environ.get("BPTT_GEMM", "auto")


class RecurrentGEMM:
    """rec = h_prev @ W_hT for a fixed W_hT (H, G·H) and batch B, into one buffer."""

    def __init__(self, W_hT, B, transposed=None):
        self.W_hT = W_hT
        H, GH = W_hT.shape
        self.rec = np.empty((B, GH), dtype=W_hT.dtype)
        self.transposed = _choose(B, H, GH, W_hT.dtype) if transposed is None else transposed
        if self.transposed:
            self.W_h = np.ascontiguousarray(W_hT.T)                 # (G·H, H)
            self.hT = np.empty((H, B), dtype=W_hT.dtype)
            self.recT = np.empty((GH, B), dtype=W_hT.dtype)

    def __call__(self, h_prev):
        if not self.transposed:
            return np.matmul(h_prev, self.W_hT, out=self.rec)
        np.copyto(self.hT, h_prev.T)
        np.matmul(self.W_h, self.hT, out=self.recT)
        np.copyto(self.rec, self.recT.T)
        return self.rec


def _choose(B, H, GH, dtype) -> bool:
    return choose((B, H, GH, np.dtype(dtype).str), lambda: _measure(B, H, GH, dtype))


def choose(key, measure) -> bool:
    """Whether to take the transposed orientation for ``key``: as BPTT_GEMM says, or else
    ``measure()``, once per key and process. The compiled loops (cpu_loops.py) and the
    weight-gradient GEMM (weight_gemm.py) choose here too."""
    if MODE in ("plain", "transposed"):
        return MODE == "transposed"
    if key not in _CHOICE:
        _CHOICE[key] = bool(measure())
    return _CHOICE[key]


def second_is_faster(first, second, n, repeats=3) -> bool:
    """Whether second(n) is clearly faster than first(n) (by 5%; best of ``repeats`` timed
    blocks, each after a warm-up call), so that a switch is made only for a clear win."""
    best = [np.inf, np.inf]
    for _ in range(repeats):
        for which, run in enumerate((first, second)):
            run(1)
            start = time.perf_counter()
            run(n)
            best[which] = min(best[which], time.perf_counter() - start)
    return best[1] < 0.95 * best[0]


def _measure(B, H, GH, dtype) -> bool:
    """True when the transposed orientation is faster at this shape."""
    rng = np.random.default_rng(0)
    W_hT = rng.standard_normal((H, GH)).astype(dtype)
    h = rng.standard_normal((B, H)).astype(dtype)
    plain, transposed = RecurrentGEMM(W_hT, B, False), RecurrentGEMM(W_hT, B, True)
    n = max(2, min(50, int(2e7 / (2 * B * H * GH))))               # about 20 MFLOP a round

    def runs(gemm):
        def run(count):
            for _ in range(count):
                gemm(h)
        return run
    return second_is_faster(runs(plain), runs(transposed), n)


class DeviceGEMM:
    """rec = h_prev @ W_hT with the array module's matmul (cuBLAS on a GPU), no tuning."""

    def __init__(self, W_hT, B, xp):
        self.xp, self.W_hT = xp, W_hT
        self.rec = xp.empty((B, W_hT.shape[1]), dtype=W_hT.dtype)

    def __call__(self, h_prev):
        return self.xp.matmul(h_prev, self.W_hT, out=self.rec)


def for_module(xp, W_hT, B):
    return RecurrentGEMM(W_hT, B) if xp is np else DeviceGEMM(W_hT, B, xp)
