"""The diagnostic benchmark scripts run against the current engine (a tiny shape)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bptt.backends import mkl

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_lstm_profile_runs_and_its_parts_fit_in_the_whole(cell, tmp_path):
    env = os.environ | {"BPTT_BENCHMARK_RESULTS": str(tmp_path)}          # its table, not in benchmarks/results
    out = subprocess.run([sys.executable, "lstm_profile.py", "--shape", "4,2,3,5", "--cell", cell],
                         cwd=ROOT / "benchmarks", capture_output=True, text=True, check=True, env=env).stdout
    assert len(list(tmp_path.rglob("lstm_profile--shape-4,2,3,5-cell-*.md"))) == 1
    ms = {m[1]: float(m[2]) for m in re.finditer(r"^\s*(\S.*?)\s+([\d.]+) ms", out, re.M)}
    assert {"forward", "backward", "forward loop", "input projection", "backward loop", "∂W products"} <= set(ms), out
    # each block's parts lie inside its whole, so their medians do too
    assert ms["forward loop"] <= ms["forward"] and ms["backward loop"] <= ms["backward"]


def test_the_stamp_names_an_imitation_and_a_numba_target_that_keeps_avx512():
    """The AVX2 imitation is named in every stamp; on an AVX-512 CPU, NUMBA_CPU_NAME=haswell
    without NUMBA_CPU_FEATURES leaves Numba compiling 512-bit code, and the stamp says so."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from machine import imitation
    finally:
        sys.path.pop(0)
    avx512, avx2 = {"avx2", "avx512f"}, {"avx2"}
    assert imitation(avx512, {}) == ""
    half = imitation(avx512, {"NUMBA_CPU_NAME": "haswell", "OPENBLAS_CORETYPE": "Haswell"})
    assert half.startswith(" (imitating: OPENBLAS_CORETYPE=Haswell, NUMBA_CPU_NAME=haswell; Numba still") \
        and "NUMBA_CPU_FEATURES=-avx512f" in half
    whole = imitation(avx512, {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "-avx512f"})
    assert whole == " (imitating: NUMBA_CPU_NAME=haswell, NUMBA_CPU_FEATURES=-avx512f)"
    assert "Numba still" not in imitation(avx2, {"NUMBA_CPU_NAME": "haswell"})


