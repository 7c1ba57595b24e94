"""One compiled time loop per direction, generated from a cell's kernels (Numba).

A cell that gives ``kernels = (forward_kernel, backward_kernel)`` (cells/protocol.py)
gets ``CompiledLayer``: the layer contract of cells/loop.py with the whole loop over t
compiled. The loop (``LOOPS`` below) is the same text for every cell, calling the cell's
kernels once per row of the batch, and does what loop.py does in the same order:

    forward, per step:   (K1) where it is not one GEMM before the loop (one-hot x: rows of
                         W_xᵀ copied; small weights: x_t W_xᵀ by the micro-kernel, _inputs),
                         (M4) resets, (K2) the recurrent GEMM, the kernel for (K3), (M1)
    backward, per step:  ds_t = carried + W_hᵀ-part + dh from above (R3, K5), (M2)/(M3) for
                         padded rows, the kernel for (K4), (M5), then the GEMM of (K5)
    after the loop:      (K6) as one product each (backends/bulk.py's t_times; for one-hot
                         x a sum of du's rows per code)

All steps' state is one (T, B, S, H) array, so a row's state is an (S, H) block, read by
the kernel as ``prev`` and written as ``new``. The recurrent GEMM runs over W_h packed
once a pass (backends/packed_gemm.py or backends/mkl.py, as settings.step_gemm() says).

Numba caches compiled code on disk only for functions of a module with a file, so the
template, with the names of the cell's kernels, is written to a module in
settings.cache_dir() named by a hash of everything it compiles from, and imported from
there. Kernels that cannot be imported by name (from __main__ or inside a function) get
the template compiled in this process, uncached.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import types
from typing import NamedTuple

import numpy as np
from numba import njit
from numba.core.errors import NumbaError

from .._files import cached_source
from ..backends import loop_threads, mkl, packed_gemm, settings
from ..backends.arrays import column_sums
from ..backends.bulk import one_hot_codes, rows_summed, t_times, transposed
from ..backends.packed_gemm import times_packed
from .loop import CellLayer, Noise, previous_states
from .protocol import tape_width

IN_LOOP_PROJECTION_BYTES = 2 ** 21
KEPT_LOOPS = 32              # generated loop modules kept in the cache, the ones used last
FEW_ROW_STEPS = 8            # B ≤ 2: up to B·T = 8 rows, adding rows of W costs less than packing it (H = 100)

_jit = njit(fastmath=True, error_model="numpy", cache=True, nogil=True)


class CompiledTape(NamedTuple):
    x: np.ndarray              # (T, B, D)
    state0: tuple              # (B, H) each
    states: tuple              # (T, B, H) each: views of ``slab``
    slab: np.ndarray           # (T, B, S, H) every state of every step
    start: np.ndarray          # (B, S, H) the state the layer started from
    z: np.ndarray              # (T, B, G·H) the kernels' tape rows (the LSTM's gates, …)
    aux: np.ndarray            # (T, B, A) the kernels' extra tape rows
    mask: np.ndarray | None    # (T, B) bool
    resets: np.ndarray | None  # (T, B) bool
    codes: np.ndarray | None   # (T·B,) the column of each row's 1 where x is one-hot
    noise: object              # loop.Noise or None
    fresh: np.ndarray          # (T, B, S, H) the kernels' new states before zoneout (N3); slab without it


class CompiledLayer(CellLayer):
    """The layer of a cell with kernels; arrays the compiled loop cannot take (CuPy, mixed
    dtypes, BPTT_LOOPS=0) go to the Python loop of cells/loop.py."""

    def __init__(self, cell):
        super().__init__(cell)
        self.kernels = tuple(cell.kernels)

    def _compiles(self, *arrays) -> bool:
        dtype = arrays[0].dtype
        return (settings.loops_enabled() and dtype in (np.float32, np.float64)
                and all(a is None or (isinstance(a, np.ndarray) and a.dtype == dtype) for a in arrays))

    def forward(self, params, x, state0, mask=None, resets=None, noise=None):
        extras = [params[k] for k in self.extra_names(params)]
        noise = noise or Noise(None, None)
        zone_ok = noise.zone is None or noise.zone.dtype in (np.bool_, x.dtype)       # a draw, or the rate
        if not (zone_ok and self._compiles(x, params["W_x"], params["W_h"], params["b_h"], *state0, *extras,
                                           noise.recurrent)):
            return super().forward(params, x, state0, mask, resets, noise)
        settings.keep_freed_memory()
        T, B, _ = x.shape
        W_h = np.ascontiguousarray(params["W_h"])
        GH, H = W_h.shape
        S, dt = len(self.STATE), x.dtype
        parts = loop_threads.parts_for(B, GH, H, T)
        codes = one_hot_codes(x)
        u, W_x_packed, table = _inputs(params, x, codes)                             # (K1)
        slab = np.empty((T, B, S, H), dt)
        h = slab.reshape(T, B, H) if S == 1 else np.empty((T, B, H), dt)
        aux = np.empty((T, B, tape_width(self.cell, H)), dt)
        start = np.ascontiguousarray(np.stack(state0, axis=1, dtype=dt))   # (B, S, H): the loops read rows
        valid, reset_at, resets_c = _flags(mask, resets, T, B)
        keep, zone = _noise_arrays(noise, dt)
        fresh = slab if noise.zone is None else np.empty_like(slab)
        code_rows = np.zeros((0, 0), np.int64) if codes is None else codes.reshape(T, B)
        args = (u, np.ascontiguousarray(x), W_x_packed, table, code_rows, np.ascontiguousarray(params["b_h"]),
                _flat(extras, dt), start, slab, fresh, h, aux, valid, reset_at, resets_c, keep, zone,
                np.empty((B, GH), dt), np.empty((B, S, H), dt), np.empty((B if keep.size else 0, H), dt),
                _gemm(W_h, B, T, forward=True), self.cell.option)
        self._run("forward", args, parts)
        stateT = tuple(slab[-1, :, s].copy() for s in range(S)) if T else tuple(state0)
        states = (h,) + tuple(slab[:, :, s] for s in range(1, S))
        z = u if self.cell.backward_reads_z else np.empty((T, B, 0), dt)     # the tape keeps only what is read
        return h, stateT, CompiledTape(x, tuple(state0), states, slab, start, z, aux, mask, resets, codes,
                                       noise, fresh)

    def backward(self, params, dh, dstateT, tape, need_dx=True):
        if not isinstance(tape, CompiledTape):
            return super().backward(params, dh, dstateT, tape, need_dx)
        x, slab = tape.x, tape.slab
        T, B, S, H = slab.shape
        D, dt = x.shape[2], x.dtype
        W_h = np.ascontiguousarray(params["W_h"])
        GH = W_h.shape[0]
        names = self.extra_names(params)
        extras = [params[k] for k in names]
        carry = np.zeros((B, S, H), dt) if dstateT is None else np.ascontiguousarray(np.stack(dstateT, axis=1, dtype=dt))
        du = np.empty((T, B, GH), dt)
        dv = du if self.cell.dv_is_du else np.empty((T, B, GH), dt)
        dextra = np.zeros((B, sum(e.size for e in extras)), dt)      # per row: the same sums on 1 or 2 threads
        valid, reset_at, resets_c = _flags(tape.mask, tape.resets, T, B)
        above = np.zeros((1, 1, H), dt) if dh is None else np.ascontiguousarray(dh, dtype=dt)
        other = np.empty((B, S, H), dt)
        keep, zone = _noise_arrays(tape.noise, dt)
        args = (above, dh is not None, carry, np.zeros((B, H), dt), tape.z, tape.aux, _flat(extras, dt),
                tape.start, slab, tape.fresh, valid, reset_at, resets_c, keep, zone, np.empty((B, S, H), dt),
                np.empty((B if zone.size else 0, S, H), dt), du, dv, other, dextra,
                _gemm(W_h, B, T, forward=False), self.cell.option)
        self._run("backward", args, loop_threads.parts_for(B, GH, H, T))
        du2, dv2 = du.reshape(T * B, GH), dv.reshape(T * B, GH)
        grads = {"W_x": transposed(rows_summed(du2, tape.codes, D)) if tape.codes is not None
                 else t_times(du2, np.ascontiguousarray(x).reshape(T * B, D))}      # (K6)
        if keep.size:
            grads["W_h"] = t_times(dv2, (previous_states(tape.state0[0], tape.states[0], tape.resets) * keep)
                                    .reshape(T * B, H))                                # (K6), (N2)
        elif tape.resets is None:          # h_{t-1} is h_0, then the tape's h: no copy of them
            grads["W_h"] = t_times(dv2[:B], np.ascontiguousarray(tape.state0[0], dtype=dt))
            if T > 1:
                grads["W_h"] += t_times(dv2[B:], tape.states[0][:-1].reshape((T - 1) * B, H))
        else:
            grads["W_h"] = t_times(dv2, previous_states(tape.state0[0], tape.states[0], tape.resets)
                                    .reshape(T * B, H))                                # (K6), (M5)
        grads["b_h"] = column_sums(du2)                                                 # (K6)
        flat, at = dextra.sum(axis=0), 0
        for k, e in zip(names, extras):
            grads[k] = flat[at:at + e.size].reshape(e.shape)                            # (K6)
            at += e.size
        dx = (du2 @ params["W_x"]).reshape(T, B, D) if need_dx else None          # (K6)
        dstate0 = carry if T % 2 == 0 else other
        return dx, tuple(dstate0[:, s].copy() for s in range(S)), grads

    def extra_names(self, params):
        return list(self.cell.extra_shapes(params["W_h"].shape[1]))

    def _run(self, direction, args, parts):
        """The compiled loop of this direction; a kernel Numba cannot type with the loop's
        arguments (compiled at the first call) is a ValueError naming the cell."""
        try:
            loop_threads.run(getattr(loops_for(*self.kernels), direction), args, parts)
        except NumbaError as exc:
            lines = [ln for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines()
                     if ln.strip() and not ln.startswith(("Failed in", "During:"))]
            raise ValueError(f"cell: {type(self.cell).__name__}'s {direction}_kernel does not compile in "
                             f"the time loop: {lines[0] if lines else type(exc).__name__}; expected a Numba "
                             f"function of the arguments bptt.cells.protocol lists (BPTT_LOOPS=0 runs "
                             f"its NumPy step instead)") from exc


def _flat(arrays, dtype):
    return np.concatenate([a.ravel() for a in arrays]).astype(dtype, copy=False) if arrays else np.zeros(0, dtype)


def _noise_arrays(noise, dtype):
    """keep (B, H) and zone (T or 1, B or 1, S, H; bool or the dtype) as the loops take them,
    empty for none."""
    keep = np.zeros((0, 0), dtype) if noise.recurrent is None else np.ascontiguousarray(noise.recurrent, dtype)
    zone = np.zeros((0, 0, 0, 0), dtype) if noise.zone is None else np.ascontiguousarray(noise.zone)
    return keep, zone


def _flags(mask, resets, T, B):
    """valid (T, B), reset_at (T,) and resets (T, B) as the loops take them, contiguous."""
    valid = np.ones((T, B), dtype=bool) if mask is None else np.ascontiguousarray(mask, dtype=bool)
    if resets is None:
        return valid, np.zeros(T, dtype=bool), np.zeros((1, 1), dtype=bool)
    return valid, np.any(resets, axis=1), np.ascontiguousarray(resets, dtype=bool)


def _gemm(W_h, B, T, forward):
    """(mode, packed, tiles, mkl_packed, W) for the loop's GEMM over T steps of B rows:
    mode 1 for one or two rows over a pass of at most FEW_ROW_STEPS rows in all (a single
    step to sample from, say), a row of W (W_hᵀ forward, C-ordered; W_h backward, as it
    is) added per input element: over so few rows, packing costs more than it saves;
    2 the micro-kernel over W packed here (W_hᵀ forward, W_h backward; tiles: each
    thread's scratch for a panel); 3 MKL's packed GEMM, packed for B rows, or for each
    half of them where the loop may run on two threads (loop_threads.large_enough): then
    one thread multiplies by halves too, as MKL's bits for a row depend on the rows of the
    call (float64: a block of 4 and the 1 to 3 left over take different kernels). The rule
    is by shape alone, as the bits depend on it."""
    dt = W_h.dtype
    tiles = np.empty((2, packed_gemm.MR, packed_gemm.panel_width(dt)), dt)
    if B <= 2 and B * T <= FEW_ROW_STEPS:      # W_hᵀ copied in blocks where a plain copy strides past the cache
        W = W_h if not forward else transposed(W_h) if W_h.size >= 2 ** 17 else np.ascontiguousarray(W_h.T)
        return 1, np.empty((1, 1, 1), dt), tiles, np.empty((1, 1), dt), W
    if settings.step_gemm() == "mkl":
        rows = (B // 2, B - B // 2) if loop_threads.large_enough(B, *W_h.shape, T) else (B,)
        mkl_packed = np.empty((len(rows), max(mkl.packed_size(W_h, forward, m) for m in rows)), dt)
        for i, m in enumerate(rows):
            mkl.pack_into(W_h, forward, m, mkl_packed[i])
        return 3, np.empty((1, 1, 1), dt), tiles, mkl_packed, np.empty((1, 1), dt)
    return 2, packed_gemm.pack(W_h.T if forward else W_h), tiles, np.empty((1, 1), dt), np.empty((1, 1), dt)


def _inputs(params, x, codes):
    """(u, W_x packed, W_xᵀ): u (T, B, G·H) = x W_xᵀ (no bias: the kernels add b_h) for all
    steps in one GEMM (K1); or, where x is one-hot, u left empty for the loop to fill with
    rows of W_xᵀ (D, G·H) step by step (the same numbers, written where the kernel reads
    them next); or, where the micro-kernel runs, the weights are small (W_x and W_h
    at most IN_LOOP_PROJECTION_BYTES) and each of two threads would have MIN_ROWS rows, u
    left empty for the loop to fill step by step from W_xᵀ packed here: each x_t W_xᵀ is
    then still in cache when the kernel reads it, which pays while both weights stay in
    cache too."""
    T, B, D = x.shape
    W_x, W_h = params["W_x"], params["W_h"]
    if codes is not None:
        return np.empty((T, B, W_x.shape[0]), x.dtype), np.empty((0, 0, 0), x.dtype), \
            transposed(np.ascontiguousarray(W_x))
    if (settings.step_gemm() == "packed" and B >= 2 * packed_gemm.MIN_ROWS
            and W_x.nbytes + W_h.nbytes <= IN_LOOP_PROJECTION_BYTES):
        return np.empty((T, B, W_x.shape[0]), x.dtype), packed_gemm.pack(np.ascontiguousarray(W_x).T), \
            np.empty((0, 0), x.dtype)
    u = (x.reshape(T * B, D) @ np.ascontiguousarray(W_x.T)).reshape(T, B, W_x.shape[0])
    return u, np.empty((0, 0, 0), dtype=x.dtype), np.empty((0, 0), x.dtype)


@_jit
def _share(n, part, parts):
    """[lo, hi) of this part's rows: all for one part; for two, the first or second half."""
    if parts == 1:
        return 0, n
    return (0, n // 2) if part == 0 else (n // 2, n)


LOOPS = '''
@_jit
def _state_read(prev, resets_t, scratch, r0, r1):
    """(M4) the state a step reads: prev with the rows of resetting streams zeroed (this
    thread's rows [r0, r1) of scratch written)."""
    for b in range(r0, r1):
        if resets_t[b]:
            scratch[b] = 0
        else:
            scratch[b] = prev[b]
    return scratch


@_jit
def _times_w(a, out, gemm, part, parts):
    """out = a · W_hᵀ (forward) or a · W_h (backward), as packed in gemm (_gemm), for this
    thread's rows a (M, ·) with any row stride."""
    mode, packed, tiles, mkl_packed, W = gemm
    if a.shape[0] == 0:
        return
    if mode == 1:
        _few_rows(a, W, out)
        return
    # MKL
    times_packed(a, packed, out, 0, out.shape[1], tiles[part])


@_jit
def _few_rows(a, W, out):
    """out = a · W for W (K, N), C-ordered: a row of W added per element of a's row."""
    for i in range(a.shape[0]):
        row, o = a[i], out[i]
        o[:] = 0
        for k in range(W.shape[0]):
            r, w = row[k], W[k]
            for j in range(o.size):
                o[j] += r * w[j]


@_jit
def _zone_at(zone, t, b):
    """d_t of row b, (S, H), from zone (T or 1, B or 1, S, H)."""
    return zone[t if zone.shape[0] > 1 else 0, b if zone.shape[1] > 1 else 0]


@_jit
def forward(u, x, W_x_packed, table, codes, bias, extra, start, slab, fresh, h, aux, valid, reset_at, resets,
            keep, zone, rec, scratch, dropped, gemm, option, part, parts):
    """u (T, B, G·H): x_t W_xᵀ in (or made here from W_x_packed, or for one-hot x from the
    rows of table = W_xᵀ that codes (T, B) name), the kernel's tape rows out;
    slab (T, B, S, H) and h (T, B, H) out; with zoneout (zone not empty) the kernel's own
    states out in fresh, else fresh is slab. keep (B, H): recurrent dropout's m, or empty."""
    T, B, S, H = slab.shape
    r0, r1 = _share(B, part, parts)
    for t in range(T):
        if W_x_packed.size:                                                  # (K1)
            times_packed(x[t][r0:r1], W_x_packed, u[t][r0:r1], 0, u.shape[2], gemm[2][part])
        elif table.size:
            for b in range(r0, r1):
                u[t, b] = table[codes[t, b]]                                 # (K1) x_t one-hot
        prev = start if t == 0 else slab[t - 1]
        if reset_at[t]:
            prev = _state_read(prev, resets[t], scratch, r0, r1)              # (M4)
        if keep.size:
            for b in range(r0, r1):
                for j in range(H):
                    dropped[b, j] = prev[b, 0, j] * keep[b, j]               # (N1)
            _times_w(dropped[r0:r1], rec[r0:r1], gemm, part, parts)          # (K2)
        else:
            _times_w(prev[r0:r1, 0], rec[r0:r1], gemm, part, parts)          # (K2)
        for b in range(r0, r1):
            if valid[t, b]:
                _step_forward(u[t, b], rec[b], bias, extra, prev[b], fresh[t, b], aux[t, b], option)   # (K3)
                if zone.size:
                    d, n, p, s_t = _zone_at(zone, t, b), fresh[t, b], prev[b], slab[t, b]
                    for i in range(S):
                        for j in range(H):   # (N3); d = 1 apart: fastmath may reassociate the sum
                            k = d[i, j]
                            s_t[i, j] = p[i, j] if k == 1 else k * p[i, j] + (1 - k) * n[i, j]
            else:
                slab[t, b] = prev[b]                                         # (M1)
            if S > 1:
                h[t, b] = slab[t, b, 0]


@_jit
def backward(dh, has_dh, carry, rec_grad, z, aux, extra, start, slab, fresh, valid, reset_at, resets, keep,
             zone, scratch, into_cell, du, dv, other, dextra, gemm, option, part, parts):
    """carry (B, S, H): the gradient reaching s_T in; it and ``other`` take turns as the
    gradient into a step and out of it, so the one reaching s_0 ends in carry for even T,
    in other for odd T. du, dv (T, B, G·H) out; dextra[b] accumulates row b's part of the
    extra parameters' gradient. into_cell (B, S, H): with zoneout, what enters the kernel."""
    T, B, S, H = slab.shape
    r0, r1 = _share(B, part, parts)
    into, out = carry, other
    for t in range(T - 1, -1, -1):
        prev = start if t == 0 else slab[t - 1]
        if reset_at[t]:
            prev = _state_read(prev, resets[t], scratch, r0, r1)              # (M4)
        for b in range(r0, r1):
            d = into[b]
            d0, g = d[0], rec_grad[b]
            if has_dh:
                e = dh[t, b]
                for j in range(H):
                    d0[j] = (d0[j] + g[j]) + e[j]                            # (K5), (R3)
            else:
                for j in range(H):
                    d0[j] += g[j]                                            # (K5)
            if valid[t, b] and zone.size:
                k, c = _zone_at(zone, t, b), into_cell[b]
                for i in range(S):
                    for j in range(H):
                        c[i, j] = (1 - k[i, j]) * d[i, j]                    # (N4)
                _step_backward(c, z[t, b], aux[t, b], extra, prev[b], fresh[t, b], du[t, b], dv[t, b],
                               out[b], dextra[b], option)                    # (K4)
                o = out[b]
                for i in range(S):
                    for j in range(H):
                        o[i, j] += k[i, j] * d[i, j]                         # (N4)
            elif valid[t, b]:
                _step_backward(d, z[t, b], aux[t, b], extra, prev[b], fresh[t, b], du[t, b], dv[t, b],
                               out[b], dextra[b], option)                    # (K4)
            else:                                                            # (M2), (M3)
                du[t, b] = 0
                dv[t, b] = 0
                out[b] = d
            if reset_at[t] and resets[t, b]:
                out[b] = 0                                                   # (M5)
        _times_w(dv[t][r0:r1], rec_grad[r0:r1], gemm, part, parts)          # (K5) dv_t W_h
        if keep.size:
            for b in range(r0, r1):
                for j in range(H):
                    rec_grad[b, j] *= keep[b, j]                             # (N2)
        if reset_at[t]:
            for b in range(r0, r1):
                if resets[t, b]:
                    rec_grad[b] = 0                                          # (M5)
        into, out = out, into
    for b in range(r0, r1):
        d0, g = into[b, 0], rec_grad[b]
        for j in range(H):
            d0[j] += g[j]                                                    # (K5) at t = 0
'''

_HEADER = '''"""Generated by bptt.cells.compiled: the time loops of {names}. Do not edit."""

from bptt.cells.compiled import _find, _inlined, _jit, _share, times_packed
{mkl_import}

_step_forward = _inlined(_find({fwd[0]!r}, {fwd[1]!r}))
_step_backward = _inlined(_find({bwd[0]!r}, {bwd[1]!r}))
'''

_MKL_BRANCH = """    if mode == 3:                    # by the halves of two threads on one too (_gemm)
        for i in range(mkl_packed.shape[0] // parts):
            lo, hi = _share(a.shape[0], i, mkl_packed.shape[0] // parts)
            mkl_compute(a[lo:hi], mkl_packed[i + part], out[lo:hi])
        return
"""
_LOOPS: dict = {}


def loops_for(forward_kernel, backward_kernel):
    """The namespace (module) with ``forward`` and ``backward`` for these kernels and the
    GEMM in force, made once per process: imported from the cache directory, or compiled
    here (see the docstring)."""
    use_mkl = settings.step_gemm() == "mkl"
    key = (forward_kernel, backward_kernel, use_mkl)
    if key not in _LOOPS:
        if use_mkl:
            mkl.load()                                 # its symbols, before code that calls them
        text = LOOPS.replace("    # MKL\n", _MKL_BRANCH if use_mkl else "")
        _LOOPS[key] = _generated(forward_kernel, backward_kernel, text, use_mkl) or \
            _in_process(forward_kernel, backward_kernel, text)
    return _LOOPS[key]


def _find(module, qualname):
    return functools.reduce(getattr, qualname.split("."), importlib.import_module(module))


def _inlined(kernel):
    """The kernel as the loops call it: its Python function compiled into each loop with
    the kernel's own options. A kernel called as a function of its own has two copies, the
    one compiled within the loop and the kernel's own, and which one a call reaches depends
    on whether the kernel was compiled in this process; inlined, there is one."""
    options = {k: v for k, v in getattr(kernel, "targetoptions", {}).items() if k not in ("cache", "nopython")}
    return njit(inline="always", **options)(getattr(kernel, "py_func", kernel))


def _address(kernel):
    """(module, qualname) under which ``kernel`` can be imported, or None."""
    fn = getattr(kernel, "py_func", None)
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if fn is None or module in (None, "__main__") or "<locals>" in qualname:
        return None
    try:
        return (module, qualname) if _find(module, qualname) is kernel else None
    except (ImportError, AttributeError):
        return None


_LIBRARIES = ("numpy", "numba", "llvmlite", "math", "cmath", "builtins")      # pinned by their versions


def _sources_of(*kernels):
    """What the loop compiles from besides its own text: the source of each module that
    the kernels reach through the names their code uses (``pkg.mod.f`` too), following the
    functions they call, and the values of the constants they read (Numba freezes them):
    a helper module's edit must make a new loop, not reuse the cached one."""
    seen, texts, todo = set(), [], [k.py_func for k in kernels]
    while todo:
        fn = todo.pop()
        modules, names = [sys.modules.get(fn.__module__)], fn.__code__.co_names
        values = [fn.__globals__.get(name) for name in names]
        for value in values:            # grows as it goes: what pkg.mod.f reaches, each value once
            if isinstance(value, types.ModuleType) and value.__name__.split(".")[0] not in _LIBRARIES:
                found = (getattr(value, name, None) for name in names)
                values += [v for v in found if v is not None and not any(v is w for w in values)]
        for value in values:
            if isinstance(value, (int, float, complex, str, np.ndarray, np.generic)):   # not reprs with addresses
                texts.append(repr(value) if not isinstance(value, np.ndarray) else
                             f"{value.dtype.str}{value.shape}{hashlib.sha256(value.tobytes()).hexdigest()}")
            elif isinstance(value, types.ModuleType):
                modules.append(value)
            elif isinstance(getattr(value, "py_func", value), types.FunctionType):
                inner = getattr(value, "py_func", value)
                if inner not in seen:
                    seen.add(inner)
                    todo.append(inner)
        for module in modules:
            name = getattr(module, "__name__", "")
            if module is None or name in seen or name.split(".")[0] in _LIBRARIES:
                continue
            seen.add(name)
            try:
                texts.append(inspect.getsource(module))
            except (OSError, TypeError):
                texts.append(name)
    return texts


def _generated(forward_kernel, backward_kernel, loops, use_mkl):
    fwd, bwd = _address(forward_kernel), _address(backward_kernel)
    if fwd is None or bwd is None:
        return None
    header = _HEADER.format(names=f"{fwd[0]}.{fwd[1]} and {bwd[0]}.{bwd[1]}", fwd=fwd, bwd=bwd,
                            mkl_import="from bptt.backends.mkl import compute as mkl_compute\n" if use_mkl else "")
    text = header + loops
    stamp = hashlib.sha256("\0".join([text] + _sources_of(forward_kernel, backward_kernel) +
                                     [inspect.getsource(m) for m in (sys.modules[__name__], packed_gemm, mkl)])
                           .encode()).hexdigest()[:20]
    try:
        path = cached_source(os.path.join(settings.cache_dir(), "loops"), f"loops_{stamp}", text, KEPT_LOOPS)
    except OSError:
        return None
    spec = importlib.util.spec_from_file_location(name := f"bptt_loops_{stamp}", path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except OSError:                    # pruned by another process meanwhile: compiled here instead
        del sys.modules[name]
        return None
    return module


def _in_process(forward_kernel, backward_kernel, loops):
    names = {"_jit": njit(fastmath=True, error_model="numpy", nogil=True), "_share": _share,
             "times_packed": times_packed, "mkl_compute": mkl.compute,
             "_step_forward": _inlined(forward_kernel), "_step_backward": _inlined(backward_kernel)}
    exec(compile(loops, "<bptt.cells.compiled.LOOPS>", "exec"), names)
    return types.SimpleNamespace(**names)
