"""Runs that never lose work, tried through the `bptt` command in subprocesses as a user
meets it: a folder belongs to one run and one process, a refusal is one line and leaves
every byte in the folder as it was, SIGINT, SIGTERM and SIGHUP (a closed terminal) save the
update in flight and the
resumed run ends bit for bit where an uninterrupted one does, and a failing file system
is one line naming the path."""
import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from bptt.train import folder, runs

BPTT = [sys.executable, "-m", "bptt"]
SMALL = ["--task", "adding", "--seq-len", "12", "--hidden", "8", "--batch", "8", "--quiet"]
# float64 and one thread per loop: the same bits in every process
EXACT = ["--task", "adding", "--seq-len", "20", "--hidden", "16", "--batch", "16", "--dtype", "float64",
         "--threads", "1", "--quiet"]


def bptt(*args, cwd=None, timeout=300, **kw):
    return subprocess.run(BPTT + [str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, **kw)


def snapshot(path: Path) -> dict:
    """Every file under ``path`` with its bytes (the lock file's pid aside)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != folder.LOCK}


def one_line_error(result, code, *needles):
    """The error line (after resume's note of where it starts, if any)."""
    err = result.stderr.strip()
    assert result.returncode == code, (result.returncode, err)
    if err.startswith("bptt: resuming "):
        err = err.split("\n", 1)[1]
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
    """A finished run of 20 updates with checkpoints at 10 and 20."""
    run = tmp_path_factory.mktemp("earlier") / "run"
    done = bptt("train", *SMALL, "--steps", 20, "--eval-every", 5, "--checkpoint-every", 10, "--out", run)
    assert done.returncode == 0, done.stderr
    return run


def copy_of(run: Path, to: Path) -> Path:
    to.mkdir(parents=True)
    for name, data in snapshot(run).items():
        (to / name).parent.mkdir(parents=True, exist_ok=True)
        (to / name).write_bytes(data)
    return to


# ---- a folder belongs to one run --------------------------------------------------------------

def test_a_folder_that_cannot_be_written_is_named_before_anything_starts(tmp_path, monkeypatch):
    """As another user meets it (root may write anywhere): --out in a folder without write
    permission, and RUN that cannot be written, are FolderErrors naming the option."""
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(folder.os, "access", lambda p, mode: Path(p) != locked)
    with pytest.raises(folder.FolderError, match=rf"^--out: expected a folder the run can create, got "
                                                 rf"{locked / 'new' / 'run'} \({locked} is not writable\)$"):
        folder.check_new(locked / "new" / "run")
    with pytest.raises(folder.FolderError, match=rf"^RUN: expected a folder the run can write in, got {locked} "
                                                 rf"\(not writable\)$"):
        folder.claim_existing(locked)
    with pytest.raises(folder.FolderError, match=rf"^RUN: no such run folder: {locked / 'typo'}$"):
        folder.claim_existing(locked / "typo")              # resume creates nothing: the parent is not its business
    assert list(locked.iterdir()) == []


def test_train_refuses_a_folder_that_is_not_empty_and_changes_nothing(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "own file"}')
    (mine / "notes.txt").write_text("keep me")
    before = snapshot(mine)
    one_line_error(bptt("train", *SMALL, "--steps", 2, "--out", mine), 2, f"--out: {mine} is not empty",
                   "is not a run")
    one_line_error(bptt("train", *SMALL, "--steps", 2, "--out", mine, "--fresh"), 2,
                   f"--fresh: {mine} is not empty (2 entries: config.json, notes.txt) and is not a run to start "
                   f"over; choose an empty or new folder")
    (mine / "config.json").unlink()                    # --fresh starts over a run; it does not fill a folder
    before = snapshot(mine)
    one_line_error(bptt("train", *SMALL, "--steps", 2, "--out", mine, "--fresh"), 2,
                   f"--fresh: {mine} is not empty (1 entry: notes.txt) and is not a run to start over")
    assert snapshot(mine) == before and not (mine / folder.LOCK).exists()


def test_train_refuses_an_earlier_run_and_names_resume(earlier_run):
    before = snapshot(earlier_run)
    one_line_error(bptt("train", *SMALL, "--steps", 20, "--hidden", 4, "--out", earlier_run), 2,
                   f"--out: {earlier_run} holds a run (at update 20)", f"`bptt resume {earlier_run}`", "--fresh")
    assert snapshot(earlier_run) == before


def test_a_refused_resume_changes_nothing_in_the_folder(earlier_run, tmp_path):
    """--steps that trains nothing: refused before config.json is rewritten with it, and,
    with --best, before the later checkpoints move to set-aside/ and metrics.jsonl is cut
    (the next resume then started from the best model, skipping the later updates)."""
    run = copy_of(earlier_run, tmp_path / "run")
    before = snapshot(run)
    for extra in ([], ["--best"]):
        one_line_error(bptt("resume", run, "--steps", 5, *extra), 2, "--steps: the run is at update ",
                       "expected more than")
        assert snapshot(run) == before
        assert not (run / folder.LOCK).exists()         # the lock file it made goes with the refusal
    done = bptt("resume", run, "--steps", 22)
    assert done.returncode == 0 and "from ckpt-00000020.json (update 20)" in done.stderr, done.stderr


def test_fresh_starts_over_deleting_only_the_earlier_runs_files(earlier_run, tmp_path):
    run = copy_of(earlier_run, tmp_path / "again")
    (run / "notes.txt").write_text("not a run's file")
    (run / "notes.tmp").write_text("nor this")
    cut_short = ("ckpt-00000030.safetensors.tmp", "ckpt-00000030.safetensors.old.tmp", "best.safetensors.old.tmp")
    for name in cut_short:
        (run / name).write_bytes(b"a write cut short")
    done = bptt("train", *SMALL, "--steps", 4, "--hidden", 4, "--eval-every", 2, "--out", run, "--fresh")
    assert done.returncode == 0, done.stderr
    assert (run / "notes.txt").read_text() == "not a run's file" and (run / "notes.tmp").exists()
    assert not any((run / name).exists() for name in cut_short)
    assert [p.name for p in runs.checkpoints(run)] == ["ckpt-00000004.json"]
    assert json.loads((run / "config.json").read_text())["hidden"] == 4
    assert max(r["step"] for r in runs.Metrics(run).read()) == 4


def test_a_train_stopped_before_it_writes_leaves_no_folder(tmp_path, capsys, monkeypatch):
    """Ctrl-C or SIGTERM after the run folder is claimed and before config.json is written:
    the folder made for the run (--out, or runs/DATE-TIME) goes with its lock file; a folder
    that was there before stays, as it was."""
    from bptt import cli
    from bptt.train.trainer import Trainer

    def interrupted(self):
        raise KeyboardInterrupt

    def terminated(self, *args):
        raise cli._Terminated(signal.SIGTERM)

    def left():
        return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    with monkeypatch.context() as m:              # in the constructor, once the folder is claimed
        m.setattr(Trainer, "_data_fingerprint", interrupted)
        for out, after in ((["--out", str(tmp_path / "new" / "run")], ["mine", "new"]),
                           ([], ["mine", "new", "runs"]),                  # runs/DATE-TIME goes, runs/ stays
                           (["--out", str(tmp_path / "mine")], ["mine", "new", "runs"])):
            assert cli.main(["train", *SMALL, "--steps", "2", *out]) == 130
            assert capsys.readouterr().err == "bptt: interrupted; no checkpoint was written, nothing to resume\n"
            assert left() == after, left()
    with monkeypatch.context() as m:              # in train(), before its first write
        m.setattr(Trainer, "_loop", terminated)
        assert cli.main(["train", *SMALL, "--steps", "2", "--out", str(tmp_path / "new" / "run")]) == 143
        assert capsys.readouterr().err == "bptt: terminated; no checkpoint was written, nothing to resume\n"
    assert left() == ["mine", "new", "runs"]


def test_a_lock_takes_back_only_the_file_and_folder_it_made(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    folder.Lock(run, "RUN").discard()                       # its own lock file goes, the folder stays
    assert run.is_dir() and list(run.iterdir()) == []
    (run / folder.LOCK).write_text("4242\n")                 # a lock file that was there: it stays
    folder.Lock(run, "RUN").discard()
    assert (run / folder.LOCK).exists()
    (run / folder.LOCK).unlink()
    lock = folder.Lock(run, "--out", made=True)
    (tmp_path / "other").write_text("not this lock's")
    os.replace(tmp_path / "other", run / folder.LOCK)       # replaced since: not the file it made
    lock.discard()
    assert (run / folder.LOCK).read_text() == "not this lock's"
    (run / folder.LOCK).unlink()
    lock = folder.Lock(run, "--out", made=True)
    (run / "config.json").write_text("{}")                  # the run wrote: its folder stays
    lock.discard()
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]
    (run / "config.json").unlink()
    folder.Lock(run, "--out", made=True).discard()          # made here and left empty: it goes
    assert not run.exists()


def test_default_run_folders_never_collide(tmp_path):
    names = {folder.default_name(tmp_path / "runs") for _ in range(3)}       # within one second
    assert len(names) == 3 and all(n.is_dir() and n.parent == tmp_path / "runs" for n in names)
    procs = [subprocess.Popen(BPTT + ["train", *SMALL, "--steps", "2"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    folders = [line.split()[2] for out, _ in outs for line in out.splitlines() if line.startswith("run folder:")]
    assert len(set(folders)) == 2
    for f in folders:
        assert [p.name for p in runs.checkpoints(tmp_path / f)] == ["ckpt-00000002.json"]


def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_lock(tmp_path):
    run = tmp_path / "busy"
    proc = subprocess.Popen(BPTT + ["train", *EXACT, "--steps", "100000", "--eval-every", "100000",
                                    "--checkpoint-every", "100000", "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run / "config.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (run / "config.json").exists()
        one_line_error(bptt("train", *SMALL, "--steps", 2, "--out", run), 2,
                       f"--out: {run} is in use by another bptt process (pid {proc.pid})")
        one_line_error(bptt("resume", run), 2, f"RUN: {run} is in use by another bptt process (pid {proc.pid})")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (run / folder.LOCK).exists()              # the file stays, the lock died with the process
    resumed = bptt("resume", run)
    assert "in use" not in resumed.stderr
    one_line_error(resumed, 2, f"RUN: {run} has no checkpoint")


# ---- SIGINT and SIGTERM --------------------------------------------------------------------------

def final_params(run_dir, step):
    arrays = load_file(str(run_dir / f"ckpt-{step:08d}.safetensors"))
    return {k: v for k, v in arrays.items() if k.startswith(("param.", "optim."))}


def wait_for_training(run_dir, proc, timeout=120):
    """Until the run has logged a metrics row (updates are running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if runs.Metrics(run_dir).read():
            return
        time.sleep(0.02)
    raise AssertionError("the run did not start training")


@pytest.mark.parametrize("signum,task", [(signal.SIGINT, "adding"), (signal.SIGTERM, "text")])
def test_a_signal_saves_the_update_in_flight_and_resume_is_bit_for_bit(tmp_path, signum, task):
    steps = 400
    args = ["train", *EXACT, "--steps", str(steps), "--eval-every", "100", "--checkpoint-every", "1000"]
    if task == "text":
        corpus = tmp_path / "corpus.txt"
        corpus.write_text("".join(f"line {i}: the quick brown fox jumps over {i % 7} lazy dogs\n" for i in range(600)))
        args += ["--task", "text", "--text", str(corpus), "--seq-len", "16", "--k2", "24", "--batch", "4"]
    reference = bptt(*args, "--out", tmp_path / "ref")
    assert reference.returncode == 0, reference.stderr
    run = tmp_path / "stopped"
    proc = subprocess.Popen(BPTT + args + ["--out", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for_training(run, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    saved = runs.checkpoints(run)
    assert proc.returncode == 128 + signum, err
    assert len(saved) == 1 and 0 < runs.step_of(saved[0]) < steps      # before the first scheduled one
    assert err.strip() == (f"bptt: {signal.Signals(signum).name}: stopped after update {runs.step_of(saved[0])}, "
                           f"saved as {saved[0]}; `bptt resume {run}` continues from it")
    resumed = bptt("resume", run, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run} from {saved[0].name} (update {runs.step_of(saved[0])})" in resumed.stderr
    ours, ref = final_params(run, steps), final_params(tmp_path / "ref", steps)
    assert ours.keys() == ref.keys()
    for k in ref:
        assert np.array_equal(ours[k], ref[k]), k
    # and the metrics rows, the row the signal cut in two included (it averaged only the
    # updates after the resume); the rates are this process's own
    rows = [[{k: v for k, v in json.loads(line).items() if not k.endswith("_per_s")}
             for line in (folder_ / "metrics.jsonl").read_text().splitlines()] for folder_ in (run, tmp_path / "ref")]
    assert rows[0] == rows[1]


@pytest.mark.parametrize("stderr_to", ["terminal", "file"])
def test_a_closed_terminal_saves_the_update_in_flight(tmp_path, stderr_to):
    """The terminal goes away (its window closed, the SSH connection dropped) while the run
    prints its progress there: SIGHUP, and every later write to it fails. The update in
    flight is saved all the same, exit 129, and resume continues from it. Where stderr was
    sent to a file, the line naming the checkpoint is there."""
    import pty
    steps, run, log = 100000, tmp_path / "run", tmp_path / "stderr.txt"
    args = BPTT + ["train", "--task", "adding", "--seq-len", "12", "--hidden", "8", "--batch", "8",
                   "--steps", str(steps), "--eval-every", "20", "--checkpoint-every", "100000", "--out", str(run)]
    pid, terminal = pty.fork()                     # the child's controlling terminal is the pty
    if pid == 0:                                   # pragma: no cover (the child)
        try:
            if stderr_to == "file":
                os.dup2(os.open(log, os.O_WRONLY | os.O_CREAT, 0o644), 2)
            os.execv(sys.executable, args)
        finally:
            os._exit(127)
    printed = b""
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").exists() or not runs.Metrics(run).read():
            assert time.monotonic() < deadline, printed[-2000:]
            ready, _, _ = select.select([terminal], [], [], 0.05)
            if ready:
                printed += os.read(terminal, 65536)          # the progress it prints, drained
        time.sleep(0.2)                                      # a few updates on, printing
    finally:
        os.close(terminal)                                   # the terminal goes away: SIGHUP
    _, status = os.waitpid(pid, 0)
    saved = runs.checkpoints(run)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 128 + signal.SIGHUP, (status, printed[-2000:])
    assert len(saved) == 1 and 0 < runs.step_of(saved[0]) < steps, saved
    if stderr_to == "file":
        assert log.read_text().strip().splitlines()[-1] == (
            f"bptt: SIGHUP: stopped after update {runs.step_of(saved[0])}, saved as {saved[0]}; "
            f"`bptt resume {run}` continues from it")
    resumed = bptt("resume", run, "--steps", runs.step_of(saved[0]) + 5, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert (run / f"ckpt-{runs.step_of(saved[0]) + 5:08d}.json").exists()


def test_an_ignored_sighup_stays_ignored(tmp_path):
    """Under nohup (SIGHUP ignored) a hangup changes nothing: the run trains on to its
    last update."""
    run = tmp_path / "nohup"
    proc = subprocess.Popen(BPTT + ["train", *SMALL, "--steps", "3000", "--eval-every", "20", "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    wait_for_training(run, proc)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert [runs.step_of(c) for c in runs.checkpoints(run)][-1] == 3000


def test_sigint_during_flows_training_is_one_line(tmp_path):
    """flow --train runs its trainers inside the flow command: a signal saves the update in
    flight, as train's does, and says the report was not written (there is no trainer of
    the command's own to name)."""
    out = tmp_path / "flow"
    proc = subprocess.Popen(BPTT + ["flow", "--cell", "lstm", "--seq-len", "20", "--hidden", "8", "--train", "100000",
                                    "--quiet", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for_training(out / "lstm", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    saved = runs.checkpoints(out / "lstm")
    assert proc.returncode == 130, err
    assert err.strip() == (f"bptt: SIGINT: stopped after update {runs.step_of(saved[-1])}, saved as {saved[-1]}; "
                           f"the flow report was not written; `bptt flow` with the same options and --out {out} "
                           f"continues it")


def test_a_second_sigint_stops_at_once_and_the_last_checkpoint_stays_whole(tmp_path):
    run = tmp_path / "twice"
    # updates of about a second each, a checkpoint after every one
    slow = ["train", "--task", "adding", "--seq-len", "250", "--hidden", "256", "--batch", "64", "--dtype",
            "float64", "--threads", "1", "--steps", "1000", "--checkpoint-every", "1", "--eval-every", "1000",
            "--quiet", "--out", str(run)]
    proc = subprocess.Popen(BPTT + slow, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not runs.checkpoints(run) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert runs.checkpoints(run), "no checkpoint was written"
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)                                   # the first is seen; the update is still running
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert time.monotonic() - sent < 5
    newest = runs.checkpoints(run)[-1]
    assert err.strip().startswith("bptt: second SIGINT: stopped at once; the last complete checkpoint is "), err
    assert str(newest) in err
    meta, arrays, path = runs.load_checkpoint(run)    # whole: its digest matches
    assert path == newest and meta["step"] == runs.step_of(newest)


# ---- the file system fails -----------------------------------------------------------------------

def _limit_file_size(limit):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_write_that_fails_names_the_path_and_loses_nothing(earlier_run, tmp_path):
    run = copy_of(earlier_run, tmp_path / "full")
    before = snapshot(run)
    # RLIMIT_FSIZE: the kernel refuses any write past 4 KiB (EFBIG), as a full disk would (ENOSPC)
    failed = bptt("resume", run, "--steps", 30, "--quiet", preexec_fn=_limit_file_size(4096))
    err = one_line_error(failed, 1, f"bptt: error: {run}/", ": File too large;",
                         f"the last complete checkpoint is {run}/ckpt-00000020.json")
    assert "ckpt-00000030" not in "".join(p.name for p in run.iterdir()), err     # no half, no .tmp
    after = snapshot(run)
    for name in before:                                # every checkpoint as it was
        if name.startswith(("ckpt-", "best.")):
            assert after[name] == before[name], name
    done = bptt("resume", run, "--steps", 30, "--quiet")
    assert done.returncode == 0, done.stderr


def test_a_folder_where_the_run_has_a_file_says_what_to_fix_not_the_same_resume(earlier_run, tmp_path):
    """RUN/.lock or RUN/metrics.jsonl a folder: resume fails before it trains, and the line
    says what to fix, not `bptt resume RUN` again; the run as it was. A folder where the
    run writes at its end (loss.png) and a stdout that cannot take the figures: the run is
    complete, not sent to resume."""
    for name in (folder.LOCK, "metrics.jsonl"):
        run = copy_of(earlier_run, tmp_path / name.strip("."))
        (run / name).unlink(missing_ok=True)
        (run / name).mkdir()
        before = snapshot(run)
        failed = bptt("resume", run, "--steps", 30)
        expected = f"bptt: error: {run / name}: Is a directory; expected a file there, got a folder (move it away)\n"
        assert (failed.returncode, failed.stderr) == (1, expected), failed.stderr
        assert snapshot(run) == before and (run / name).is_dir()
    run = copy_of(earlier_run, tmp_path / "plot")
    (run / "loss.png").unlink()
    (run / "loss.png").mkdir()
    err = one_line_error(bptt("resume", run, "--steps", 22, "--quiet"), 1)
    assert err == (f"bptt: error: {run / 'loss.png'}: Is a directory; expected a file there, got a folder (move it "
                   f"away); the run is complete: its last checkpoint is {run / 'ckpt-00000022.json'}; its final "
                   f"sample and figures were not printed"), err
    (run / "loss.png").rmdir()
    if not os.path.exists("/dev/full"):
        return
    with open("/dev/full", "w") as full:
        failed = subprocess.run(BPTT + ["resume", str(run), "--steps", "24", "--quiet"], stdout=full,
                                stderr=subprocess.PIPE, text=True, timeout=300, check=False)
    err = one_line_error(failed, 1)
    assert err == (f"bptt: error: stdout: No space left on device; the run is complete: its last checkpoint is "
                   f"{run / 'ckpt-00000024.json'}; its final sample and figures were not printed"), err


def test_a_file_where_a_folder_should_be_is_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line_error(bptt("train", *SMALL, "--steps", 2, "--out", afile), 2,
                   f"--out: expected a folder for the run, got {afile} (a file)")
    one_line_error(bptt("train", *SMALL, "--steps", 2, "--out", afile / "run"), 2,
                   f"--out: expected a folder for the run, got {afile / 'run'} ({afile} is a file)")
    assert afile.read_text() == "x"
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "gone" / "run")          # a link to a folder that is not there
    for command in (["train", *SMALL, "--steps", 2], ["flow", "--cell", "rnn", "--hidden", 4, "--seq-len", 5]):
        one_line_error(bptt(*command, "--out", dangling), 2,
                       "--out: expected a folder for ", f"got {dangling} (a link to {tmp_path / 'gone' / 'run'}, "
                       f"which does not exist)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "link"]


def _mount(target: Path, options: str) -> bool:
    if os.geteuid() != 0:
        return False
    target.mkdir(exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                          capture_output=True).returncode == 0


@pytest.fixture()
def mounts():
    made = []
    yield made
    for m in made:
        subprocess.run(["umount", str(m)], capture_output=True)


def test_a_read_only_or_full_file_system_is_one_line(earlier_run, tmp_path, mounts):
    ro, full = tmp_path / "ro", tmp_path / "full"
    if not _mount(ro, "ro,size=1m"):
        pytest.skip("mounting a tmpfs needs root with CAP_SYS_ADMIN (the RLIMIT_FSIZE test covers writes)")
    mounts.append(ro)
    one_line_error(bptt("train", *SMALL, "--steps", 2, "--out", ro / "run"), 2,
                   f"--out: expected a folder the run can create, got {ro / 'run'} ({ro} is not writable)")
    used = sum(len(b) for b in snapshot(earlier_run).values())
    assert _mount(full, f"size={used + 24 * 1024}")    # the run fits; a new checkpoint does not
    mounts.append(full)
    run = copy_of(earlier_run, full / "run")
    before = snapshot(run)
    failed = bptt("resume", run, "--steps", 40, "--quiet")
    one_line_error(failed, 1, "No space left on device", "the last complete checkpoint is")
    after = snapshot(run)
    for name in before:
        if name.startswith(("ckpt-", "best.")):
            assert after[name] == before[name], name
    assert not list(run.glob("*.tmp"))


# ---- resume --------------------------------------------------------------------------------------

def test_resume_says_where_it_starts_and_sets_aside_a_checkpoint_cut_short(earlier_run, tmp_path):
    run = copy_of(earlier_run, tmp_path / "cut")
    orphan = (run / "ckpt-00000020.safetensors").read_bytes()
    (run / "ckpt-00000020.json").unlink()              # killed between its two files
    before = snapshot(run)
    refused = bptt("resume", run, "--steps", 5)        # a refusal moves nothing, the half included
    assert refused.returncode == 2 and "--steps: the run is at update 10" in refused.stderr, refused.stderr
    assert snapshot(run) == before
    done = bptt("resume", run, "--steps", 25)
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if line.startswith("bptt: ")]
    assert notes == ["bptt: ckpt-00000020.safetensors has no ckpt-00000020.json (a checkpoint cut short); "
                     "moved to set-aside/ckpt-00000020.safetensors",
                     f"bptt: resuming {run} from ckpt-00000010.json (update 10)"]
    assert (run / "set-aside" / "ckpt-00000020.safetensors").read_bytes() == orphan
    assert [p.name for p in runs.checkpoints(run)][-1] == "ckpt-00000025.json"


def test_pruning_keeps_the_newest_checkpoints_past_update_a_hundred_million(tmp_path):
    """ckpt-100000000 sorted before ckpt-99999999 by name: it was pruned as the oldest the
    moment it was written, and every later one with it."""
    for step in (99_999_998, 99_999_999, 100_000_000, 100_000_001):
        runs.save_checkpoint(tmp_path, step, {"param.w": np.full(1, float(step))}, {"config": {}})
    assert [runs.step_of(p) for p in runs.checkpoints(tmp_path)] == [100_000_000, 100_000_001]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-100000000.json", "ckpt-100000000.safetensors", "ckpt-100000001.json", "ckpt-100000001.safetensors"]


def test_metrics_rows_whose_step_is_not_an_integer_are_left_out(tmp_path):
    """A row with "step": null or "7" (a hand-edited metrics.jsonl) was kept, and resume's
    truncate_after then stopped with a TypeError traceback comparing it with the update."""
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": null}\n{"step": "7"}\n'
                                            '{"step": true}\n{"step": 3, "loss": 1.0}\n{"step": 2')
    metrics = runs.Metrics(tmp_path)
    assert [r["step"] for r in metrics.read()] == [1, 3]
    metrics.truncate_after(2)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.0}\n'


def test_resume_honours_or_refuses_an_edited_config(earlier_run, tmp_path):
    run = copy_of(earlier_run, tmp_path / "edited")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(config | {"hidden": 64}))
    before = snapshot(run)
    one_line_error(bptt("resume", run), 2, f"RUN: {run}/config.json says hidden = 64, the checkpoint hidden = 8",
                   "undo the edit")
    assert snapshot(run) == before
    (run / "config.json").write_text(json.dumps(config | {"steps": 24, "eval_evry": 1}))     # misspelt
    before = snapshot(run)
    one_line_error(bptt("resume", run), 2, f"RUN: {run}/config.json has an unknown key 'eval_evry'; expected the "
                   "options of a run")
    assert snapshot(run) == before
    (run / "config.json").write_text(json.dumps(config | {"steps": 24}))
    done = bptt("resume", run)
    assert done.returncode == 0, done.stderr
    assert "bptt: config.json: steps 24 (the checkpoint has 20)" in done.stderr
    assert runs.step_of(runs.checkpoints(run)[-1]) == 24


# ---- bad options at the door ---------------------------------------------------------------------

def test_bad_values_that_only_the_data_or_the_run_can_judge(earlier_run, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("a tiny text of a few words. " * 10)
    before = snapshot(earlier_run)
    cases = [
        (["train", "--task", "adding", "--seq-len", "1"], "seq-len: the adding task marks one value in each half"),
        (["train", "--text", short, "--batch", "32", "--seq-len", "64"],
         f"--text: {short} gives 252 training characters, 7 per stream with --batch 32; --seq-len 64 needs at least 65"),
        (["train", "--text", tmp_path], f"--text: {tmp_path} is a folder; expected a UTF-8 text file"),
        (["train", "--config", tmp_path], f"--config: {tmp_path} is a folder; expected a TOML file"),
        (["sample", earlier_run, "--length", "-5"], "--length: expected a positive integer, got '-5'"),
        (["sample", earlier_run], f"RUN: {earlier_run} is a run of the adding task; sampling needs a text run"),
        (["resume", earlier_run, "--steps", "20"], "--steps: the run is at update 20; expected more than 20"),
        (["resume", earlier_run], "RUN: the run is complete at update 20 of 20; pass --steps N"),
        (["resume", tmp_path], f"RUN: {tmp_path} is not a run"),
        (["eval", tmp_path / "nothing"], f"RUN: no such run folder: {tmp_path / 'nothing'}"),
    ]
    for argv, message in cases:
        one_line_error(bptt(*argv, cwd=tmp_path), 2, message)
    assert snapshot(earlier_run) == before
    assert not (tmp_path / "runs").exists()            # no run folder was made for a refused train


# ---- the best model and patience -----------------------------------------------------------------

def test_the_best_model_is_kept_apart_and_patience_stops_the_run(tmp_path):
    run = tmp_path / "best"
    # a learning rate this large overshoots: validation stops improving within a few evaluations
    done = bptt("train", *EXACT, "--steps", 400, "--lr", 0.3, "--optimizer", "sgd", "--eval-every", 5,
                "--checkpoint-every", 5, "--patience", 3, "--out", run)
    assert done.returncode == 0, done.stderr
    evaluations = [r for r in runs.Metrics(run).read() if "val_loss" in r]
    best = min(evaluations, key=lambda r: r["val_loss"])
    last = evaluations[-1]["step"]
    assert last < 400 and last == best["step"] + 3 * 5                      # three evaluations without a better one
    assert f"stopped early at update {last}: no lower validation loss in 3 evaluations (--patience 3)" in done.stdout
    assert (f"best model: {run}/best.json (update {best['step']}, validation {best['val_loss']:.4f})"
            in done.stdout)
    meta, arrays, _ = runs.load_checkpoint(run, best=True)
    assert meta["step"] == best["step"] and meta["best"]["val_loss"] == best["val_loss"]
    assert [runs.step_of(p) for p in runs.checkpoints(run)] == [last - 5, last]   # pruned; best.json kept
    evaluated = bptt("eval", run, "--best")
    assert evaluated.returncode == 0 and f"loss {best['val_loss']:.5f}" in evaluated.stdout
    one_line_error(bptt("resume", run), 2, f"RUN: the run stopped early at update {last}", "--patience")
    more = bptt("resume", run, "--best", "--patience", 100, "--steps", last + 5)
    assert more.returncode == 0, more.stderr
    assert f"resuming {run} from best.json (update {best['step']}, the best model)" in more.stderr
    assert (run / "set-aside" / f"ckpt-{last:08d}.json").exists()
    assert max(r["step"] for r in runs.Metrics(run).read()) == last + 5
    assert any(r["step"] == last for r in map(json.loads, next((run / "set-aside").glob("metrics-*.jsonl"))
                                              .read_text().splitlines()))
    for _ in range(2):                 # the same continuation abandoned twice: set-aside/ keeps both
        aside = snapshot(run / "set-aside")
        again = bptt("resume", run, "--best", "--patience", 100, "--steps", last + 5)
        assert again.returncode == 0, again.stderr
        now = snapshot(run / "set-aside")
        assert all(now.get(name) == data for name, data in aside.items()), "set-aside/ was overwritten"
        assert len(now) > len(aside)
    assert (run / "set-aside" / f"metrics-to-{last + 5}.jsonl.1").exists()


def test_a_second_process_compiles_nothing(tmp_path):
    """Numba's on-disk cache: once one process has compiled the loops, the next loads them."""
    env = os.environ | {"NUMBA_DEBUG_CACHE": "1"}
    for name in ("first", "second"):
        done = bptt("train", *SMALL, "--steps", 2, "--out", tmp_path / name, env=env)
        assert done.returncode == 0, done.stderr
    assert "[cache] data loaded from" in done.stdout
    assert "[cache] data saved to" not in done.stdout


def test_a_short_run_logs_enough_rows_to_draw_its_curve(earlier_run):
    rows = [r for r in runs.Metrics(earlier_run).read() if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 21))             # 20 updates: a row each
    assert all({"grad_norm", "lr", "steps_per_s", "tokens_per_s"} <= set(r) for r in rows)
    assert (earlier_run / "loss.png").stat().st_size > 10_000