def test_versus_times_an_earlier_revision_beside_this_checkout(tmp_path):
    """Both sides run their own code (each child checks where bptt came from) and the table
    gives each side's time and their ratio; a revision git does not know is one line."""
    env = os.environ | {"BPTT_BENCHMARK_RESULTS": str(tmp_path)}
    out = subprocess.run([sys.executable, "versus.py", "--rev", "HEAD", "--rounds", "1", "--cases", "rnn",
                          "--shapes", "4,2,3,5"], cwd=ROOT / "benchmarks", capture_output=True, text=True,
                         check=True, env=env).stdout
    row = re.search(r"^\| rnn \(4,2,3,5\) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", out, re.M)
    assert row and float(row[1]) > 0 and float(row[2]) > 0 and 0.2 < float(row[3]) < 5, out
    assert len(list(tmp_path.rglob("versus--rev-HEAD-*.md"))) == 1
    bad = subprocess.run([sys.executable, "versus.py", "--rev", "no-such-revision"], cwd=ROOT / "benchmarks",
                         capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "--rev: git cannot export src/ at 'no-such-revision'" in bad.stderr
    shape = subprocess.run([sys.executable, "versus.py", "--rev", "HEAD", "--shapes", "4,2,3"],
                           cwd=ROOT / "benchmarks", capture_output=True, text=True, env=env)
    assert shape.returncode == 2 and "expected T,B,D,H, four positive integers, got '4,2,3'" in shape.stderr


def test_gemm_libraries_times_each_library_at_the_same_product(tmp_path):
    """Every library's product agrees with float64 to float32 rounding (the table compares
    the same products) and each rate is a positive figure."""
    env = os.environ | {"BPTT_BENCHMARK_RESULTS": str(tmp_path)}
    out = subprocess.run([sys.executable, "gemm_libraries.py", "--shape", "4,2,3,5", "--square", "16",
                          "--block-s", "0.01"], cwd=ROOT / "benchmarks", capture_output=True, text=True,
                         check=True, env=env).stdout
    rows = re.findall(r"^\| (16³|x W_xᵀ \(8, 3\) x \(3, 20\)|dvᵀ h \(20, 8\) x \(8, 5\)) \|(.*)\|$", out, re.M)
    assert len(rows) == 3, out
    for _, cells in rows:
        figures = [float(c) for c in cells.split("|") if c.strip()]      # oneMKL's cell is empty without it
        assert len(figures) == (7 if mkl.library_path() else 6), out
        assert all(f >= 0 for f in figures[:-1]) and figures[-1] < 1e-6, out       # tiny products: 0.0 GFLOP/s
    assert len(list(tmp_path.rglob("gemm_libraries--shape-4,2,3,5-*.md"))) == 1
    bad = subprocess.run([sys.executable, "gemm_libraries.py", "--shape", "0,2,3,5"], cwd=ROOT / "benchmarks",
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "--shape: expected T,B,D,H, four positive integers, got '0,2,3,5'" in bad.stderr


def _stub(tmp_path, nvidia_smi_rc=0, pytest_out="3 passed", pytest_rc=0):
    """A PATH whose nvidia-smi and python3 stand in for a GPU machine's: python3 -c (the
    CuPy check) passes, python3 -m pytest prints ``pytest_out``, python3 benchmarks/gpu.py
    writes a figure."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "nvidia-smi").write_text(f"#!/bin/sh\necho 'Stub GPU, 0.0, 1 MiB'\nexit {nvidia_smi_rc}\n")
    (bin_ / "python3").write_text(f"#!/bin/sh\ncase \"$1\" in\n  -c) exit 0 ;;\n  -m) echo '{pytest_out}'; "
                                  f"exit {pytest_rc} ;;\n  *) echo '| lstm | 1.0 ms |'; touch \"$OUT/benchmarked\" ;;\n"
                                  f"esac\n")
    for f in bin_.iterdir():
        f.chmod(0o755)
    out = tmp_path / "out"
    return os.environ | {"PATH": f"{bin_}:{os.environ['PATH']}", "OUT": str(out)}, out


@pytest.mark.parametrize("machine,message", [
    ({"nvidia_smi_rc": 9}, "nvidia-smi found no NVIDIA GPU"),
    ({"pytest_out": "1 failed, 2 passed", "pytest_rc": 1}, "a GPU test failed"),
    ({"pytest_out": "9 passed, 15 skipped"}, "GPU tests were skipped"),
])
def test_gpu_check_stops_before_recording_anything_when_a_check_fails(machine, message, tmp_path):
    env, out = _stub(tmp_path, **machine)
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                         env=env)
    assert run.returncode == 1 and run.stderr.strip().endswith(f"gpu_check.sh: {message}; nothing recorded")
    assert not (out / "benchmarked").exists() and not (out / "results").exists()


def test_gpu_check_records_when_every_check_passes(tmp_path):
    env, out = _stub(tmp_path)
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                         env=env)
    assert run.returncode == 0, run.stderr
    assert (out / "benchmarked").exists() and (out / "results").is_dir()
    assert (out / "gpu_bench.txt").read_text() == "| lstm | 1.0 ms |\n"


def test_gpu_benchmark_refuses_a_result_far_from_the_float64_reference():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from gpu import check_error
    finally:
        sys.path.pop(0)
    check_error("lstm", (100, 64, 128, 256), 9e-4, 1e-6)                 # within 1e-3
    check_error("lstm", (100, 64, 128, 256), 4e-3, 5e-4)                 # within 10 × cuDNN's
    for err in (2e-3, float("nan")):
        with pytest.raises(SystemExit) as stop:
            check_error("gru", (100, 64, 128, 256), err, 1e-6)
        assert str(stop.value) == (f"benchmarks/gpu.py: gru at T, B, D, H = 100, 64, 128, 256: relative error "
                                   f"{err:.1e} against the float64 reference, above 1.0e-03 (cuDNN's: 1.0e-06); "
                                   f"nothing recorded")


def test_cells_runs_both_sides_on_the_threads_it_names(tmp_path):
    """--threads 1 holds bptt's side to one thread too (NumPy's BLAS and the compiled loops),
    not torch's alone, and the stamp's BLAS figure says so."""
    env = os.environ | {"BPTT_BENCHMARK_RESULTS": str(tmp_path)}
    out = subprocess.run([sys.executable, "cells.py", "--quick", "--cells", "rnn", "--shapes", "4,2,3,5",
                          "--threads", "1"], cwd=ROOT / "benchmarks", capture_output=True, text=True, check=True,
                         env=env).stdout
    assert re.search(r"^# .* \(\S+, 1 threads\) · ", out, re.M), out
    assert "# threads 1 (torch, NumPy's BLAS; bptt's loops at most 1)" in out, out
    assert re.search(r"^\| rnn \| 4, 2, 3, 5 \| ", out, re.M), out


def test_cells_counts_each_array_of_the_tape_once():
    """Without zoneout the tape holds ``slab`` under ``fresh`` too: the tape MiB column counts
    it once (the LSTM's states, its gates; x and the initial state left out)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from cells import make_pair, tape_bytes
    finally:
        sys.path.pop(0)
    T, B, D, H = 5, 3, 4, 8
    pair = make_pair("lstm", T, B, D, H)
    tape = pair.layer.forward(pair.params, pair.x, pair.state0)[2]
    assert tape.fresh is tape.slab
    assert tape_bytes(tape) == 4 * (T * B * 2 * H + T * B * 4 * H + tape.aux.size)


def test_train_gives_the_pytorch_side_the_learning_rate_of_each_bptt_update():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from train import cosine_lr
    finally:
        sys.path.pop(0)
    from bptt.train.config import Config
    from bptt.train.schedules import learning_rate
    c = Config(steps=10, out="unused")
    for step in (1, 2, 5, 9, 10, 12):
        assert cosine_lr(c, step) == pytest.approx(learning_rate(step, c.lr, "cosine", c.steps), abs=1e-15)
    assert cosine_lr(c, 1) == c.lr


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs the process's CPU affinity (Linux)")
def test_mpi_gives_each_rank_the_cores_the_process_may_use_not_the_machines(tmp_path):
    """Under taskset (or a container's cpuset) the ranks share the cores of the affinity:
    BLAS threads per rank are counted from those, not from os.cpu_count()."""
    env = os.environ | {"BPTT_BENCHMARK_RESULTS": str(tmp_path)}
    one = {min(os.sched_getaffinity(0))}
    out = subprocess.run([sys.executable, "mpi.py", "--ranks", "1", "--steps", "10"], cwd=ROOT / "benchmarks",
                         capture_output=True, text=True, check=True, env=env,
                         preexec_fn=lambda: os.sched_setaffinity(0, one)).stdout
    assert "BLAS threads per rank: 1 // ranks" in out, out
    assert re.search(r"^\| lstm H=64, adding T=50, B=32 \| 1 \| [\d.]+ \| ", out, re.M), out


def test_step_gemm_refuses_a_candidate_whose_product_is_wrong():
    """step_gemm.py times only candidates that compute a @ b: float32 rounding passes, one
    entry off by 1e-3 of the sum's scale stops the script, naming the candidate."""
    import numpy as np
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from step_gemm import check_product
    finally:
        sys.path.pop(0)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((16, 512)).astype(np.float32), rng.standard_normal((512, 128)).astype(np.float32)
    right = a @ b
    check_product("packed", right, a, b)
    wrong = right.copy()
    wrong[3, 7] += 1e-3 * float(np.abs(a[3]) @ np.abs(b[:, 7]))
    with pytest.raises(SystemExit, match=r"packed gives a wrong product at \(16, 512\) x \(512, 128\)"):
        check_product("packed", wrong, a, b)
