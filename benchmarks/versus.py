"""bptt against an earlier revision of itself: the same layers and training jobs timed on
the code of both, in alternating processes on one machine.

git exports REV's ``src/`` to a temporary folder. Each round runs one process on REV's
code and one on this checkout's (PYTHONPATH; REV's loops in a cache of their own), the
order alternating from round to round; a process first checks that its code is the one
asked for, then times every case as blocks of repeats: forward + backward of one layer
(RNN, LSTM, GRU; float32, cells.py's five shapes (T, B, D, H), the same weights and
inputs on both sides, no ∂L/∂x) and ``Trainer.update`` of `bptt train`'s default job and
of a 2-layer LSTM of 256 (what train.py times). A first process per side, not timed,
compiles its loops. The ratio of the times, this checkout's ÷ REV's, is taken within each
round and its median reported: below 1, this checkout is faster.

    python benchmarks/versus.py --rev 33f7ea7            # a revision with time loops written per cell
    python benchmarks/versus.py --rev HEAD~1 --rounds 5
    python benchmarks/versus.py --rev 33f7ea7 --cases lstm train
    python benchmarks/versus.py --rev 33f7ea7 --cases lstm --shapes 25,1,65,100
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHAPES = [(25, 1, 65, 100), (100, 32, 64, 128), (100, 64, 128, 256), (200, 32, 128, 512), (1000, 16, 32, 128)]
JOBS = {"default": dict(hidden=128, layers=1), "large": dict(hidden=256, layers=2)}
CELLS = ("rnn", "lstm", "gru")


def layer_case(cell, T, B, D, H):
    """() -> one forward + backward of the layer ``cell`` on fixed inputs, in either engine."""
    import numpy as np
    try:
        from bptt.cells import layer
        ours = layer(cell)
    except ImportError:                                       # an engine with a module per cell
        from bptt.cells import CELLS as BY_NAME
        ours = BY_NAME[cell]
    rng = np.random.default_rng(0)
    params = {k: (rng.standard_normal(shape) / np.sqrt(H)).astype(np.float32)
              for k, shape in ours.param_shapes(D, H).items()}
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    dh = rng.standard_normal((T, B, H)).astype(np.float32)
    state0 = tuple(np.zeros((B, H), np.float32) for _ in ours.STATE)

    def run():
        h, _, tape = ours.forward(params, x, state0)
        return ours.backward(params, dh, None, tape, need_dx=False)
    return run


def child(cases, expected_src):
    import bptt
    if Path(bptt.__file__).resolve().parents[1] != Path(expected_src).resolve():
        raise SystemExit(f"child: bptt imported from {bptt.__file__}, expected it under {expected_src}")
    from machine import block_time
    times = {}
    for case in cases:
        kind, _, rest = case.partition(":")
        if kind == "train":
            try:
                from bptt.train.config import Config
                from bptt.train.trainer import Trainer
            except ImportError as exc:
                raise SystemExit(f"--cases train: the code under {expected_src} has no trainer to time ({exc})")
            with tempfile.TemporaryDirectory(prefix="bptt-versus-") as out:
                trainer = Trainer(Config(**JOBS[rest], out=out))
                times[case] = block_time(trainer.update, 0.6, 3)
        else:
            times[case] = block_time(layer_case(kind, *map(int, rest.split(","))), 0.25, 3)
    print(json.dumps(times))


def run_side(src, cache, cases):
    env = os.environ | {"PYTHONPATH": str(src)} | ({"BPTT_CACHE_DIR": str(cache)} if cache else {})
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(src), *cases],
                          env=env, capture_output=True, text=True)
    if done.returncode:
        last = done.stderr.strip().splitlines()[-1:] or ["(no message)"]
        raise SystemExit(f"the process on {src} failed: {last[0]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def export(rev, into):
    """REV's src/ under ``into`` (git archive), or a SystemExit naming the revision."""
    into.mkdir(parents=True)
    archive = into / "src.tar"
    done = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), rev, "src"],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"--rev: git cannot export src/ at {rev!r}: {done.stderr.strip()}")
    with tarfile.open(archive) as tar:               # "data": the safe filter, where this Python has it
        tar.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return into / "src"


def git(*args):
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()


def shape(text):
    """"T,B,D,H" -> four positive integers, for argparse."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected T,B,D,H, four positive integers, got {text!r}")
    return values


def label(case):
    kind, _, rest = case.partition(":")
    if kind == "train":
        return f"Trainer.update, {rest}: LSTM {JOBS[rest]['layers']}×{JOBS[rest]['hidden']}"
    return f"{kind} ({rest})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", help="the git revision to compare with (a commit, tag or HEAD~N)")
    parser.add_argument("--rounds", type=int, default=3, help="processes a side, alternating (default: 3)")
    parser.add_argument("--cases", nargs="+", choices=(*CELLS, "train"), default=(*CELLS, "train"),
                        help="which cases to time (default: all)")
    parser.add_argument("--shapes", nargs="+", type=shape, default=SHAPES, metavar="T,B,D,H",
                        help="the layers' shapes (default: cells.py's five)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[1:], args.child[0])
    if not args.rev:
        parser.error("--rev: expected a git revision to compare with, got none")
    if args.rounds < 1:
        parser.error(f"--rounds: expected a positive number of rounds, got {args.rounds}")
    from machine import stamp
    cases = [f"{c}:{','.join(map(str, s))}" for c in CELLS if c in args.cases for s in args.shapes]
    cases += [f"train:{job}" for job in JOBS if "train" in args.cases]
    revision = git("rev-parse", "--short", f"{args.rev}^{{commit}}") or args.rev
    changed = ", with uncommitted changes to src/" if git("status", "--porcelain", "src") else ""
    print(stamp())
    print(f"# this checkout ({git('rev-parse', '--short', 'HEAD')}{changed}) against {revision} · float32 · "
          f"rounds: {args.rounds}")
    with tempfile.TemporaryDirectory(prefix="bptt-versus-") as scratch:
        scratch = Path(scratch)
        sides = {"rev": (export(args.rev, scratch / "rev"), scratch / "cache-rev"),
                 "now": (ROOT / "src", None)}                 # this checkout's loops: the usual cache
        for src, cache in sides.values():                     # compiles each side's loops, not timed
            run_side(src, cache, cases)
        times = {side: [] for side in sides}
        for r in range(args.rounds):
            for side in (("rev", "now") if r % 2 == 0 else ("now", "rev")):
                times[side].append(run_side(*sides[side], cases))
    print(f"| case: layer (T, B, D, H), or training job | {revision}, ms | this checkout, ms | "
          f"this ÷ {revision} (median of the rounds') |")
    print("|---|---:|---:|---:|")
    for case in cases:
        at_rev = [t[case] * 1e3 for t in times["rev"]]
        here = [t[case] * 1e3 for t in times["now"]]
        ratio = statistics.median(n / b for n, b in zip(here, at_rev))
        print(f"| {label(case)} | {statistics.median(at_rev):.2f} | {statistics.median(here):.2f} | {ratio:.2f} |",
              flush=True)


if __name__ == "__main__":
    if "--child" in sys.argv:
        main()
    else:
        sys.path.insert(0, str(HERE))
        from machine import recorded
        with recorded(__file__):
            main()
