"""One step of a layer, linearised: the transposed step Jacobian applied to many vectors.

The layers' own backward passes carry one gradient (the sum over every loss). The
diagnostics need many at once: one per loss L_t for the credit matrix (D1), one per
state component for the Jacobian products (D2). A ``Linear*`` object holds the forward
values of one layer's tape and applies step k's vector-Jacobian product to a stack of C
vectors, in PyTorch's gate order:

    vjp(k, ds) with ds = (dh,) or (dh, dc⁺), each (C, B, H)   [dc⁺: ∂/∂c_k from the future]
      -> delta   (C, B, G·H)  the rows that (R6), (L10), (G10) multiply by h_{k-1}ᵀ for ∂L/∂W_h
         ds_prev (dh⁺_{k-1},) or (dh⁺_{k-1}, dc⁺_{k-1})                   (R3), (L5)/(L9), (G6)
         total   (dh_k,) or (dh_k, dc_k): the whole gradient at step k     (R3), (L6)
         dx      (C, B, D) or None: what reaches the layer below            (R8), (L11), (G11)

Masks follow (M2)/(M3): a padded step passes the gradient through unchanged. The same
equations as cells/, written plainly: here clarity beats speed, float64 throughout.
"""
from __future__ import annotations

import numpy as np

from ..cells import gru, lstm
from ..ops import ACTIVATIONS


def _previous(first, seq):
    """(T, B, H): [first, seq[0], …, seq[T-2]], the state each step read."""
    return np.concatenate([first[None], seq[:-1]])


def _mm(a, W):
    """(C, B, n) @ (n, m) as one GEMM (a 3-D matmul would loop over C)."""
    C, B, n = a.shape
    return (a.reshape(C * B, n) @ W).reshape(C, B, W.shape[1])


