"""One step of a layer, linearised: the transposed step Jacobian applied to many vectors.

The layers' own backward passes carry one gradient (the sum over every loss). The
diagnostics need many at once: one per loss L_t for the credit matrix (D1), one per
state component for the Jacobian products (D2). A ``Linear*`` object holds the forward
values of one layer (recomputed from its tape's inputs and states, whichever loop made
it) and applies step k's vector-Jacobian product to a stack of C vectors, in PyTorch's
gate order:

    vjp(k, ds) with ds = (dh,) or (dh, dc⁺), each (C, B, H)   [dc⁺: ∂/∂c_k from the future]
      -> delta   (C, B, G·H)  the rows that (R6), (L10), (G10), (K6) multiply by h_{k-1}ᵀ for ∂L/∂W_h
         ds_prev (dh⁺_{k-1},) or (dh⁺_{k-1}, dc⁺_{k-1})                   (R3), (L5)/(L9), (G6), (K5)
         total   (dh_k,) or (dh_k, dc⁺_k): the whole gradient at the carried state s_k,
                 every cell alike (c_k reaches L through later steps only)  (R3), (L9), (M3)
         dx      (C, B, D) or None: what reaches the layer below            (R8), (L11), (G11), (K6)

Masks follow (M2)/(M3): a padded step passes the gradient through unchanged. The same
equations as cells/, written plainly: here clarity beats speed. Every product stays in
the dtype of the tape (float64 in the flow report; the model's own in nonfinite.py, where
float32 must overflow where the model's backward does). The
built-in cells have their own classes; any other cell gets ``LinearCell``, which applies
the cell's own NumPy step_backward (K4) to the C vectors at once (its ``total`` is the
gradient reaching the carried arrays, ds_k of block K).
"""
from __future__ import annotations

import numpy as np

from ..cells import GRU, LSTM, RNN
from ..cells.loop import check_step
from ..dropout import layer_noise
from ..ops import ACTIVATIONS
from ..ops.activations import sigmoid


def _pre_activations(params, tape, h_in):
    """(T, B, G·H): x_t W_xᵀ + b_h and h_{t-1} W_hᵀ, the two parts of (L1), (G1)-(G4), (K1)-(K2)."""
    T, B, D = tape.x.shape
    u = (tape.x.reshape(T * B, D) @ params["W_x"].T + params["b_h"]).reshape(T, B, -1)
    v = (h_in.reshape(T * B, -1) @ params["W_h"].T).reshape(T, B, -1)
    return u, v


def _previous(first, seq):
    """(T, B, H): [first, seq[0], …, seq[T-2]], the state each step read."""
    return np.concatenate([first[None], seq[:-1]])


def _mm(a, W):
    """(C, B, n) @ (n, m) as one GEMM (a 3-D matmul would loop over C)."""
    C, B, n = a.shape
    return (a.reshape(C * B, n) @ W).reshape(C, B, W.shape[1])


