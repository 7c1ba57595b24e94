"""A training process killed with SIGKILL at random moments, resumed each time, ends with
parameters bit for bit equal to a run that was never interrupted."""
import random
import signal
import subprocess
import sys
import time

import numpy as np
from safetensors.numpy import load_file

from bptt.train import runs

BPTT = [sys.executable, "-m", "bptt"]
ARGS = ["train", "--task", "adding", "--seq-len", "20", "--hidden", "16", "--batch", "16", "--steps", "400",
        "--checkpoint-every", "25", "--eval-every", "100", "--dtype", "float64", "--quiet"]


def final_params(run_dir):
    arrays = load_file(str(run_dir / "ckpt-00000400.safetensors"))
    return {k: v for k, v in arrays.items() if k.startswith(("param.", "optim."))}


def newest_step(run_dir):
    found = runs.checkpoints(run_dir)
    return int(found[-1].stem.split("-")[1]) if found else -1


def test_sigkill_at_random_moments_then_resume_is_bit_for_bit(tmp_path):
    reference = subprocess.run(BPTT + ARGS + ["--out", str(tmp_path / "ref")], capture_output=True, timeout=300)
    assert reference.returncode == 0
    run_dir = tmp_path / "killed"
    rng = random.Random(2026)
    proc = subprocess.Popen(BPTT + ARGS + ["--out", str(run_dir)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    kills, kill_steps = 0, []
    try:
        while kills < 3:
            seen = newest_step(run_dir)
            deadline = time.monotonic() + 120
            while newest_step(run_dir) == seen and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)                      # wait for progress: a new checkpoint
            if proc.poll() is not None:
                break
            time.sleep(rng.uniform(0.0, 0.25))        # then a random moment, a checkpoint write included
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            kill_steps.append(newest_step(run_dir))
            proc = subprocess.Popen(BPTT + ["resume", str(run_dir), "--quiet"], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        assert proc.wait(timeout=300) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert kills == 3, kill_steps
    ours, ref = final_params(run_dir), final_params(tmp_path / "ref")
    assert ours.keys() == ref.keys()
    for k in ref:
        assert np.array_equal(ours[k], ref[k]), k