def _torch_order(gates, blocks):
    """(T, B, G·H) activated gates in a layer's internal order -> (T, B, G, H) in PyTorch's."""
    T, B, GH = gates.shape
    return gates.reshape(T, B, blocks.G, GH // blocks.G)[:, :, blocks.unperm]


class _Linear:
    _per_step = ()      # names of the (T, B, …) arrays, sliced by select()

    def select(self, b):
        """The same linearisation for sequence b alone (batch of 1)."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        for name in self._per_step:
            value = getattr(self, name)
            if value is not None:
                setattr(other, name, value[:, b:b + 1])
        return other

    def _mask(self, k):
        return None if self.m is None else self.m[k]           # (B, 1)


class LinearRNN(_Linear):
    state = ("h",)
    _per_step = ("fprime", "h_in", "m")

    def __init__(self, params, tape):
        self.W_x, self.W_h = params["W_x"], params["W_h"]
        self.fprime = ACTIVATIONS[tape.nonlinearity].derivative(tape.h)      # (T, B, H) (A2)
        self.h_in = _previous(tape.h0, tape.h)
        self.m = None if tape.mask is None else tape.mask[:, :, None].astype(tape.h.dtype)

    def vjp(self, k, ds, need_dx=True):
        (dh,) = ds
        m = self._mask(k)
        delta = dh * self.fprime[k]                             # (R4)
        if m is not None:
            delta *= m                                          # (M2)
        dh_prev = _mm(delta, self.W_h)                              # (R3) W_hᵀ δa_k
        if m is not None:
            dh_prev += (1 - m) * dh                             # (M3)
        dx = _mm(delta, self.W_x) if need_dx else None              # (R8)
        return delta, (dh_prev,), (dh,), dx


class LinearLSTM(_Linear):
    state = ("h", "c")
    _per_step = ("factors", "k_c", "f", "h_in", "m")

    def __init__(self, params, tape):
        self.W_x, self.W_h = params["W_x"], params["W_h"]
        blocks = lstm._TORCH_ORDER if tape.fused else lstm._BLOCKS
        G = _torch_order(tape.gates, blocks)
        i, f, g, o = (G[:, :, j] for j in range(4))
        tanh_c = np.tanh(tape.c)
        c_in = _previous(tape.c0, tape.c)
        # The factors of (L6)-(L8) that do not depend on the gradient, for all steps at once:
        # δz_{i,f,g} = dc ⊙ factors[:, :, :3], δz_o = dh ⊙ factors[:, :, 3].
        self.factors = np.stack([g * i * (1 - i), c_in * f * (1 - f), i * (1 - g ** 2),
                                 tanh_c * o * (1 - o)], axis=2)       # (T, B, 4, H)
        self.k_c = o * (1 - tanh_c ** 2)                              # (T, B, H) (L6)
        self.f = np.ascontiguousarray(f)
        self.h_in = _previous(tape.h0, tape.h)
        self.m = None if tape.mask is None else tape.mask[:, :, None].astype(tape.h.dtype)

    def vjp(self, k, ds, need_dx=True):
        dh, dc_next = ds
        C, B, H = dh.shape
        m = self._mask(k)
        dc = dh * self.k_c[k]
        dc += dc_next                                           # (L6)
        if m is not None:
            dc *= m                                             # (M2)
        delta = np.empty((C, B, 4, H))
        np.multiply(dc[:, :, None, :], self.factors[k, :, :3], out=delta[:, :, :3])   # (L8) i, f, g
        np.multiply(dh, self.factors[k, :, 3], out=delta[:, :, 3])                  # (L7) o
        if m is not None:
            delta[:, :, 3] *= m                                 # (M2)
        delta = delta.reshape(C, B, 4 * H)
        dh_prev = _mm(delta, self.W_h)                              # (L5) W_hᵀ δz_k
        dc_prev = dc * self.f[k]                                # (L9)
        if m is not None:
            dh_prev += (1 - m) * dh                             # (M3)
            dc_prev += (1 - m) * dc_next
        dx = _mm(delta, self.W_x) if need_dx else None              # (L11)
        return delta, (dh_prev, dc_prev), (dh, dc), dx


class LinearGRU(_Linear):
    state = ("h",)
    _per_step = ("factors", "r", "z", "h_in", "m")

    def __init__(self, params, tape):
        self.W_x, self.W_h = params["W_x"], params["W_h"]
        blocks = gru._TORCH_ORDER if tape.fused else gru._BLOCKS
        G = _torch_order(tape.gates, blocks)
        r, z, n = (G[:, :, j] for j in range(3))
        self.h_in = _previous(tape.h0, tape.h)
        # The factors of (G7)-(G9) that do not depend on the gradient, for all steps at once.
        self.factors = np.stack([(1 - z) * (1 - n ** 2),                   # (G7) δa_n / dh
                                 (self.h_in - n) * z * (1 - z),            # (G8) δa_z / dh
                                 tape.q * r * (1 - r)], axis=2)            # (G9) δa_r / δa_n
        self.r, self.z = np.ascontiguousarray(r), np.ascontiguousarray(z)
        self.m = None if tape.mask is None else tape.mask[:, :, None].astype(tape.h.dtype)

    def vjp(self, k, ds, need_dx=True):
        (dh,) = ds
        m = self._mask(k)
        dh_m = dh if m is None else dh * m                      # (M2)
        F = self.factors[k]
        da_n = dh_m * F[:, 0]                                   # (G7)
        delta = np.concatenate([da_n * F[:, 2],                 # (G9) δa_r
                                dh_m * F[:, 1],                 # (G8) δa_z
                                da_n * self.r[k]], axis=-1)     # (G9) δq; rows of ∂L/∂W_h (G10)
        carry = self.z[k] if m is None else m * self.z[k] + (1 - m)
        dh_prev = _mm(delta, self.W_h)                              # (G6) W_hᵀ [δa_r, δa_z, δq]
        dh_prev += carry * dh                                   # (G6), (M3)
        dx = None
        if need_dx:
            H = dh.shape[-1]
            dx = _mm(delta[..., :2 * H], self.W_x[:2 * H]) + _mm(da_n, self.W_x[2 * H:])     # (G11)
        return delta, (dh_prev,), (dh,), dx


LINEAR = {"rnn": LinearRNN, "lstm": LinearLSTM, "gru": LinearGRU}
