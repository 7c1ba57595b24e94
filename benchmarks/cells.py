"""Forward+backward time of bptt's RNN, LSTM and GRU layers vs torch.nn.RNN/LSTM/GRU.

Both sides run in this process, float32, with the same number of threads, on the same
inputs: one layer, an initial state, the gradient of every output given (dh), and the
gradients with respect to every weight and the initial state computed — a training
step. ``--input-grad`` also asks both sides for ∂L/∂x. Each side is timed as
a block of repeats after a short pause, never alternating call by call: on 2 cores one
library's idle worker threads spin and steal the other's second core.

    python benchmarks/cells.py                 # five shapes, from one sequence to large batches
    python benchmarks/cells.py --quick         # fewer repeats
    python benchmarks/cells.py --shapes 100,32,64,128

Prints one table: times in ms (the least of three rounds' medians of blocks; each round
times the two sides one after the other) for bptt's layer (the compiled loop,
cells/compiled.py) and PyTorch; their ratio (< 1 means faster), the median over the rounds
of the ratio within a round, since this machine's speed drifts; the achieved GFLOP/s of
each side's pass (GEMM flops: 2·T·B·G·H·(3H + 3D), less 2·T·B·G·H·D without ∂L/∂x, the
same count for both); and the memory each side stores for the backward pass (bptt's tape
without the input x and the initial state; PyTorch's saved tensors, found with autograd's
saved-tensor hooks, without parameters, x and h0). Under the table, for the largest
shape: each side's rate as a share of the float32 GEMM rate NumPy reaches (1024³,
measured before and after in the same run, the larger taken; bptt's also against the rate
measured in each round right after its pass, since the machine's speed drifts), and the
share bptt would need to take 0.85× PyTorch's time.
"""
from __future__ import annotations

import bptt  # noqa: F401  (before NumPy: bptt shortens OpenBLAS's idle spin, backends/settings.py)

import argparse
import contextlib
import statistics
from typing import NamedTuple

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from bptt.backends import loop_threads, settings
from bptt.cells import layer as cell_layer
from machine import block_time, cores, recorded, stamp

SHAPES = [(25, 1, 65, 100), (100, 32, 64, 128), (100, 64, 128, 256), (200, 32, 128, 512), (1000, 16, 32, 128)]
TORCH = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
ROUNDS = 3


class Pair(NamedTuple):
    """One layer of ours and PyTorch's with the same weights, inputs, state0 and dh."""
    layer: object
    params: dict
    x: np.ndarray
    dh: np.ndarray
    state0: tuple
    ref: object
    xt: object
    s0t: object
    ours: object                          # () -> our forward + backward
    theirs: object                        # () -> PyTorch's forward + backward


def make_pair(cell, T, B, D, H, input_grad=False) -> Pair:
    torch.manual_seed(0)
    ref = TORCH[cell](D, H)
    layer = cell_layer(cell)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    dh = rng.standard_normal((T, B, H)).astype(np.float32)
    h0 = np.zeros((B, H), np.float32)
    params = {"W_x": ref.weight_ih_l0.detach().numpy().copy(), "W_h": ref.weight_hh_l0.detach().numpy().copy()}
    b_ih, b_hh = ref.bias_ih_l0.detach().numpy(), ref.bias_hh_l0.detach().numpy()
    if cell == "gru":
        params["b_h"] = np.concatenate([b_ih[:2 * H] + b_hh[:2 * H], b_ih[2 * H:]])
        params["b_hn"] = b_hh[2 * H:].copy()
    else:
        params["b_h"] = b_ih + b_hh
    state0 = (h0, h0.copy()) if cell == "lstm" else (h0,)

    def ours():
        h, _, tape = layer.forward(params, x, state0)
        return layer.backward(params, dh, None, tape, need_dx=input_grad)

    xt = torch.tensor(x, requires_grad=input_grad)
    dht = torch.tensor(dh)
    h0t = torch.zeros(1, B, H, requires_grad=True)
    s0t = (h0t, torch.zeros(1, B, H, requires_grad=True)) if cell == "lstm" else h0t

    def theirs():
        ref.zero_grad(set_to_none=True)
        out, _ = ref(xt, s0t)
        out.backward(dht)

    return Pair(layer, params, x, dh, state0, ref, xt, s0t, ours, theirs)


def bench_shape(cell, T, B, D, H, min_block_s, blocks, input_grad, measure_rate=False):
    layer, params, x, dh, state0, ref, xt, s0t, ours, theirs = make_pair(cell, T, B, D, H, input_grad)
    # The same numbers first: a benchmark of a wrong result measures nothing.
    h, _, tape = layer.forward(params, x, state0)
    with torch.no_grad():
        out, _ = ref(xt, s0t)
    err = float(np.abs(h - out.numpy()).max())
    tape_mib = tape_bytes(tape) / 2 ** 20
    torch_mib = torch_saved_mib(ref, xt, s0t)
    times = {"ours": [], "torch": []}
    rates = []
    for _ in range(ROUNDS):
        times["ours"].append(block_time(ours, min_block_s, blocks))
        if measure_rate:                  # the GEMM rate of this round, right after our pass
            rates.append(gemm_rate(min_block_s=min_block_s / 2))
        times["torch"].append(block_time(theirs, min_block_s, blocks))
    G = layer.GATES
    flops = 2.0 * T * B * G * H * (3 * H + (3 if input_grad else 2) * D)
    best = {k: min(v) for k, v in times.items()}
    # The machine's speed drifts between rounds; a ratio is taken within each round.
    ratio = statistics.median(a / b for a, b in zip(times["ours"], times["torch"]))
    share = statistics.median(flops / t / 1e9 / r for t, r in zip(times["ours"], rates)) if rates else None
    return best, ratio, flops / best["ours"] / 1e9, flops / best["torch"] / 1e9, err, tape_mib, torch_mib, share