class _Linear:
    _per_step = ()      # names of the (T, B, …) arrays, sliced by select()

    def select(self, b):
        """The same linearisation for sequence b alone (batch of 1)."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        for name in self._per_step:
            value = getattr(self, name)
            if isinstance(value, _CacheRows):
                setattr(other, name, value.select(b))
            elif isinstance(value, tuple):
                setattr(other, name, tuple(v[:, b:b + 1] for v in value))
            elif value is not None:
                setattr(other, name, value[:, b:b + 1])
        return other

    def _mask(self, k):
        return None if self.m is None else self.m[k]           # (B, 1)


class LinearRNN(_Linear):
    state = ("h",)
    _per_step = ("fprime", "h_in", "m")

    def __init__(self, params, tape, cell):
        self.W_x, self.W_h = params["W_x"], params["W_h"]
        h = tape.states[0]
        self.fprime = ACTIVATIONS[cell.nonlinearity].derivative(h)          # (T, B, H) (A2)
        self.h_in = _previous(tape.state0[0], h)
        self.m = None if tape.mask is None else tape.mask[:, :, None].astype(h.dtype)

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

    def __init__(self, params, tape, cell):
        self.W_x, self.W_h = params["W_x"], params["W_h"]
        (h, c), (h0, c0) = tape.states, tape.state0
        self.h_in = _previous(h0, h)
        u, v = _pre_activations(params, tape, self.h_in)
        T, B, H = h.shape
        z = (u + v).reshape(T, B, 4, H)                               # (L1)
        i, f, g, o = sigmoid(z[:, :, 0]), sigmoid(z[:, :, 1]), np.tanh(z[:, :, 2]), sigmoid(z[:, :, 3])   # (L2)
        tanh_c = np.tanh(c)
        c_in = _previous(c0, c)
        # The factors of (L6)-(L8) that do not depend on the gradient, for all steps at once:
        # δz_{i,f,g} = dc ⊙ factors[:, :, :3], δz_o = dh ⊙ factors[:, :, 3].
        self.factors = np.stack([g * i * (1 - i), c_in * f * (1 - f), i * (1 - g ** 2),
                                 tanh_c * o * (1 - o)], axis=2)       # (T, B, 4, H)
        self.k_c = o * (1 - tanh_c ** 2)                              # (T, B, H) (L6)
        self.f = np.ascontiguousarray(f)
        self.m = None if tape.mask is None else tape.mask[:, :, None].astype(h.dtype)

    def vjp(self, k, ds, need_dx=True):
        dh, dc_next = ds
        C, B, H = dh.shape
        m = self._mask(k)
        dc = dh * self.k_c[k]
        dc += dc_next                                           # (L6)
        if m is not None:
            dc *= m                                             # (M2)
        delta = np.empty((C, B, 4, H), dtype=dh.dtype)           # the model's dtype (nonfinite.py)
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
        # total: dc⁺_k, the gradient at the carried c_k, as LinearCell's and Zoned's (not dc of
        # (L6), which adds h_k's own path and is 0 on a padded row)
        return delta, (dh_prev, dc_prev), (dh, dc_next), dx


class LinearGRU(_Linear):
    state = ("h",)
    _per_step = ("factors", "r", "z", "h_in", "m")

    def __init__(self, params, tape, cell):
        self.W_x, self.W_h = params["W_x"], params["W_h"]
        h = tape.states[0]
        H = h.shape[2]
        self.h_in = _previous(tape.state0[0], h)
        u, v = _pre_activations(params, tape, self.h_in)
        r = sigmoid(u[:, :, :H] + v[:, :, :H])                          # (G1)
        z = sigmoid(u[:, :, H:2 * H] + v[:, :, H:2 * H])                # (G2)
        q = v[:, :, 2 * H:] + params["b_hn"]                             # (G3)
        n = np.tanh(u[:, :, 2 * H:] + r * q)                             # (G4)
        # The factors of (G7)-(G9) that do not depend on the gradient, for all steps at once.
        self.factors = np.stack([(1 - z) * (1 - n ** 2),                   # (G7) δa_n / dh
                                 (self.h_in - n) * z * (1 - z),            # (G8) δa_z / dh
                                 q * r * (1 - r)], axis=2)                 # (G9) δa_r / δa_n
        self.r, self.z = np.ascontiguousarray(r), np.ascontiguousarray(z)
        self.m = None if tape.mask is None else tape.mask[:, :, None].astype(h.dtype)

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


class LinearCell(_Linear):
    """Any cell of the protocol, through its own step and step_backward (K3), (K4)."""
    _per_step = ("h_in", "m", "states_in", "_cache_rows")

    def __init__(self, params, tape, cell):
        self.cell, self.params = cell, params
        self.W_x, self.W_h = params["W_x"], params["W_h"]
        self.state = tuple(cell.state)
        self.states_in = tuple(_previous(s0, s) for s0, s in zip(tape.state0, tape.states))
        self.h_in = self.states_in[0]
        u, v = _pre_activations(params, tape, self.h_in)
        T = u.shape[0]
        # The reference step again from the states the tape holds: its caches, per step.
        steps = [cell.step(params, u[k], v[k], tuple(s[k] for s in self.states_in)) for k in range(T)]
        if steps:                                   # rows of the caches are taken below
            check_step(cell, *steps[0], len(self.state), self.h_in.shape[1:], self.h_in.dtype)
        caches = [cache for _, cache in steps]
        self._cache_rows = _CacheRows(caches)
        self.m = None if tape.mask is None else tape.mask[:, :, None].astype(self.h_in.dtype)

    def vjp(self, k, ds, need_dx=True):
        C, B, H = ds[0].shape
        m = self._mask(k)
        into = ds if m is None else tuple(d * m for d in ds)                                      # (M2)
        flat = tuple(d.reshape(C * B, H) for d in into)
        cache = tuple(np.tile(a, (C,) + (1,) * (a.ndim - 1)) for a in self._cache_rows[k])   # batch first (check_step)
        du, dv, back, _ = self.cell.step_backward(self.params, flat, cache)                     # (K4)
        du, dv = du.reshape(C, B, -1), dv.reshape(C, B, -1)
        prev = [b.reshape(C, B, H) for b in back]
        prev[0] = prev[0] + _mm(dv, self.W_h)                                                   # (K5)
        if m is not None:
            prev = [p + (1 - m) * d for p, d in zip(prev, ds)]                                  # (M3)
        dx = _mm(du, self.W_x) if need_dx else None                                             # (K6)
        return dv, tuple(prev), tuple(ds), dx


class _CacheRows:
    """The per-step caches, sliced to one sequence by ``select`` like the other arrays."""

    def __init__(self, caches, b=None):
        self.caches, self.b = caches, b

    def __getitem__(self, k):
        if self.b is None:
            return self.caches[k]
        return tuple(a[self.b:self.b + 1] for a in self.caches[k])

    def select(self, b):
        return _CacheRows(self.caches, b)


class Zoned:
    """A layer with zoneout at its expectation (evaluation), s_t = d ⊙ s_{t−1} + (1 − d) ⊙ s̃_t
    (N3): the cell's own step sees (1 − d) ⊙ ds and d ⊙ ds reaches s_{t−1} besides (N4);
    a padded step still passes ds whole, (1 − d) ⊙ ds through the cell's (M3) and the rest here."""

    def __init__(self, inner, d):
        self.inner, self.d = inner, d                          # d (S, H)
        self.state = inner.state

    @property
    def h_in(self):
        return self.inner.h_in

    def select(self, b):
        return Zoned(self.inner.select(b), self.d)

    def vjp(self, k, ds, need_dx=True):
        into = tuple((1 - self.d[i]) * s for i, s in enumerate(ds))                        # (N4)
        delta, prev, _, dx = self.inner.vjp(k, into, need_dx)
        prev = tuple(p + self.d[i] * s for i, (p, s) in enumerate(zip(prev, ds)))            # (N4)
        return delta, prev, ds, dx


LINEAR = {RNN: LinearRNN, LSTM: LinearLSTM, GRU: LinearGRU}


def linearise(model, params, tape):
    """The Linear* object of one layer of ``model``: the built-in cells' own equations for
    RNN, LSTM and GRU themselves, the cell's step_backward for any other (layer norm's
    cells, users' cells) and, with zoneout, for every cell (its step's state before the
    mix is not on the tape), wrapped in ``Zoned``."""
    cell = model.layer.cell
    kind = None if model.zoneout else LINEAR.get(type(cell))
    linear = (kind or LinearCell)(params, tape, cell)
    if not model.zoneout:
        return linear
    return Zoned(linear, layer_noise(model, None, 0).zone_at(0, tape.states[0].dtype)[0])   # d = p everywhere
