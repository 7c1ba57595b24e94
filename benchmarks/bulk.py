"""The weight-gradient product dᵀ · rows two ways, in the trainer: C-ordered operands with
blocked transposes against BLAS's product with a transposed operand.

After the time loop each layer forms ∂W = Σ_t δ_tᵀ x_t as one product of d (N, G·H), the
gate gradients of all N = T·B rows, with rows (N, K) (backends/bulk.py's t_times). On one
BLAS thread with a kernel short of AVX-512 t_times copies both transposes in blocks and
multiplies C-ordered operands, (rowsᵀ · d)ᵀ; otherwise it lets BLAS read dᵀ in place. A
product timed alone, warmed up, in a process of its own, can favour one form where the
trainer favours the other (OpenBLAS's speed at these shapes depends on what the process
ran before and on the thread beside it), so this script measures the choice where it
matters: `bptt train`'s updates/s for the default job and the 2-layer LSTM of 256 run as
two halves of the batch (``--threads 2``, BLAS on one thread), each form in processes of
its own (one process per round and form, alternating), the median over rounds. The last
column names the form t_times takes here.

    python benchmarks/bulk.py
    python benchmarks/bulk.py --rounds 5 --updates 20
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import recorded, stamp

JOBS = {"default": dict(hidden=128, layers=1), "large": dict(hidden=256, layers=2)}
FORMS = ("blocked", "transposed operand")


def child(form, job, updates):
    """One process: updates/s of Trainer.update for ``job`` with ``form`` of t_times."""
    import tempfile

    import bptt  # noqa: F401  (before NumPy: bptt shortens OpenBLAS's idle spin)
    import numpy as np

    from bptt.backends.bulk import transposed
    from bptt.cells import compiled, head
    from bptt.train.config import Config
    from bptt.train.trainer import Trainer
    if form == "blocked":
        compiled.t_times = head.t_times = lambda d, rows: transposed(transposed(np.ascontiguousarray(rows)) @ d)
    else:
        compiled.t_times = head.t_times = lambda d, rows: d.T @ rows
    with tempfile.TemporaryDirectory(prefix="bptt-bulk-") as out:
        trainer = Trainer(Config(**JOBS[job], threads=2, out=out))
        for _ in range(3):
            trainer.update()
        t0 = time.perf_counter()
        for _ in range(updates):
            trainer.update()
        print(updates / (time.perf_counter() - t0))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="processes a form, alternating (default: 3)")
    parser.add_argument("--updates", type=int, default=None, help="updates a process (default: 40, large 12)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], int(args.child[2]))
    print(stamp())
    from bptt.backends import settings
    takes = "transposed operand" if settings.blas_has_avx512_kernel() else "blocked"
    print("| job | blocked, updates/s | transposed operand, updates/s | blocked / transposed "
          "(median of the rounds' ratios) | t_times takes on one BLAS thread |")
    print("|---|---:|---:|---:|---|")
    for job in JOBS:
        updates = args.updates or (12 if job == "large" else 40)
        rates = {form: [] for form in FORMS}
        for r in range(args.rounds):
            for form in FORMS if r % 2 == 0 else FORMS[::-1]:
                out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", form, job, str(updates)],
                                     capture_output=True, text=True, check=True).stdout
                rates[form].append(float(out.strip().splitlines()[-1]))
        ratios = [a / b for a, b in zip(*rates.values())]
        blocked, plain = (statistics.median(v) for v in rates.values())
        print(f"| {job}: LSTM {JOBS[job]['layers']}×{JOBS[job]['hidden']} | {blocked:.2f} | {plain:.2f} | "
              f"{statistics.median(ratios):.2f} | {takes} |", flush=True)


if __name__ == "__main__":
    if "--child" in sys.argv:
        main()
    else:
        with recorded(__file__):
            main()
