"""Online gradient estimates against the exact gradient: how close, how noisy, how costly.

For a tanh RNN, an LSTM and a GRU (one layer of H units) on the adding problem (T steps,
the loss at the last one), at initialisation and after BPTT training (Adam), each method
of bptt.through_time.online estimates the gradient of N sequences one at a time. The
table gives, over the recurrent parameters (the head's gradient is exact in every method):
the cosine between estimate and exact gradient (mean and standard deviation over the N
sequences), the relative error ‖ĝ − g‖/‖g‖ (its mean), the relative variance of the random
methods (UORO, KF-RTRL) E‖ĝ − E ĝ‖²/‖g‖² over 8 draws on each of 10 sequences (the
others are deterministic: 0), the time per step of a batch of B
sequences against full BPTT's (`Model.loss_and_grads`) on the same batch, and the values
per sequence each method keeps between steps against BPTT's tape.

    python benchmarks/online.py                      # H 16, T 20, N 50
    python benchmarks/online.py --hidden 8 --seq-len 10 --sequences 20 --cells rnn
    python benchmarks/online.py --copy               # the copy curriculum instead (below)
    python benchmarks/online.py --balancing          # the influence-balancing problem (below)

Values kept: RTRL K·n (K = S·H state values, n recurrent parameters), SnAp-n and e-prop
the entries of their pattern, UORO K + n, KF-RTRL (D + H + 1) + H², BPTT T·(S·H + G·H) (the
states and the gates' pre-activations of every step). SnAp and e-prop are computed here
on the dense influence, masked: their time is RTRL's, not that of a sparse implementation.

``--copy``: how far each method gets on the copy task with a curriculum (Graves et al.
2014's binary copy, as Menick et al. 2021 train it): L random bits, a delimiter, then the
L bits to be written back while the input is blank (T = 2L + 1, the loss on the last L
steps only). L starts at 1 and grows by one whenever the loss on a fresh batch falls below
0.15 bits per bit; the table gives the largest L reached within a fixed budget of updates
(LSTM, Adam, batch 16) and the seconds it took.

``--balancing``: Tallec & Ollivier's influence-balancing problem (through_time/balancing.py:
23 linear units, one parameter θ whose effect on the loss is positive over short horizons
and negative in the long run, θ* = −1/6), learnt online from θ = 0.5 with one plain
gradient step per step. For each method and step size, θ after --steps steps (the mean
and spread over three seeds for the random methods), or the step at which |θ| passed
1000. Truncated BPTT with a window shorter than the dependency moves θ the wrong way at
every step size; RTRL, UORO and KF-RTRL converge at step sizes small enough for their
variance. The figure (docs/images/influence_balancing.png) shows |θ − θ*| step by step at
one step size.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import bptt
from bptt import through_time as tt
from bptt.through_time import online
from bptt.through_time.rtrl import forward_mode
from bptt.train.optim import make_optimizer
from bptt.train.tasks import AddingTask
from machine import recorded, stamp

METHODS = {
    "RTRL": lambda m, B, rng: tt.ExactInfluence(m, B),
    "SnAp-1": lambda m, B, rng: online.SnAp(m, B, n=1),
    "SnAp-2": lambda m, B, rng: online.SnAp(m, B, n=2),
    "UORO": lambda m, B, rng: online.UORO(m, B, rng=rng),
    "KF-RTRL": lambda m, B, rng: online.KFRTRL(m, B, rng=rng),
    "e-prop / RFLO": lambda m, B, rng: online.Eligibility(m, B),
}
ONLY_ELMAN = {"KF-RTRL"}
DRAWN = {"UORO", "KF-RTRL"}             # random: their variance over draws on one sequence
VARIANCE_SEQUENCES, VARIANCE_DRAWS = 10, 8


def recurrent(grads):
    return np.concatenate([v.ravel() for k, v in grads.items() if not k.startswith("head.")])


def kept(method, influence, model, T):
    """Values per sequence the method carries from step to step (see the docstring)."""
    K, n = influence.K, influence.n
    if method == "RTRL":
        return K * n
    if method.startswith("SnAp"):
        return int(influence.pattern.sum())
    if method == "UORO":
        return K + n
    if method == "KF-RTRL":
        return model.input_size + model.hidden_size + 1 + model.hidden_size ** 2
    probe = online.SnAp(model, 1, n=1)              # e-prop: J^direct keeps each unit's own entries
    return int(probe.pattern.sum())


def trained(cell, H, T, updates, seed):
    task = AddingTask(T)
    model = bptt.Model(cell, hidden_size=H, dtype="float64", seed=seed, **task.model_kwargs)
    opt = make_optimizer("adam", model.params, 3e-3)
    rng = np.random.default_rng(seed)
    for _ in range(updates):
        x, y = task.batch(rng, 32, np.float64)
        _, grads, _ = model.loss_and_grads(x, y)
        opt.step(grads)
    x, y = task.batch(np.random.default_rng(seed + 1), 256, np.float64)
    return model, model.loss_value(x, y)


def compare(model, method, T, N, B, seed):
    task = AddingTask(T)
    rng = np.random.default_rng(seed)
    cosines, errors, variances = [], [], []
    draw_rng = np.random.default_rng(seed + 100)         # the draws apart: the N sequences stay the others'
    for _ in range(N):
        x, y = task.batch(rng, 1, np.float64)
        _, exact, _ = model.loss_and_grads(x, y)
        _, estimate, _ = forward_mode(lambda b: METHODS[method](model, b, rng), model, x, y)
        g, e = recurrent(exact), recurrent(estimate)
        cosines.append(float(g @ e / (np.linalg.norm(g) * np.linalg.norm(e) + 1e-300)))
        errors.append(float(np.linalg.norm(e - g) / np.linalg.norm(g)))
        if method in DRAWN and len(variances) < VARIANCE_SEQUENCES:
            draws = np.array([recurrent(forward_mode(lambda b: METHODS[method](model, b, draw_rng), model, x, y)[1])
                              for _ in range(VARIANCE_DRAWS)])
            variances.append(float(((draws - draws.mean(axis=0)) ** 2).sum(axis=1).mean() / (g @ g)))
    x, y = task.batch(rng, B, np.float64)
    t0 = time.perf_counter()
    forward_mode(lambda b: METHODS[method](model, b, rng), model, x, y)
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(5):
        model.loss_and_grads(x, y)
    bptt_seconds = (time.perf_counter() - t0) / 5
    influence = METHODS[method](model, 1, rng)
    variance = np.mean(variances) if variances else 0.0
    return (np.mean(cosines), np.std(cosines), np.mean(errors), variance, seconds / T, bptt_seconds / T,
            kept(method, influence, model, T))


def copy_batch(rng, L, B):
    """x (2L+1, B, 3): bits one-hot in channels 0-1, the delimiter in 2; targets (2L+1, B)
    the bits again on the last L steps; the loss mask marks those steps."""
    T = 2 * L + 1
    bits = rng.integers(0, 2, size=(L, B))
    x = np.zeros((T, B, 3))
    np.put_along_axis(x[:L], bits[:, :, None], 1, axis=2)
    x[L, :, 2] = 1
    targets = np.zeros((T, B), dtype=np.int64)
    targets[L + 1:] = bits
    loss_mask = np.zeros((T, B), dtype=bool)
    loss_mask[L + 1:] = True
    return x, targets, loss_mask


def curriculum(method, H, updates, seed=0, check_every=50, B=16):
    """(largest L reached, seconds) of ``method`` ("bptt" or a name of online.ESTIMATORS)."""
    model = bptt.Model("lstm", 3, H, 2, head="softmax", loss="cross_entropy", dtype="float64", seed=seed)
    opt = make_optimizer("adam", model.params, 1e-2)
    rng, L = np.random.default_rng(seed), 1
    t0 = time.perf_counter()
    for step in range(1, updates + 1):
        x, y, loss_mask = copy_batch(rng, L, B)
        if method == "bptt":
            grads = model.gradients(x, y, loss_mask=loss_mask, input_grad=False).params
        else:
            grads = online.estimate(method, model, x, y, rng, loss_mask=loss_mask)[1]
        opt.step(grads)
        if step % check_every == 0:
            x, y, loss_mask = copy_batch(np.random.default_rng(10_000 + step), L, 64)
            if model.loss_value(x, y, loss_mask=loss_mask) / np.log(2) < 0.15:
                L += 1
    return L - 1, time.perf_counter() - t0


def copy_table(args):
    print(stamp())
    print(f"# copy curriculum: LSTM H = {args.hidden}, Adam 1e-2, batch 16, {args.updates} updates; L grows by one "
          f"when a fresh batch's loss < 0.15 bits per bit")
    print("| method | largest L reached | seconds |")
    print("|---|---:|---:|")
    for method in ("bptt", "rtrl", "snap1", "snap2", "uoro", "eprop"):
        L, seconds = curriculum(method, args.hidden, args.updates)
        print(f"| {method} | {L} | {seconds:.0f} |", flush=True)


BALANCING = [("tbptt", w) for w in (1, 10, 40, 50, 100)] + [(m, None) for m in ("rtrl", "snap1", "snap2", "eprop",
                                                                                 "uoro", "kf-rtrl")]
RANDOM = {"uoro", "kf-rtrl"}


def balancing_table(args):
    from bptt.through_time.balancing import influence_balancing

    rates = (1e-4, 3e-5, 1e-5, 3e-6)
    print(stamp())
    print(f"# influence balancing: n = 23, p = 10, θ* = -1/6, θ0 = 0.5, {args.steps} steps, one update a step; "
          f"θ at the end (random methods: mean ± spread over 3 seeds), or the step at which |θ| > 1000")
    print("| method | " + " | ".join(f"lr {lr:g}" for lr in rates) + " |")
    print("|---|" + "---:|" * len(rates))
    curves = {}
    for method, window in BALANCING:
        name = f"tbptt, window {window}" if window else method
        cells = []
        for lr in rates:
            runs = [influence_balancing(method, args.steps, lr, window, rng=seed)
                    for seed in (range(3) if method in RANDOM else [0])]
            if lr == args.figure_lr:
                curves[name] = runs[0]
            diverged = [r.diverged_at for r in runs if r.diverged_at is not None]
            if diverged:
                cells.append(f"diverged at {min(diverged)}" + (f" ({len(diverged)} of {len(runs)})"
                                                                 if len(runs) > 1 else ""))
            elif len(runs) > 1:
                ends = np.array([r.theta[-1] for r in runs])
                cells.append(f"{ends.mean():.4f} ± {ends.std():.4f}")
            else:
                cells.append(f"{runs[0].theta[-1]:.4f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    if args.figure:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4))
        colors = plt.get_cmap("tab20").colors
        for i, (name, run) in enumerate(curves.items()):
            ax.semilogy(np.abs(run.theta - run.theta_star), label=name, lw=1, color=colors[(2 * i) % 20 + i // 10],
                        ls="--" if name.startswith("tbptt") else "-")
        ax.set_xlabel("step (one update each)")
        ax.set_ylabel("|θ − θ*|")
        ax.set_ylim(1e-8, 1e3)
        ax.set_title(f"influence balancing, lr {args.figure_lr:g}")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(args.figure, dpi=110)
        print(f"figure: {Path(args.figure).name}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default="rnn,lstm,gru", help="comma-separated: rnn, lstm, gru")
    parser.add_argument("--hidden", type=int, default=16, help="hidden units H (default: 16)")
    parser.add_argument("--seq-len", type=int, default=20, help="steps T of the adding problem (default: 20)")
    parser.add_argument("--sequences", type=int, default=50,
                        help="sequences the cosine and error are taken over (default: 50)")
    parser.add_argument("--batch", type=int, default=16, help="sequences in the timed batch")
    parser.add_argument("--train", type=int, default=500, help="BPTT updates before the second comparison")
    parser.add_argument("--copy", action="store_true", help="the copy curriculum instead of the comparison")
    parser.add_argument("--updates", type=int, default=1000, help="--copy: the budget of updates")
    parser.add_argument("--balancing", action="store_true", help="the influence-balancing problem instead")
    parser.add_argument("--steps", type=int, default=10_000, help="--balancing: steps of each run")
    parser.add_argument("--figure-lr", type=float, default=1e-5, help="--balancing: the step size drawn")
    parser.add_argument("--figure", default=str(Path(__file__).resolve().parents[1] / "docs" / "images" /
                                                "influence_balancing.png"), help="--balancing: the figure's path")
    args = parser.parse_args()
    if args.copy:
        return copy_table(args)
    if args.balancing:
        return balancing_table(args)
    H, T, N, B = args.hidden, args.seq_len, args.sequences, args.batch
    print(stamp())
    print(f"# adding problem, T = {T}, H = {H}, float64; cosine and error over {N} sequences; time over a batch of {B}")
    print("| cell | when | method | cosine mean | cosine std | rel. error | rel. variance | ms / step | BPTT ms / step "
          "| values kept | BPTT values |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for cell in args.cells.split(","):
        for when, updates in (("init", 0), (f"after {args.train} updates", args.train)):
            model, loss = trained(cell, H, T, updates, seed=0)
            layer = model.layer
            tape = T * (len(layer.STATE) + layer.GATES) * H
            for method in METHODS:
                if method in ONLY_ELMAN and cell != "rnn":
                    continue
                cos, spread, err, var, step_s, bptt_s, values = compare(model, method, T, N, B, seed=1)
                print(f"| {cell} | {when} (loss {loss:.3f}) | {method} | {cos:.3f} | {spread:.3f} | {err:.3f} | {var:.3g} "
                      f"| {1e3 * step_s:.2f} | {1e3 * bptt_s:.3f} | {values} | {tape} |", flush=True)


if __name__ == "__main__":
    with recorded(__file__):
        main()
