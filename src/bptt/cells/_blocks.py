"""Gate blocks in PyTorch's order at the interface, in a layer's own order inside.

A gated layer stacks G blocks of H rows in W_x, W_h and b_h. Inside, a layer may reorder
them so that the blocks it treats alike are adjacent, and may halve the sigmoid blocks so
one tanh gives σ(z) = ½·tanh(z/2) + ½ (A3). Both are exact and invisible outside.
"""
from __future__ import annotations

import numpy as np

from ..backends.arrays import array_module, matmul


class GateBlocks:
    def __init__(self, perm, sigmoid):
        """perm[k]: the PyTorch block that is internal block k; sigmoid[k]: whether it is σ."""
        self.perm = np.asarray(perm)
        self.unperm = np.argsort(self.perm)
        self.half = np.where(sigmoid, 0.5, 1.0)[:, None, None]
        self.G = len(perm)
        self.identity = bool((self.perm == np.arange(self.G)).all())

    def to_internal(self, w, H, halve=False):
        """(G·H, ·) or (G·H,) in PyTorch's order -> the same shape in internal order."""
        if self.identity and not halve:
            return w
        blocks = w.reshape(self.G, H, -1)[self.perm]
        if halve:
            blocks = blocks * self.half.astype(w.dtype)
        return blocks.reshape(w.shape)

    def to_torch_order(self, w, H):
        """Internal order -> PyTorch's order (a gradient on its way out), contiguous."""
        xp = array_module(w)
        if self.identity:
            return xp.ascontiguousarray(w)
        return xp.ascontiguousarray(w.reshape(self.G, H, -1)[self.unperm].reshape(w.shape))

    def project_inputs(self, params, x, halve, bias=True):
        """(L1)/(G1)-(G4) input parts of every step in one GEMM, and W_hᵀ for the loop.

        Returns gates (T, B, G·H) = x W_xᵀ + b_h in internal order, and W_hᵀ (H, G·H).
        With bias=False the b_h term is left out (the fused kernels add it as they go,
        which saves a pass over the gates).
        """
        T, B, D = x.shape
        H = params["W_h"].shape[1]
        W_x = self.to_internal(params["W_x"], H, halve)
        W_hT = self.to_internal(params["W_h"], H, halve).T
        gates = matmul(x.reshape(T * B, D), W_x.T)                 # (T·B, G·H)
        if bias:
            gates += self.to_internal(params["b_h"], H, halve).reshape(-1)
        return gates.reshape(T, B, self.G * H), W_hT
