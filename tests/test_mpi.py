"""Data-parallel training under `mpiexec -n 2`: the same parameters as one rank, resume with
another number of ranks, one clear error on a mismatch, and a dead rank ends the job."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")
pytestmark = pytest.mark.skipif(not Path(MPIEXEC).exists(), reason="no mpiexec (pip install -e '.[mpi]')")

BPTT = [sys.executable, "-m", "bptt"]
SYNTHETIC = ["train", "--task", "adding", "--seq-len", "12", "--hidden", "8", "--batch", "8", "--steps", "8",
             "--dtype", "float64", "--optimizer", "adam", "--lr", "0.01", "--schedule", "constant",
             "--clip-norm", "0.05", "--eval-every", "4", "--checkpoint-every", "4", "--quiet"]


def run(ranks, args, timeout=120):
    cmd = ([MPIEXEC, "-n", str(ranks)] if ranks > 1 else []) + BPTT + args
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def params(run_dir, step):
    arrays = load_file(str(Path(run_dir) / f"ckpt-{step:08d}.safetensors"))
    return {k: v for k, v in arrays.items() if k.startswith("param.")}


def assert_same(a, b, tol=1e-10):
    assert a.keys() == b.keys()
    for k in a:
        assert np.abs(a[k] - b[k]).max() <= tol * max(1.0, np.abs(a[k]).max()), k


def test_two_ranks_equal_one_rank_with_adam_and_clipping(tmp_path):
    one = run(1, SYNTHETIC + ["--out", str(tmp_path / "one")])
    two = run(2, SYNTHETIC + ["--out", str(tmp_path / "two")])
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert_same(params(tmp_path / "one", 8), params(tmp_path / "two", 8))
    assert two.stdout.count("validation adding") == 1                 # rank 0 alone speaks
    last = [line for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines() if "grad_norm" in line][-1]
    assert float(last.split('"grad_norm": ')[1].split(",")[0]) > 0.05   # clipping was active


def test_two_ranks_draw_the_masks_of_one_rank(tmp_path):
    """Dropout and zoneout masks are drawn for the whole batch and each rank takes its rows:
    two ranks train what one does."""
    noise = ["--input-dropout", "0.2", "--recurrent-dropout", "0.3", "--zoneout", "0.2", "--cell", "gru"]
    one = run(1, SYNTHETIC + noise + ["--out", str(tmp_path / "one")])
    two = run(2, SYNTHETIC + noise + ["--out", str(tmp_path / "two")])
    plain = run(1, SYNTHETIC + ["--cell", "gru", "--out", str(tmp_path / "plain")])
    assert one.returncode == 0 and two.returncode == 0 and plain.returncode == 0, two.stderr
    assert_same(params(tmp_path / "one", 8), params(tmp_path / "two", 8))
    a, b = params(tmp_path / "one", 8), params(tmp_path / "plain", 8)
    assert max(np.abs(a[k] - b[k]).max() for k in a) > 1e-4                # the noise acted


@pytest.mark.parametrize("noise", [[], ["--recurrent-dropout", "0.3", "--zoneout", "0.1"]])
def test_text_streams_split_over_ranks_and_resume_with_another_count(tmp_path, noise):
    corpus = tmp_path / "t.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog; " * 300, encoding="utf-8")
    text = ["train", "--text", str(corpus), "--hidden", "12", "--seq-len", "8", "--k2", "12", "--batch", "4",
            "--dtype", "float64", "--schedule", "constant", "--eval-every", "5", "--checkpoint-every", "5",
            "--quiet"] + noise
    assert run(1, text + ["--steps", "10", "--out", str(tmp_path / "one")]).returncode == 0
    two = run(2, text + ["--steps", "5", "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr
    resumed = run(1, ["resume", str(tmp_path / "two"), "--steps", "10", "--quiet"])   # 2 ranks, then 1
    assert resumed.returncode == 0, resumed.stderr
    assert_same(params(tmp_path / "one", 10), params(tmp_path / "two", 10))


def test_ranks_with_different_configurations_stop_with_one_error(tmp_path):
    out = str(tmp_path / "x")
    cmd = [MPIEXEC, "-n", "1", *BPTT, *SYNTHETIC, "--seed", "0", "--out", out, ":",
           "-n", "1", *BPTT, *SYNTHETIC, "--seed", "1", "--out", out]
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and time.monotonic() - start < 60, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == ["bptt: error: MPI: the configuration of rank(s) [1] differ(s) from rank 0's; every rank "
                     "must run the same configuration on the same data"], done.stderr


def test_a_batch_that_does_not_split_is_refused(tmp_path):
    done = run(2, SYNTHETIC[:7] + ["--batch", "3"] + SYNTHETIC[9:] + ["--out", str(tmp_path / "b")])
    assert done.returncode == 2 and done.stderr.strip() == (                # rank 0 alone reports it
        "bptt: error: --batch: the global batch of 3 does not split evenly over 2 MPI ranks; expected a batch "
        "that is a multiple of 2, or a number of ranks that divides 3 (1, 3)"), done.stderr
    (tmp_path / "c.toml").write_text("batch = 1\n")
    done = run(2, SYNTHETIC[:7] + SYNTHETIC[9:] + ["--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "c")])
    assert done.returncode == 2 and done.stderr.strip() == (
        f"bptt: error: batch in {tmp_path / 'c.toml'}: the global batch of 1 does not split evenly over 2 MPI "
        f"ranks; expected a batch that is a multiple of 2, or a number of ranks that divides 1 (1)"), done.stderr


def test_online_text_training_on_two_ranks_is_refused_naming_the_option(tmp_path):
    corpus = tmp_path / "t.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog; " * 50, encoding="utf-8")
    done = run(2, ["train", "--text", str(corpus), "--hidden", "4", "--seq-len", "8", "--batch", "2", "--steps", "2",
                   "--through-time", "rtrl", "--quiet", "--out", str(tmp_path / "o")])
    assert done.returncode == 2 and done.stderr.strip() == (
        "bptt: error: --through-time: rtrl over streams runs on one process; got 2 MPI ranks"), done.stderr


def test_a_bad_option_is_reported_once(tmp_path):
    """An option refused before MPI starts: every rank read the same argv; rank 0 alone
    reports it (each rank printed it)."""
    done = run(2, SYNTHETIC[:-3] + ["--lr", "0", "--out", str(tmp_path / "b")])
    assert done.returncode == 2 and done.stderr.strip() == "bptt: error: --lr: expected a positive number, got 0.0"


@pytest.mark.parametrize("bad, said", [(["--bogus", "3"], "unrecognized arguments: --bogus 3"),
                                       (["--hidden", "x"], "--hidden: expected an integer, got 'x'")])
def test_an_argument_the_parser_refuses_is_reported_once(tmp_path, bad, said):
    done = run(2, SYNTHETIC + bad + ["--out", str(tmp_path / "b")])
    assert done.returncode == 2 and done.stderr.strip() == f"bptt: error: {said}", done.stderr


@pytest.mark.parametrize("method, cell", [("uoro", "lstm"), ("kf-rtrl", "rnn")])
def test_random_signs_on_two_ranks_are_those_of_one_rank(tmp_path, method, cell):
    """UORO's and KF-RTRL's signs are drawn for the whole batch; each rank keeps its rows."""
    args = SYNTHETIC + ["--through-time", method, "--cell", cell]
    one = run(1, args + ["--out", str(tmp_path / "one")])
    two = run(2, args + ["--out", str(tmp_path / "two")])
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert_same(params(tmp_path / "one", 8), params(tmp_path / "two", 8))


def test_eval_under_mpiexec_prints_the_figures_once(tmp_path):
    assert run(1, SYNTHETIC + ["--out", str(tmp_path / "r")]).returncode == 0
    alone = run(1, ["eval", str(tmp_path / "r")])
    for ranks in (2, 3):                                         # 3 does not divide the batch of 8: nothing is split
        done = run(ranks, ["eval", str(tmp_path / "r")])
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert done.stdout == alone.stdout and done.stdout.count("validation adding") == 1, done.stdout


def test_sample_and_export_under_mpiexec_run_once(tmp_path):
    corpus = tmp_path / "t.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 50, encoding="utf-8")
    assert run(1, ["train", "--text", str(corpus), "--hidden", "8", "--seq-len", "8", "--batch", "4", "--steps", "2",
                   "--quiet", "--out", str(tmp_path / "t")]).returncode == 0
    drawn = ["sample", str(tmp_path / "t"), "--length", "30", "--seed", "3"]
    alone, two = run(1, drawn), run(2, drawn)
    assert two.returncode == 0 and two.stderr == "" and two.stdout == alone.stdout, two.stdout
    done = run(2, ["export", str(tmp_path / "t"), "--onnx", str(tmp_path / "m.onnx")])
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.count("wrote ") == 1 and (tmp_path / "m.onnx").exists(), done.stdout


def test_a_dead_rank_ends_the_job_and_the_last_checkpoint_stays_whole(tmp_path):
    out = tmp_path / "dead"
    args = SYNTHETIC[:10] + ["100000"] + SYNTHETIC[11:-5] + ["--checkpoint-every", "50", "--eval-every", "100000",
                                                           "--quiet", "--out", str(out)]
    job = subprocess.Popen([MPIEXEC, "-n", "2", *BPTT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob("ckpt-*.json")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list(out.glob("ckpt-*.json")), "no checkpoint appeared"
        ranks = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _is_rank(p, out)]
        assert len(ranks) == 2
        os.kill(max(ranks), signal.SIGKILL)                           # one rank dies mid-run
        killed = time.monotonic()
        job.wait(timeout=60)
        assert job.returncode != 0 and time.monotonic() - killed < 30
    finally:
        if job.poll() is None:
            job.kill()
    from bptt.train import runs
    meta, arrays, _ = runs.load_checkpoint(out)                       # the last checkpoint loads, whole
    assert meta["step"] >= 50 and all(np.isfinite(v).all() for k, v in arrays.items() if k.startswith("param."))


def _is_rank(proc, out):
    try:
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(b"bptt" in c for c in cmdline) and str(out).encode() in cmdline and \
        not any(b"mpiexec" in c or b"hydra" in c for c in cmdline[:1])


def test_each_rank_takes_its_share_of_the_cores_for_blas():
    """Two ranks with all the cores' BLAS threads each make the threads fight (20× slower)."""
    code = ("import json; from threadpoolctl import threadpool_info; from bptt.distributed import world; "
            "w = world(); blas = [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']; "
            "got = w.comm.gather([w.rank, w.size, blas], root=0); "
            "print(json.dumps(got)) if w.rank == 0 else None")
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    share = max(1, (os.cpu_count() or 1) // 2)
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert [g[:2] for g in got] == [[0, 2], [1, 2]]
    assert all(blas and all(n == share for n in blas) for _, _, blas in got)


def test_ctrl_c_to_mpiexec_stops_every_rank_at_one_update_and_resume_is_bit_for_bit(tmp_path):
    """hydra passes SIGINT to the ranks; they agree on the update to stop after, rank 0
    saves it and speaks, and two ranks resumed end where two uninterrupted ranks end."""
    args = SYNTHETIC[:10] + ["300"] + SYNTHETIC[11:-5] + ["--checkpoint-every", "1000", "--eval-every", "1000",
                                                         "--quiet"]
    reference = run(2, args + ["--out", str(tmp_path / "ref")])
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "stopped"
    job = subprocess.Popen([MPIEXEC, "-n", "2", *BPTT, *args, "--out", str(out)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and job.poll() is None and not (
            (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text()):
        time.sleep(0.02)
    job.send_signal(signal.SIGINT)
    _, err = job.communicate(timeout=60)
    ours = [line for line in err.splitlines() if line.startswith("bptt")]
    saved = sorted(out.glob("ckpt-*.json"))
    assert job.returncode == 130 and len(saved) == 1, err
    step = int(saved[0].stem.split("-")[1])
    assert 0 < step < 300
    assert ours == [f"bptt: SIGINT: stopped after update {step}, saved as {saved[0]}; `bptt resume {out}` "
                    f"continues from it"]
    resumed = run(2, ["resume", str(out), "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    assert_same(params(out, 300), params(tmp_path / "ref", 300), tol=0)


def test_a_non_finite_gradient_stops_every_rank_with_the_line_of_one_process(tmp_path):
    """Every rank judges the same summed gradient: rank 0 alone reports it, without MPI_Abort,
    and locates the overflow in the global batch, as one process does."""
    args = ["train", "--task", "adding", "--cell", "rnn", "--nonlinearity", "identity", "--init", "identity",
            "--seq-len", "400", "--hidden", "8", "--batch", "4", "--steps", "50", "--lr", "0.1",
            "--clip-norm", "1e30", "--quiet"]
    one = run(1, args + ["--out", str(tmp_path / "one")])
    two = run(2, args + ["--out", str(tmp_path / "two")])
    assert one.returncode == two.returncode == 2
    assert "left the finite range at step" in one.stderr and len(one.stderr.strip().splitlines()) == 1
    assert two.stderr == one.stderr


def test_flow_under_mpiexec_trains_on_every_rank_and_reports_once(tmp_path):
    done = run(2, ["flow", "--seq-len", "12", "--hidden", "6", "--cell", "rnn", "--train", "2", "--quiet",
                   "--out", str(tmp_path / "f")])
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.count("figure: ") == 1 and done.stdout.count("rnn-tanh, init") == 1, done.stdout
    assert json.loads((tmp_path / "f" / "flow.json").read_text()).keys() == {"rnn-tanh, init", "rnn-tanh, 2 updates"}


def test_resuming_a_complete_run_under_mpiexec_is_refused_in_one_line(tmp_path):
    """Every rank reads the same checkpoint: all refuse together, rank 0 says it, no MPI_Abort."""
    assert run(1, SYNTHETIC + ["--out", str(tmp_path / "r")]).returncode == 0
    done = run(2, ["resume", str(tmp_path / "r"), "--quiet"])
    assert done.returncode == 2 and done.stderr.strip() == (
        "bptt: error: RUN: the run is complete at update 8 of 8; pass --steps N (N > 8) to continue it"), done.stderr


def test_flow_of_a_saved_run_under_mpiexec_measures_once_whatever_its_batch(tmp_path):
    """flow --run measures, it does not train: a batch of 3 on 2 ranks is no error."""
    assert run(1, SYNTHETIC[:7] + ["--batch", "3", "--steps", "2"] + SYNTHETIC[11:] + ["--out", str(tmp_path / "r")]
               ).returncode == 0
    done = run(2, ["flow", "--run", str(tmp_path / "r"), "--out", str(tmp_path / "f")])
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.count("figure: ") == 1 and done.stdout.count("lstm @ 2 (r)") == 1, done.stdout
