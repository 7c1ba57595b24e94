"""The time loops of the fused CPU path, compiled whole: no return to Python per step.

A step of a layer is one recurrent GEMM and one fused kernel (backends/fused.py). Run
from Python, each step also pays the interpreter: a NumPy call, a Numba dispatch with
eight or nine arrays to unbox, a few slices: about 10 µs a step. At (T, B, D, H) =
(100, 32, 64, 128) an LSTM step's real work is 60-80 µs, so that was a tenth of the pass.
Here the whole loop over t is one Numba function. The GEMM is the micro-kernel of
backends/packed_gemm.py over W_h packed once per pass (1.06-1.55x OpenBLAS's rate at the
benchmark's batched shapes, benchmarks/step_gemm.py), or, with BPTT_STEP_GEMM=blas, a
call straight into NumPy's own BLAS (backends/cblas.py, same library, same threads); the
kernels are the ones the Python loop calls. Where the weights are small, the forward
loops also project x_t by W_x step by step (``inputs_for_loop``). The tests hold both
loops, with either GEMM, to the NumPy path to 1e-12 in float64.

    rnn_forward, lstm_forward, gru_forward           (R1)-(R2), (L1)-(L4), (G1)-(G5), (M1), (M4)
    rnn_backward, lstm_backward, gru_backward        (R3)-(R4), (L5)-(L9), (G6)-(G9), (M2)-(M5)

Arguments are the Python loop's, as whole (T, B, ·) arrays, C-contiguous; W_h is (G·H, H)
in the kernels' gate order; ``reset_at`` (T,) says which steps have a reset in ``resets``
(T, B). Optional arrays come with a flag and a stand-in of the right type. The last
three, (part, parts, sync), say which half of each step this thread runs when two
threads share the loop (loop_threads.py); ``run`` supplies them, and before them the
recurrent GEMM's tuple (``gemm_args``).
``ENABLED`` (False without OpenBLAS, or with BPTT_LOOPS=0) picks these over the Python loop.
"""
from __future__ import annotations

import os

import numpy as np

from . import cblas, fused, loop_threads, packed_gemm, recurrent_gemm, workspace
from .arrays import matmul

AVAILABLE = fused.AVAILABLE and cblas.AVAILABLE
ENABLED = AVAILABLE and os.environ.get("BPTT_LOOPS", "1") != "0"
STEP_GEMM = os.environ.get("BPTT_STEP_GEMM", "packed")
IN_LOOP_PROJECTION_BYTES = 2 ** 21
if STEP_GEMM not in ("packed", "blas"):
    raise ValueError(f"BPTT_STEP_GEMM: expected packed or blas (or unset), got {STEP_GEMM!r}")


def use_for(x, *others) -> bool:
    """Whether the compiled loops run a layer given the array x (NumPy, of a fused dtype)
    and the other float arrays it reads. They must all share x's dtype: the BLAS entry point
    is chosen by dtype, so a mixed call takes the Python loop, where NumPy casts."""
    return (ENABLED and isinstance(x, np.ndarray) and fused.use_for(x.dtype)
            and all(a is None or (isinstance(a, np.ndarray) and a.dtype == x.dtype) for a in others))


def step_flags(mask, resets, T, B):
    """valid (T, B), reset_at (T,) and resets (T, B) as the loops take them, contiguous."""
    valid = np.ones((T, B), dtype=bool) if mask is None else np.ascontiguousarray(mask, dtype=bool)
    if resets is None:
        return valid, np.zeros(T, dtype=bool), np.zeros((1, 1), dtype=bool)
    resets = np.ascontiguousarray(resets, dtype=bool)
    return valid, resets.any(axis=1), resets


def contiguous(a):
    """C-contiguous, as the compiled loops take every array (a view when it already is)."""
    return np.ascontiguousarray(a)