def tape_bytes(tape) -> int:
    """Bytes of the arrays bptt's tape keeps for the backward pass, less the input x and the
    initial state; an array held under two fields (``fresh`` is ``slab`` without zoneout)
    counted once."""
    arrays = {id(v): v for k, v in tape._asdict().items()
              if isinstance(v, np.ndarray) and k not in ("x", "start", "mask", "resets")}
    return sum(v.nbytes for v in arrays.values())


def torch_saved_mib(ref, xt, s0t):
    """MiB of the tensors PyTorch's autograd saves for backward, less parameters and inputs."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ref(xt, s0t)
    inputs = list(ref.parameters()) + [xt] + list(s0t if isinstance(s0t, tuple) else (s0t,))
    skip = {t.untyped_storage().data_ptr() for t in inputs}
    return sum(n for ptr, n in storages.items() if ptr not in skip) / 2 ** 20


def gemm_rate(n=1024, min_block_s=0.5):
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.copy()
    t = block_time(lambda: a @ b, min_block_s, 3)
    return 2.0 * n ** 3 / t / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter blocks (noisier)")
    parser.add_argument("--cells", default="rnn,lstm,gru", help="comma-separated: rnn, lstm, gru")
    parser.add_argument("--shapes", nargs="*", help="T,B,D,H tuples")
    parser.add_argument("--threads", type=int, default=cores(),
                        help="threads of each side (default: the cores this process may use)")
    parser.add_argument("--input-grad", action="store_true", help="also compute ∂L/∂x on both sides")
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split(",") if v.strip().isdigit()) for s in args.shapes or []]
    if not set(args.cells.split(",")) <= {"rnn", "lstm", "gru"} or any(len(s) != 4 or 0 in s for s in shapes) \
            or args.threads < 1:
        parser.error(f"expected --cells from rnn, lstm, gru, --shapes of four positive T,B,D,H and --threads >= 1; "
                     f"got --cells {args.cells} --shapes {' '.join(args.shapes or [])} --threads {args.threads}")
    kept = settings.keep_freed_memory()        # bptt's first pass would set it; here both sides have it
    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads, user_api="blas"), \
            (loop_threads.use(1) if args.threads == 1 else contextlib.nullcontext()):
        # bptt's side on the same threads as torch's: NumPy's BLAS held to --threads, and the
        # compiled loops to one thread where --threads is 1 (they use at most two)
        run(args, shapes, kept)


def run(args, shapes, kept):
    shapes = shapes or SHAPES
    min_block_s, blocks = (0.2, 3) if args.quick else (0.4, 5)

    what = "forward + backward with ∂L/∂x" if args.input_grad else "forward + backward (training step, no ∂L/∂x)"
    print(f"# {what}")
    print(stamp())
    print(f"# threads {args.threads} (torch, NumPy's BLAS; bptt's loops at most {loop_threads.wanted()})")
    print(f"# malloc: {f'glibc keeps {kept >> 20} MiB of freed memory (both sides)' if kept else 'defaults'}")
    before = gemm_rate()
    print(f"# NumPy float32 GEMM (1024³): {before:.0f} GFLOP/s")
    print("| cell | T, B, D, H | bptt ms | torch ms | bptt/torch | GFLOP/s bptt | torch "
          "| tape MiB bptt | torch | max |Δh| |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    largest = max(shapes, key=lambda s: s[0] * s[1] * s[3] * (s[2] + s[3]))
    for cell in args.cells.split(","):
        for T, B, D, H in shapes:
            t, ratio, gflops, torch_gflops, err, ours_mib, torch_mib, share = bench_shape(
                cell, T, B, D, H, min_block_s, blocks, args.input_grad, measure_rate=(T, B, D, H) == largest)
            rows.append((cell, (T, B, D, H), gflops, torch_gflops, share))
            print(f"| {cell} | {T}, {B}, {D}, {H} | {1e3 * t['ours']:.2f} | {1e3 * t['torch']:.2f} | "
                  f"{ratio:.2f} | {gflops:.1f} | {torch_gflops:.1f} | {ours_mib:.2f} | {torch_mib:.2f} | {err:.1e} |",
                  flush=True)
    after = gemm_rate()
    rate = max(before, after)
    print(f"# GEMM after the runs: {after:.0f} GFLOP/s")
    for cell, shape, gflops, torch_gflops, share in rows:
        if shape == largest:
            print(f"# {cell} at {shape}: {gflops:.1f} GFLOP/s = {100 * gflops / rate:.0f}% of the GEMM rate ({rate:.0f}); "
                  f"within each round, against that round's GEMM rate: {100 * share:.0f}% (median of {ROUNDS}); "
                  f"torch {100 * torch_gflops / rate:.0f}%, so bptt at 0.85× torch's time would need "
                  f"{100 * torch_gflops / 0.85 / rate:.0f}%")

if __name__ == "__main__":
    with recorded(__file__):
        main()
