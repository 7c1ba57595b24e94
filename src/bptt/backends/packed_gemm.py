"""The recurrent GEMM of the compiled loops over W_h packed once per pass (a micro-kernel).

Every step multiplies a small batch by the same W_h; OpenBLAS re-packs its operand at
every call. Here W_h is laid out once per pass in panels of NR columns, and each step
runs only the micro-kernel: an MR x NR block of the output in 2·MR vector registers (12
of AVX2's 16, of AVX-512's 32) while k runs over K, one vector FMA per register per k.

    pack(Bm)                      (K, N) -> (ceil(N / NR), K, NR), zero-padded panels
    times_packed(a, Bp, out, lo, hi, tile)
                                  out[:, lo:hi] = a · Bm[:, lo:hi]   a (M, K), out (M, N)

The micro-kernel is LLVM IR (llvmlite) inlined into the Numba code that calls it;
``llvm.fmuladd`` fuses where the CPU has FMA. Its vectors are those of the CPU Numba
compiles for (``vector_bytes``): 256-bit (AVX2: MR x NR = 6 x 16 in float32, 6 x 8 in
float64) or 512-bit (AVX-512: 6 x 32, 6 x 16). Each output element sums in k order, in
blocks of KC, whatever the rows and the vector width: the same bits however the batch's
rows are shared out, and on AVX2 and AVX-512 alike.
"""
from __future__ import annotations

import functools

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

MR = 6                      # rows of the output a micro-kernel call computes
MIN_ROWS = 4                # rows a product needs for full speed: with fewer, a tile keeps
                            # under 8 sums in flight, too few to hide the FMA's latency
VECTORS = 2                 # vectors of the output a row of the micro-kernel holds


@functools.cache
def vector_bytes() -> int:
    """64 where Numba compiles for AVX-512, else 32: read from the features of Numba's target
    (part of the key of its on-disk cache), so that compiled kernels and ``pack`` agree in
    every process. The AVX2 imitation (NUMBA_CPU_FEATURES=-avx512f) gets 32."""
    from numba.core.registry import cpu_target
    features = cpu_target.target_context.codegen().magic_tuple()[2]
    return 64 if "+avx512f" in features.split(",") else 32


def panel_width(dtype) -> int:
    """NR: the columns of a panel, two vectors of this dtype."""
    return VECTORS * vector_bytes() // np.dtype(dtype).itemsize


def pack(Bm):
    """Bm (K, N) -> panels (ceil(N / NR), K, NR), C-contiguous, the last zero-padded:
    panel p holds columns [p·NR, (p + 1)·NR) of Bm, row k after row k - 1."""
    K, N = Bm.shape
    nr = panel_width(Bm.dtype)
    panels = -(-N // nr)
    out = np.empty((panels, K, nr), dtype=Bm.dtype)       # written once: no zeros but the pad's
    whole = N // nr
    out[:whole] = Bm[:, :whole * nr].reshape(K, whole, nr).transpose(1, 0, 2)
    if whole < panels:
        out[whole, :, :N - whole * nr] = Bm[:, whole * nr:]
        out[whole, :, N - whole * nr:] = 0
    return out


_I64 = ir.IntType(64)


def _const(n):
    return ir.Constant(_I64, n)


def _micro_kernel(module, scalar, width, rows):
    """void f(A*, lda, Bp*, K, C*, ldc, accumulate): C[:rows, :NR] (+)= A[:rows, :K] · panel,
    strides in elements. Defined once per module (the Numba function that inlines it)."""
    kind = "f32" if isinstance(scalar, ir.FloatType) else "f64"
    name = f"bptt_packed_{kind}_{rows}x{VECTORS * width}"
    if name in module.globals:
        return module.globals[name]
    vec = ir.VectorType(scalar, width)
    ptr = scalar.as_pointer()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [ptr, _I64, ptr, _I64, ptr, _I64, ir.IntType(1)]),
                     name)
    fn.linkage = "internal"
    fn.attributes.add("alwaysinline")
    A, lda, Bp, K, C, ldc, accumulate = fn.args
    fma_name = f"llvm.fmuladd.v{width}{kind}"
    fma = module.globals.get(fma_name) or ir.Function(module, ir.FunctionType(vec, [vec, vec, vec]), fma_name)
    entry, loop, done = (fn.append_basic_block(n) for n in ("entry", "loop", "done"))
    add_to_c, store_c = fn.append_basic_block("add"), fn.append_basic_block("store")
    b = ir.IRBuilder(entry)
    zero = ir.Constant(vec, [0.0] * width)
    align = 4 if kind == "f32" else 8                    # the scalar's: rows need not be aligned
    b.cbranch(b.icmp_signed(">", K, _const(0)), loop, done)

    b.position_at_end(loop)
    k = b.phi(_I64)
    k.add_incoming(_const(0), entry)
    acc = [[b.phi(vec) for _ in range(VECTORS)] for _ in range(rows)]
    panel_row = b.mul(k, _const(VECTORS * width))
    bv = [b.load(b.bitcast(b.gep(Bp, [b.add(panel_row, _const(j * width))]), vec.as_pointer()),
                 align=align) for j in range(VECTORS)]
    undef = ir.Constant(vec, ir.Undefined)
    lane0 = ir.Constant(ir.IntType(32), 0)
    splat = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)
    new = []
    for i in range(rows):
        a_ik = b.load(b.gep(A, [b.add(b.mul(_const(i), lda), k)]))
        a_vec = b.shuffle_vector(b.insert_element(undef, a_ik, lane0), undef, splat)
        new.append([b.call(fma, [a_vec, bv[j], acc[i][j]]) for j in range(VECTORS)])
    k_next = b.add(k, _const(1))
    k.add_incoming(k_next, loop)
    for i in range(rows):
        for j in range(VECTORS):
            acc[i][j].add_incoming(zero, entry)
            acc[i][j].add_incoming(new[i][j], loop)
    b.cbranch(b.icmp_signed("<", k_next, K), loop, done)

    b.position_at_end(done)
    total = [[b.phi(vec) for _ in range(VECTORS)] for _ in range(rows)]
    for i in range(rows):
        for j in range(VECTORS):
            total[i][j].add_incoming(zero, entry)
            total[i][j].add_incoming(new[i][j], loop)
    b.cbranch(accumulate, add_to_c, store_c)
    for block, add in ((add_to_c, True), (store_c, False)):
        b.position_at_end(block)
        for i in range(rows):
            for j in range(VECTORS):
                p = b.bitcast(b.gep(C, [b.add(b.mul(_const(i), ldc), _const(j * width))]), vec.as_pointer())
                value = b.fadd(b.load(p, align=align), total[i][j]) if add else total[i][j]
                b.store(value, p, align=align)
        b.ret_void()
    return fn