def gemm_args(W_h, B, forward, parts=1):
    """The loops' recurrent GEMM, as the tuple (mode, outT, packed, tiles) they take.

    mode 2 (the default, ``STEP_GEMM = "packed"``): W_h packed once here in the
    micro-kernel's panels (backends/packed_gemm.py; W_hᵀ forward, W_h backward), each step
    only the micro-kernel; tiles (2, MR, NR) is each thread's scratch for a partly covered
    panel; outT is unused (empty). With BPTT_STEP_GEMM=blas, NumPy's OpenBLAS at every step: mode 1 when BLAS
    computes the transposed product into outT and the loop copies it back, else 0. That
    choice is recurrent_gemm's (BPTT_GEMM, or measured once per shape, direction, dtype,
    parts and process): OpenBLAS blocks the two products differently, and which one is
    faster depends on the shape and, on this machine, on the minute. With two parts each
    thread computes half of the output columns single-threaded, so that is what is measured
    (BLAS held to one thread)."""
    GH, H = W_h.shape
    dtype = W_h.dtype
    if STEP_GEMM == "packed" and B > 1:          # (one row takes gemv: nothing to pack)
        packed = packed_gemm.pack(W_h.T if forward else W_h)
        tiles = np.empty((2, packed_gemm.MR, packed.shape[2]), dtype=dtype)
        return 2, np.empty((0, 0), dtype=dtype), packed, tiles
    outT = np.empty((GH if forward else H, B), dtype=dtype)
    unused = np.empty((1, 1, 1), dtype=dtype)
    if B <= 1:                                   # gemv, or nothing to multiply
        return 0, outT, unused, unused
    key = ("compiled loop", B, H, GH, np.dtype(dtype).str, forward, parts)
    flip = recurrent_gemm.choose(key, lambda: _measure_flip(B, H, GH, dtype, forward, parts))
    return int(flip), outT, unused, unused


def inputs_for_loop(params, x):
    """(projected, W_x packed) for a forward loop. Where the packed GEMM runs it, the
    weights are small (W_x and W_h together at most ``IN_LOOP_PROJECTION_BYTES``) and each
    of two threads would still have packed_gemm.MIN_ROWS rows, ``projected`` (T, B, G·H)
    is left empty and each step of the loop writes x_t W_xᵀ into it with the micro-kernel
    (the thread's own rows, still in L1 for the step's kernel), from the W_xᵀ packed here.
    Else it is the whole input projection in one BLAS GEMM, made here, and the packed W_x
    is empty. Measured against the one GEMM (forward pass, medians of 40 alternating
    blocks): LSTM 0.85 at (100, 32, 64, 128) (384 KiB of weights), 0.88 at (1000, 16, 32,
    128), 0.98 at (100, 64, 128, 256) (1.5 MiB), but 1.03 at (200, 32, 128, 512) (5 MiB:
    both weights from L3 at every step); at B = 1 the LSTM took 0.76 of PyTorch's time
    so, 0.47 with the one GEMM."""
    T, B, D = x.shape
    W_x, W_h = params["W_x"], params["W_h"]
    if (STEP_GEMM == "packed" and B >= 2 * packed_gemm.MIN_ROWS
            and W_x.nbytes + W_h.nbytes <= IN_LOOP_PROJECTION_BYTES):
        return workspace.empty((T, B, W_x.shape[0]), x.dtype), packed_gemm.pack(contiguous(W_x).T)
    projected = matmul(x.reshape(T * B, D), W_x.T).reshape(T, B, W_x.shape[0])
    return projected, np.empty((0, 0, 0), dtype=x.dtype)


def run(loop, args, W_h, B, T, forward):
    """loop(*args, gemm, part, parts, sync) for T steps: on one thread, or, where
    loop_threads.parts_for says two and the worker is free, on two threads each running
    half of every step, with gemm_args' recurrent GEMM for that way of running."""
    GH, H = W_h.shape
    gemm = None
    if loop_threads.parts_for(B, GH, H, T, meets=STEP_GEMM != "packed") == 2:
        gemm = gemm_args(W_h, B, forward, parts=2)
        if loop_threads.run_pair(loop, (*args, gemm)):
            return
    if gemm is None or gemm[0] != 2:     # (W_h packed serves one thread as well as two)
        gemm = gemm_args(W_h, B, forward)
    loop(*args, gemm, 0, 1, loop_threads.NO_SYNC)


