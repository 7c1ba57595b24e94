"""What dropout and zoneout cost: a training pass of a 2-layer model with each kind of
noise against the same pass without, and PyTorch's between-layer dropout against its own.

One pass is ``Model.gradients`` on a (T, B) batch of float32 inputs with a loss at every
step, masks drawn inside the timed call as the trainer draws them (bptt/dropout.py). The
PyTorch side is nn.LSTM/GRU/RNN(num_layers=2) + nn.Linear + MSE, forward and backward,
in training mode with ``dropout=p`` and without. Each variant is timed in blocks, the
variants taking turns round by round (this machine's speed drifts); the table gives the
least of the rounds' medians and each variant's ratio to the plain pass of its library.

    python benchmarks/dropout.py                  # LSTM, GRU and RNN at two shapes
    python benchmarks/dropout.py --quick --cells lstm
"""
from __future__ import annotations

import bptt  # noqa: F401  (before NumPy: bptt shortens OpenBLAS's idle spin, backends/settings.py)

import argparse

import numpy as np
import torch

from machine import block_time, recorded, stamp

SHAPES = [(100, 32, 64, 128), (100, 64, 128, 256)]
P = 0.25
VARIANTS = {"plain": {}, "dropout": dict(dropout=P), "input": dict(input_dropout=P),
            "recurrent": dict(recurrent_dropout=P), "zoneout": dict(zoneout=P),
            "all four": dict(dropout=P, input_dropout=P, recurrent_dropout=P, zoneout=P)}
TORCH = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def passes(cell, T, B, D, H):
    """{variant: a callable running one training pass}, bptt's and PyTorch's."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    y = rng.standard_normal((T, B, 1)).astype(np.float32)
    runs = {}
    for name, rates in VARIANTS.items():
        model = bptt.Model(cell, D, H, 1, num_layers=2, seed=0, **rates)
        draw = np.random.default_rng(1)
        runs[f"bptt {name}"] = (lambda m=model, g=draw: m.gradients(x, y, masks=m.draw_masks(T, B, g),
                                                                    input_grad=False))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for name, p in (("plain", 0.0), ("dropout", P)):
        torch.manual_seed(0)
        rnn, head = TORCH[cell](D, H, num_layers=2, dropout=p), torch.nn.Linear(H, 1)
        rnn.train()

        def step(rnn=rnn, head=head):
            out, _ = rnn(xt)
            loss = torch.nn.functional.mse_loss(head(out), yt)
            loss.backward()
        runs[f"torch {name}"] = step
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter blocks (noisier)")
    parser.add_argument("--cells", default="lstm,gru,rnn", help="comma-separated: rnn, lstm, gru")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of blocks; the least median is kept (default: 3)")
    args = parser.parse_args()
    min_block_s, blocks = (0.2, 3) if args.quick else (0.4, 5)
    print(f"# a training pass of 2 layers, float32, rate p = {P}: ms, and the ratio to the plain pass")
    print(stamp())
    print(f"# torch threads {torch.get_num_threads()}")
    names = [f"bptt {v}" for v in VARIANTS] + ["torch plain", "torch dropout"]
    print("| cell | T, B, D, H | " + " | ".join(names) + " |")
    print("|---|---|" + "---:|" * len(names))
    for cell in args.cells.split(","):
        for T, B, D, H in SHAPES:
            runs = passes(cell, T, B, D, H)
            best = {k: float("inf") for k in runs}
            for _ in range(args.rounds):
                for k, fn in runs.items():
                    best[k] = min(best[k], block_time(fn, min_block_s, blocks))
            cells = []
            for k in names:
                base = best["bptt plain" if k.startswith("bptt") else "torch plain"]
                cells.append(f"{1e3 * best[k]:.1f}" + ("" if k.endswith("plain") else f" ({best[k] / base:.2f}×)"))
            print(f"| {cell} | {T}, {B}, {D}, {H} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    with recorded(__file__):
        main()