@intrinsic
def _tile(typingctx, A, a_off, lda, Bp, b_off, K, C, c_off, ldc, rows, accumulate):
    """C[c_off + i·ldc + j] (+)= Σ_k A[a_off + i·lda + k] · Bp[b_off + k·NR + j] for
    i < rows (1 to MR) and j < NR: one micro-kernel call on the arrays' data."""
    sig = types.void(A, types.int64, types.int64, Bp, types.int64, types.int64, C, types.int64,
                     types.int64, types.int64, types.boolean)

    def codegen(context, builder, signature, args):
        A_, a_off_, lda_, Bp_, b_off_, K_, C_, c_off_, ldc_, rows_, accumulate_ = args
        scalar = context.get_value_type(signature.args[0].dtype)
        width = vector_bytes() // (4 if signature.args[0].dtype == types.float32 else 8)

        def at(position, offset):
            array = context.make_array(signature.args[position])(context, builder, args[position])
            return builder.gep(array.data, [offset])
        a, bp, c = at(0, a_off_), at(3, b_off_), at(6, c_off_)
        flag = builder.trunc(accumulate_, ir.IntType(1)) if accumulate_.type != ir.IntType(1) else accumulate_
        for m in range(1, MR + 1):
            with builder.if_then(builder.icmp_signed("==", rows_, _const(m))):
                builder.call(_micro_kernel(builder.module, scalar, width, m), [a, lda_, bp, K_, c, ldc_, flag])
        return context.get_dummy_value()
    return sig, codegen


_jit = njit(fastmath=True, error_model="numpy", cache=True, nogil=True)


KC = 256                  # the k-block: 16 KiB of a 256-bit panel, 32 KiB of a 512-bit one (the
                          # same KC on both: the same sums, so the same bits)


@_jit
def times_packed(a, Bp, out, lo, hi, tile):
    """out[:, lo:hi] = a · Bm[:, lo:hi] for Bp = pack(Bm); a (M, K) and out (M, N) with
    contiguous rows (any row stride), tile (MR, NR) scratch for panels that [lo, hi)
    covers only in part. One thread; the loops give each thread its own [lo, hi)."""
    M, K = a.shape
    nr = Bp.shape[2]
    lda = a.strides[0] // a.itemsize
    ldo = out.strides[0] // out.itemsize
    tiles = -(-M // MR)
    for p in range(lo // nr, -(-hi // nr)):
        j0 = p * nr
        first, j1 = max(j0, lo), min(j0 + nr, hi)
        if first == j0 and j1 == j0 + nr:
            # A whole panel, K in blocks of KC: the block of the panel (KC·NR values,
            # 16 KiB) stays in L1 while every tile of rows runs over it.
            for k0 in range(0, max(K, 1), KC):
                i0 = 0
                for n in range(tiles):
                    rows = _tile_rows(M, tiles, n)
                    _tile(a, i0 * lda + k0, lda, Bp, (p * K + k0) * nr, min(KC, K - k0),
                          out, i0 * ldo + j0, ldo, rows, k0 > 0)
                    i0 += rows
        else:
            # A panel in part: each tile of rows into the scratch tile over the whole of
            # K, then the columns wanted.
            i0 = 0
            for n in range(tiles):
                rows = _tile_rows(M, tiles, n)
                for k0 in range(0, max(K, 1), KC):
                    _tile(a, i0 * lda + k0, lda, Bp, (p * K + k0) * nr, min(KC, K - k0),
                          tile, 0, nr, rows, k0 > 0)
                for i in range(rows):
                    for j in range(first, j1):
                        out[i0 + i, j] = tile[i, j - j0]
                i0 += rows


@_jit
def _tile_rows(M, tiles, n):
    """Rows of tile n: M spread evenly (32 = 6+6+5+5+5+5, not 6·5 + 2), since a tile of
    one or two rows has too few independent sums to hide the FMA's latency."""
    return M // tiles + (1 if n < M % tiles else 0)