def _measure_flip(B, H, GH, dtype, forward, parts=1):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((GH, H)).astype(dtype)
    a = rng.standard_normal((B, H if forward else GH)).astype(dtype)
    out = np.empty((B, GH if forward else H), dtype=dtype)
    outT = np.empty(out.shape[::-1], dtype=dtype)
    n = max(4, min(100, int(2e8 / (2 * B * H * GH))))               # about 200 MFLOP a round
    hi = _share(out.shape[1], 0, 2, 16)[1] if parts == 2 else out.shape[1]   # part 0's block

    unused = np.empty((1, 1, 1), dtype=dtype)

    def run(flip):
        gemm = (int(flip), outT, unused, unused)
        if parts == 1:
            return lambda count: _repeat_times_w(a, W, out, forward, gemm, count)
        return lambda count: _repeat_times_w_part(a, W, out, forward, gemm, 0, hi, 2, count)
    if parts == 1:
        return recurrent_gemm.second_is_faster(run(False), run(True), n, repeats=5)
    with loop_threads.blas_one_thread():
        return recurrent_gemm.second_is_faster(run(False), run(True), n, repeats=5)


if AVAILABLE:
    from numba import njit

    from .cblas import gemm as gemm_blas
    from .cblas import gemv
    from .fused import (_jit, gru_backward_step, gru_forward_step, lstm_backward_step,
                        lstm_forward_step, rnn_backward_step, rnn_forward_step)
    from .packed_gemm import times_packed
    from .spin import wait_for_partner

    # The whole loops release the GIL: they touch no Python object, and so two threads can
    # run two layers (or two halves of a batch) at once (benchmarks/batch_split.py).
    _loop_jit = njit(fastmath=True, error_model="numpy", cache=True, nogil=True)

    @_jit
    def _times_w(a, W, out, transposed, gemm):
        """out = a · W_hᵀ (transposed: the forward's W_h h_{t-1}) or a · W_h (the backward's
        W_hᵀ δ); W is (G·H, H); gemm = (mode, outT, packed, tiles) from gemm_args. One row
        (B = 1) takes BLAS's gemv: the micro-kernel would keep only two sums in flight, too
        few to hide the FMA's latency. Mode 2: the micro-kernel over W packed once
        (backends/packed_gemm.py). Else BLAS; mode 1 computes outᵀ = op(W)ᵀ aᵀ into
        outT (a different blocking inside OpenBLAS, faster at some shapes) and copies it back."""
        mode, outT, packed, tiles = gemm
        if a.shape[0] == 1:
            gemv(not transposed, W, a[0], out[0])
        elif mode == 2:
            times_packed(a, packed, out, 0, out.shape[1], tiles[0])
        elif mode == 0:
            gemm_blas(False, transposed, a, W, out)
        else:
            gemm_blas(not transposed, True, W, a, outT)
            _transpose_into(outT, out)

    @_jit
    def _transpose_into(src, dst):
        """dst (B, N) = srcᵀ. In bands of 16 rows of src (16 · B values, in L1) that fill
        each row of dst 16 contiguous values at a time, with the inner loop of fixed length
        so LLVM unrolls it: 1.6-1.8x faster than row by row over all of src at
        (B, N) = (32, 512) and (32, 2048) (the straight column walk re-reads src from L2)."""
        B, N = dst.shape
        whole = N - N % 16
        for j0 in range(0, whole, 16):
            for i in range(B):
                row = dst[i]
                for jj in range(16):
                    row[j0 + jj] = src[j0 + jj, i]
        for i in range(B):
            row = dst[i]
            for j in range(whole, N):
                row[j] = src[j, i]

    @_jit
    def _repeat_times_w(a, W, out, transposed, gemm, n):
        for _ in range(n):
            _times_w(a, W, out, transposed, gemm)

    @_jit
    def _share(n, part, parts, align):
        """[lo, hi) of this part's share of n items: all of them for one part; for two,
        cut at a multiple of align (whole cache lines of a GEMM's output columns)."""
        if parts == 1:
            return 0, n
        cut = (n // 2) // align * align
        if cut == 0:
            cut = n // 2
        return (0, cut) if part == 0 else (cut, n)

    @_jit
    def _times_w_part(a, W, out, transposed, gemm, lo, hi, parts):
        """_times_w, or with two parts (BLAS: modes 0 and 1) only the output columns
        [lo, hi): each thread multiplies its block of W's rows (forward) or columns
        (backward) by the whole of a, single-threaded BLAS, which packs only that block of W
        (loop_threads.py), in mode 1 into rows [lo, hi) of outT and copied back, as _times_w
        does."""
        if parts == 1:
            _times_w(a, W, out, transposed, gemm)
            return
        mode, outT, packed, tiles = gemm
        block = W[lo:hi] if transposed else W[:, lo:hi]
        if mode == 1:
            gemm_blas(not transposed, True, block, a, outT[lo:hi])
            _transpose_into(outT[lo:hi], out[:, lo:hi])
        else:
            gemm_blas(False, transposed, a, block, out[:, lo:hi])

    @_jit
    def _repeat_times_w_part(a, W, out, transposed, gemm, lo, hi, parts, n):
        for _ in range(n):
            _times_w_part(a, W, out, transposed, gemm, lo, hi, parts)

    @_jit
    def _gemm_block(B, N, part, parts, gemm):
        """(row0, row1, col0, col1, meets): the block of a step's GEMM output (B, N) this
        thread computes, and how many threads meet at the barriers (1: they never do). With
        BLAS, whole rows split by columns (each thread packs only its columns of W_h), and
        the threads meet twice a step, since each one's kernel rows need both halves. Packed
        (W_h shared, packed once), the thread's own rows of the batch, all columns: then a
        thread's GEMM reads and its kernel writes only its own rows, so the two halves of the
        batch run through time without ever waiting for each other."""
        if parts == 2 and gemm[0] == 2:
            r0, r1 = _share(B, part, parts, 1)
            return r0, r1, 0, N, 1
        c0, c1 = _share(N, part, parts, 16)
        return 0, B, c0, c1, parts

    @_jit
    def _times_w_block(a, W, out, transposed, gemm, r0, r1, c0, c1, part, parts):
        """Rows [r0, r1) and columns [c0, c1) of out = a · W_hᵀ (transposed) or a · W_h, as
        _gemm_block gave them to this thread."""
        if parts == 2 and gemm[0] == 2:
            mode, outT, packed, tiles = gemm
            times_packed(a[r0:r1], packed, out[r0:r1], c0, c1, tiles[part])
        else:
            _times_w_part(a, W, out, transposed, gemm, c0, c1, parts)

    @_jit
    def _state_in(prev, resets_t, scratch, r0, r1):
        """(M4) the state a step reads: prev with the rows of resetting streams zeroed
        (rows [r0, r1) of scratch written; the caller's partner writes the others)."""
        for b in range(r0, r1):
            if resets_t[b]:
                scratch[b, :] = 0
            else:
                scratch[b, :] = prev[b]
        return scratch

    @_jit
    def _zero_rows(d, resets_t):
        """(M5) nothing crosses a reset going back."""
        for b in range(d.shape[0]):
            if resets_t[b]:
                d[b, :] = 0

    # Every loop takes (part, parts, sync) last: parts = 1 runs the whole step on this
    # thread; parts = 2 runs this thread's half of it, the partner the other: the kernel by
    # rows of the batch, the recurrent GEMM by the block _gemm_block gives (the same rows
    # when W_h is packed; else blocks of output columns, and then the threads meet at
    # wait_for_partner twice a step, since each kernel reads whole rows of the GEMM's output
    # and each GEMM the whole state). ``meets`` is 1 where they need not meet.

    # ---- Elman RNN --------------------------------------------------------------------------

    @_loop_jit
    def rnn_forward(h, x, W_x_packed, W_h, bias, h0, valid, kind, reset_at, resets, rec, scratch, gemm,
                    part, parts, sync):
        """h (T, B, H): W_x x_t in (or, with W_x_packed, made here), h_t out."""
        T, B, H = h.shape
        r0, r1 = _share(B, part, parts, 1)
        q0, q1, g0, g1, meets = _gemm_block(B, H, part, parts, gemm)
        for t in range(T):
            if W_x_packed.size:                                              # (R1), input part
                times_packed(x[t][r0:r1], W_x_packed, h[t][r0:r1], 0, H, gemm[3][part])
            prev = h0 if t == 0 else h[t - 1]
            if reset_at[t]:
                prev = _state_in(prev, resets[t], scratch, r0, r1)           # (M4)
                wait_for_partner(sync, part, meets)
            _times_w_block(prev, W_h, rec, True, gemm, q0, q1, g0, g1, part, parts)   # W_h h_{t-1}
            wait_for_partner(sync, part, meets)
            rnn_forward_step(h[t][r0:r1], rec[r0:r1], bias, prev[r0:r1], valid[t][r0:r1], kind)   # (R1), (R2), (M1)
            wait_for_partner(sync, part, meets)

    @_loop_jit
    def rnn_backward(W_h, dh, has_dh, dh_next, h, valid, masked, kind, reset_at, resets,
                     delta, skip, no_dh, gemm, part, parts, sync):
        """dh_next: ∂L/∂h_T in, ∂L/∂h_0 out; delta (T, B, H) out: δa_t."""
        T, B, H = h.shape
        r0, r1 = _share(B, part, parts, 1)
        q0, q1, g0, g1, meets = _gemm_block(B, H, part, parts, gemm)
        for t in range(T - 1, -1, -1):
            above = dh[t] if has_dh else no_dh
            rnn_backward_step(above[r0:r1], dh_next[r0:r1], h[t][r0:r1], valid[t][r0:r1], kind,
                              delta[t][r0:r1], skip[r0:r1])                  # (R3), (R4), (M2)
            wait_for_partner(sync, part, meets)
            _times_w_block(delta[t], W_h, dh_next, False, gemm, q0, q1, g0, g1, part, parts)   # (R3) W_hᵀ δa_t
            if masked:
                dh_next[q0:q1, g0:g1] += skip[q0:q1, g0:g1]                  # (M3)
            if reset_at[t]:
                _zero_rows(dh_next[q0:q1, g0:g1], resets[t][q0:q1])          # (M5)
            wait_for_partner(sync, part, meets)

    # ---- LSTM -------------------------------------------------------------------------------

    @_loop_jit
    def lstm_forward(gates, x, W_x_packed, W_h, bias, h0, c0, h, c, valid, reset_at, resets, rec,
                     h_scratch, c_scratch, gemm, part, parts, sync):
        """gates (T, B, 4H): W_x x_t in (or, with W_x_packed, made here), activated gates out;
        h, c (T, B, H) out."""
        T, B, H = h.shape
        r0, r1 = _share(B, part, parts, 1)
        q0, q1, g0, g1, meets = _gemm_block(B, 4 * H, part, parts, gemm)
        for t in range(T):
            if W_x_packed.size:                                              # (L1), input part
                times_packed(x[t][r0:r1], W_x_packed, gates[t][r0:r1], 0, 4 * H, gemm[3][part])
            h_prev = h0 if t == 0 else h[t - 1]
            c_prev = c0 if t == 0 else c[t - 1]
            if reset_at[t]:
                h_prev = _state_in(h_prev, resets[t], h_scratch, r0, r1)     # (M4)
                c_prev = _state_in(c_prev, resets[t], c_scratch, r0, r1)
                wait_for_partner(sync, part, meets)
            _times_w_block(h_prev, W_h, rec, True, gemm, q0, q1, g0, g1, part, parts)   # W_h h_{t-1}
            wait_for_partner(sync, part, meets)
            lstm_forward_step(gates[t][r0:r1], rec[r0:r1], bias, h_prev[r0:r1], c_prev[r0:r1],
                              h[t][r0:r1], c[t][r0:r1], valid[t][r0:r1])     # (L1)-(L4), (M1)
            wait_for_partner(sync, part, meets)

    @_loop_jit
    def lstm_backward(W_h, dh, has_dh, dh_next, dc_next, gates, c, c0, c_in, has_c_in, valid,
                      masked, reset_at, resets, dz, skip, no_dh, gemm, part, parts, sync):
        """dh_next, dc_next: from t = T in, to t = 0 out; dz (T, B, 4H) out: δz_t.
        c_in (T, B, H): the cell state each step read, when resets make it differ from c_{t-1}."""
        T, B, H = c.shape
        r0, r1 = _share(B, part, parts, 1)
        q0, q1, g0, g1, meets = _gemm_block(B, H, part, parts, gemm)
        for t in range(T - 1, -1, -1):
            above = dh[t] if has_dh else no_dh
            if has_c_in:
                c_prev = c_in[t]
            else:
                c_prev = c0 if t == 0 else c[t - 1]
            lstm_backward_step(above[r0:r1], dh_next[r0:r1], dc_next[r0:r1], gates[t][r0:r1], c[t][r0:r1],
                               c_prev[r0:r1], valid[t][r0:r1], dz[t][r0:r1], skip[r0:r1])    # (L5)-(L9)
            if reset_at[t]:
                _zero_rows(dc_next[r0:r1], resets[t][r0:r1])                 # (M5)
            wait_for_partner(sync, part, meets)
            _times_w_block(dz[t], W_h, dh_next, False, gemm, q0, q1, g0, g1, part, parts)   # (L5) W_hᵀ δz_t
            if masked:
                dh_next[q0:q1, g0:g1] += skip[q0:q1, g0:g1]                  # (M3)
            if reset_at[t]:
                _zero_rows(dh_next[q0:q1, g0:g1], resets[t][q0:q1])          # (M5)
            wait_for_partner(sync, part, meets)

    # ---- GRU --------------------------------------------------------------------------------

    @_loop_jit
    def gru_forward(gates, x, W_x_packed, W_h, bias, b_hn, h0, q, h, valid, reset_at, resets, rec, scratch,
                    gemm, part, parts, sync):
        """gates (T, B, 3H): W_x x_t in (or, with W_x_packed, made here), activated r, z, n
        out; q, h (T, B, H) out."""
        T, B, H = h.shape
        r0, r1 = _share(B, part, parts, 1)
        q0, q1, g0, g1, meets = _gemm_block(B, 3 * H, part, parts, gemm)
        for t in range(T):
            if W_x_packed.size:                                              # (G1)-(G4), input parts
                times_packed(x[t][r0:r1], W_x_packed, gates[t][r0:r1], 0, 3 * H, gemm[3][part])
            prev = h0 if t == 0 else h[t - 1]
            if reset_at[t]:
                prev = _state_in(prev, resets[t], scratch, r0, r1)           # (M4)
                wait_for_partner(sync, part, meets)
            _times_w_block(prev, W_h, rec, True, gemm, q0, q1, g0, g1, part, parts)   # W_h h_{t-1}
            wait_for_partner(sync, part, meets)
            gru_forward_step(gates[t][r0:r1], rec[r0:r1], bias, b_hn, prev[r0:r1], q[t][r0:r1],
                             h[t][r0:r1], valid[t][r0:r1])                   # (G1)-(G5), (M1)
            wait_for_partner(sync, part, meets)

    @_loop_jit
    def gru_backward(W_h, dh, has_dh, dh_next, gates, q, h, h0, h_in, has_h_in, valid,
                     reset_at, resets, d_rec, d_n, direct, no_dh, gemm, part, parts, sync):
        """dh_next: ∂L/∂h_T in, ∂L/∂h_0 out; d_rec (T, B, 3H), d_n (T, B, H) out."""
        T, B, H = h.shape
        r0, r1 = _share(B, part, parts, 1)
        q0, q1, g0, g1, meets = _gemm_block(B, H, part, parts, gemm)
        for t in range(T - 1, -1, -1):
            above = dh[t] if has_dh else no_dh
            if has_h_in:
                h_prev = h_in[t]
            else:
                h_prev = h0 if t == 0 else h[t - 1]
            gru_backward_step(above[r0:r1], dh_next[r0:r1], gates[t][r0:r1], q[t][r0:r1], h_prev[r0:r1],
                              valid[t][r0:r1], d_rec[t][r0:r1], d_n[t][r0:r1], direct[r0:r1])
            wait_for_partner(sync, part, meets)
            # (G6) W_hᵀ [δz_z, δz_r, δq]
            _times_w_block(d_rec[t], W_h, dh_next, False, gemm, q0, q1, g0, g1, part, parts)
            dh_next[q0:q1, g0:g1] += direct[q0:q1, g0:g1]                    # (G6) + z ⊙ dh_t
            if reset_at[t]:
                _zero_rows(dh_next[q0:q1, g0:g1], resets[t][q0:q1])          # (M5)
            wait_for_partner(sync, part, meets)
