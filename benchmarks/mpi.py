"""Updates per second of data-parallel training on 1 and 2 MPI ranks, and the all-reduce's share.

    python benchmarks/mpi.py [--ranks 1 2] [--steps 200]

Runs the trainer itself (`bptt train`, no checkpoints inside the timed part) under
``mpiexec -n N`` for each N, on the same global batch, and prints updates/s, the time of
the one gradient all-reduce per update (distributed/mpi.py's own clock) and the speed-up
over one rank. Two model sizes: a small one where the all-reduce and the Python overhead
weigh, and a larger one where the compute does.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from machine import cores, recorded, stamp

CASES = {
    "lstm H=64, adding T=50, B=32": ["--task", "adding", "--cell", "lstm", "--hidden", "64", "--seq-len", "50",
                                     "--batch", "32"],
    "lstm H=256, adding T=100, B=64": ["--task", "adding", "--cell", "lstm", "--hidden", "256", "--seq-len", "100",
                                       "--batch", "64"],
}

WORKER = r"""
import json, sys, time
from bptt.train.config import Config
from bptt.train.trainer import Trainer
args = json.loads(sys.argv[1])
trainer = Trainer(Config(**args).check())
for _ in range(5):                                   # warm-up: compile, allocate
    trainer.update()
trainer.world.allreduce_seconds = 0.0
if trainer.world.comm is not None:
    trainer.world.comm.Barrier()
start = time.perf_counter()
n = args["steps"] - 5
for _ in range(n):
    trainer.update()
elapsed = time.perf_counter() - start
if trainer.world.root:
    print(json.dumps({"updates_per_s": n / elapsed, "allreduce_ms": 1e3 * trainer.world.allreduce_seconds / n,
                      "ranks": trainer.world.size}))
"""


def config_of(flags, steps, out):
    keys = dict(zip(flags[::2], flags[1::2]))
    conv = {"--task": ("task", str), "--cell": ("cell", str), "--hidden": ("hidden", int),
            "--seq-len": ("seq_len", int), "--batch": ("batch", int)}
    cfg = {conv[k][0]: conv[k][1](v) for k, v in keys.items()}
    return cfg | {"steps": steps, "out": out, "checkpoint_every": 10 ** 9, "eval_every": 10 ** 9}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="counts of MPI ranks, 1 among them")
    parser.add_argument("--steps", type=int, default=200, help="updates a run, 5 of them warm-up (default: 200)")
    args = parser.parse_args()
    if 1 not in args.ranks or min(args.ranks) < 1 or args.steps < 10:
        parser.error(f"--ranks: expected counts of ranks >= 1 including 1 (the speed-up is over one rank) and "
                     f"--steps >= 10 (5 of warm-up), got --ranks {args.ranks} --steps {args.steps}")
    args.ranks = sorted(set(args.ranks))
    mpiexec = shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable), "mpiexec")
    print(stamp())
    # the cores this process may use (its affinity, as taskset or a container's cpuset sets it), not
    # os.cpu_count(), the machine's: that oversubscribes the cores the ranks share
    print(f"# float32 · {args.steps - 5} updates timed after 5 of warm-up · BLAS threads per rank: "
          f"{cores()} // ranks")
    print("| model and task | ranks | updates/s | all-reduce ms/update | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for name, flags in CASES.items():
        base = None
        for n in args.ranks:
            with tempfile.TemporaryDirectory() as out:
                cfg = json.dumps(config_of(flags, args.steps, out))
                threads = str(max(1, cores() // n))             # one rank per core, no oversubscription
                env = os.environ | {"OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}
                cmd = ([mpiexec, "-n", str(n)] if n > 1 else []) + [sys.executable, "-c", WORKER, cfg]
                done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
                if done.returncode != 0:
                    raise SystemExit(done.stderr)
                r = json.loads(done.stdout.strip().splitlines()[-1])
                base = base or r["updates_per_s"]
                print(f"| {name} | {n} | {r['updates_per_s']:.1f} | {r['allreduce_ms']:.3f} | "
                      f"{r['updates_per_s'] / base:.2f} |", flush=True)


if __name__ == "__main__":
    with recorded(__file__):
        main()
