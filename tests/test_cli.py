"""The `bptt` command as a user meets it: runs that finish with their figures last, and
one-line errors (exit status 2, no traceback) for every mistake a user can make."""
import errno
import os
import subprocess
import sys

import pytest

from bptt.cli import main

SMALL = ["--task", "adding", "--seq-len", "12", "--hidden", "8", "--batch", "8", "--steps", "20",
         "--eval-every", "10", "--checkpoint-every", "10", "--quiet"]


def run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_train_resume_eval_on_a_small_run(tmp_path, capsys):
    code, out, err = run(capsys, ["train", *SMALL, "--out", str(tmp_path / "r")])
    assert code == 0
    assert out.strip().splitlines()[-1].startswith("validation adding: loss ")
    assert (tmp_path / "r" / "loss.png").exists() and (tmp_path / "r" / "metrics.jsonl").exists()
    code, out, _ = run(capsys, ["resume", str(tmp_path / "r"), "--steps", "30", "--quiet"])
    assert code == 0 and "baseline, always 1: 0.15104" in out.strip().splitlines()[-1]     # on its 512 sequences
    code, out, _ = run(capsys, ["eval", str(tmp_path / "r")])
    assert code == 0 and out.startswith("validation adding")


def test_text_run_samples(tmp_path, capsys):
    corpus = tmp_path / "t.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    code, out, _ = run(capsys, ["train", "--text", str(corpus), "--hidden", "16", "--seq-len", "16",
                                "--batch", "4", "--steps", "10", "--quiet", "--out", str(tmp_path / "t")])
    assert code == 0 and "sample:" in out and "bigram" in out.strip().splitlines()[-1]
    code, out, _ = run(capsys, ["sample", str(tmp_path / "t"), "--length", "40", "--seed", "1", "--prime", "the"])
    assert code == 0 and out.startswith("the") and len(out.rstrip("\n")) == 3 + 40     # the prime, then 40 drawn
    code, best, _ = run(capsys, ["sample", str(tmp_path / "t"), "--length", "40", "--seed", "1", "--prime", "the",
                                 "--best"])
    assert code == 0 and best == out                   # 10 updates, one evaluation: the best is the last
    import bptt                                         # a folder of model.save samples as its run does
    bptt.load(tmp_path / "t").save(tmp_path / "m")
    code, saved, _ = run(capsys, ["sample", str(tmp_path / "m"), "--length", "40", "--seed", "1", "--prime", "the"])
    assert code == 0 and saved == out
    code, _, err = run(capsys, ["sample", str(tmp_path / "m"), "--best"])
    assert code == 2 and "--best: " in err and "is a saved model, not a run folder with checkpoints" in err
    code, _, err = run(capsys, ["sample", str(tmp_path / "t"), "--prime", "the Q!"])
    assert code == 2 and err.strip() == ("bptt: error: --prime: characters not in the model's vocabulary: '!Q'; "
                                         "expected a text of its 28 characters")
    bptt.Model("lstm", 2, 4, 1).save(tmp_path / "plain")    # no vocabulary: one line, not a traceback
    code, _, err = run(capsys, ["sample", str(tmp_path / "plain")])
    assert code == 2 and err.strip() == (f"bptt: error: RUN: {tmp_path / 'plain'} holds a model without a "
                                         f"vocabulary (not a character model); sampling needs a text model")


def test_a_sample_reaches_a_stdout_that_cannot_encode_its_characters(tmp_path, capsys, monkeypatch):
    import io

    import bptt
    chars = list("\nab é日\u0301")
    model = bptt.Model("gru", input_size=len(chars), hidden_size=4, output_size=len(chars), head="softmax",
                       loss="cross_entropy", seed=0)
    model.vocabulary = chars
    model.save(tmp_path / "m")
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="ascii"))
    code = main(["sample", str(tmp_path / "m"), "--length", "200", "--seed", "0", "--prime", "é"])
    sys.stdout.flush()
    err = capsys.readouterr().err
    assert code == 0, err                                 # was: exit 2, the sample lost
    out = raw.getvalue().decode("ascii")
    assert out.startswith("\\xe9") and "\\u65e5" in out and "\\u0301" in out
    assert err.count("bptt: stdout: its encoding (ascii) cannot write some characters") == 1


@pytest.mark.parametrize("argv,message", [
    (["train", "--hidden", "x"], "bptt: error: --hidden: expected an integer, got 'x'"),
    (["train", "--lr", "1e"], "bptt: error: --lr: expected a number, got '1e'"),
    (["train", "--hidden", "-3"], "bptt: error: --hidden: expected a positive integer, got -3"),
    (["train", "--cell", "rnn", "--init", "chrono"], "bptt: error: --init: 'chrono' sets gate biases of"),
    (["flow", "--hidden", "x"], "bptt: error: --hidden: expected an integer, got 'x'"),
    (["train", "--colour", "red"], "unrecognized arguments: --colour red"),
    (["train", "--cell", "transformer"], "bptt: error: --cell: expected one of 'rnn', 'lstm', 'gru' or 'package.module:ClassName', got 'transformer'"),
    (["train", "--task", "adding", "--text", "a.txt"], "bptt: error: --text: applies to task='text' only"),
    (["train", "--text", "/no/such/file.txt"], "--text: no such file: /no/such/file.txt"),
    (["train", "--k1", "8", "--k2", "4"], "bptt: error: --k2: expected k2 >= k1 = 8, got 4"),
    (["train", "--task", "adding", "--k2", "6"], "bptt: error: --k2: applies to --task text (streams cut into windows)"),
    (["resume", "/no/such/run"], "RUN: no such run folder: /no/such/run"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["train", "--fresh"], "--fresh: deletes the run in --out to start over; without --out the run gets a new folder"),
    (["flow", "--lr", "0.1"], "--lr: the learning rate of --train, which is 0 (no training)"),
    (["flow", "--gain", "5"], "--gain: the initial gain of --explode, which is not given"),
    (["flow", "--estimators", "rtrl,rtrl"], "--estimators: expected names from"),
    (["flow", "--gain", "3"], "--gain: the initial gain of --explode, which is not given"),
])
def test_bad_options_give_one_line_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        code = main(argv)
        raise SystemExit(code)
    _, err = capsys.readouterr()
    assert exc.value.code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_files_give_one_line_errors(tmp_path, capsys):
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"\xff\xfe\x00 not text" * 20)
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text('hidden = "big"\n')
    bounds = tmp_path / "bounds.toml"
    bounds.write_text("k1 = 9\nk2 = 3\n")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("colour = 3\n")
    broken = tmp_path / "broken.toml"
    broken.write_text("hidden = \n")
    empty_run = tmp_path / "empty"
    empty_run.mkdir()
    cases = [(["train", "--text", str(binary)], "is not UTF-8 text"),
             (["train", "--config", str(bad_toml)], f"bptt: error: hidden in {bad_toml}: expected an integer, got 'big'"),
             (["train", "--config", str(bounds), "--k1", "2", "--k2", "1"],
              "bptt: error: --k2: expected k2 >= k1 = 2, got 1"),               # flags win: named as flags
             (["train", "--config", str(bounds), "--hidden", "8"], f"bptt: error: k2 in {bounds}: expected k2 >= k1"),
             (["train", "--config", str(unknown)], f"bptt: error: --config: {unknown} has an unknown key 'colour'; known keys: "),
             (["train", "--config", str(broken)], "is not valid TOML"),
             (["sample", str(empty_run)], "has no checkpoint"),
             (["train", "--text", ""], "--text: expected the name of a UTF-8 text file, got ''"),
             (["train", "--text", "/dev/null"], "--text: /dev/null is not a regular file"),
             (["train", "--config", str(binary)], "is not UTF-8 text (byte 0: invalid start byte); expected a TOML")]
    for argv, message in cases:
        code, _, err = run(capsys, argv)
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)


def test_config_file_keys_mirror_the_options(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('task = "adding"\nseq_len = 12\nhidden = 8\nbatch = 8\nsteps = 10\nlr = 0.01\n')
    code, out, _ = run(capsys, ["train", "--config", str(cfg), "--steps", "12", "--quiet", "--out", str(tmp_path / "c")])
    assert code == 0
    import json
    saved = json.loads((tmp_path / "c" / "config.json").read_text())
    assert saved["hidden"] == 8 and saved["steps"] == 12 and saved["lr"] == 0.01   # flags win over the file


def test_a_relative_text_in_a_config_file_is_read_from_the_files_folder(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "cfgd"
    folder.mkdir()
    (folder / "small.txt").write_text("the quick brown fox jumps over the lazy dog. " * 100, encoding="utf-8")
    (folder / "c.toml").write_text('text = "small.txt"\nhidden = 8\nseq_len = 16\nbatch = 4\n')
    monkeypatch.chdir(tmp_path)                       # not the file's folder
    code, _, err = run(capsys, ["train", "--config", "cfgd/c.toml", "--steps", "2", "--quiet", "--out", "r"])
    assert code == 0, err
    import json
    assert json.loads((tmp_path / "r" / "config.json").read_text())["text"] == str(folder / "small.txt")


def test_python_dash_m_bptt_works():
    out = subprocess.run([sys.executable, "-m", "bptt", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "train" in out.stdout and "resume" in out.stdout


def test_a_text_run_stands_on_its_own_and_refuses_a_changed_text(tmp_path, capsys, monkeypatch):
    """The checkpoint keeps the vocabulary and the text's SHA-256: sample, export and
    bptt.load need no text file; eval and resume read it again and refuse another text
    (one with the same number of characters would have given wrong figures, no error)."""
    import bptt
    corpus = tmp_path / "t.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    code, _, _ = run(capsys, ["train", "--text", "t.txt", "--hidden", "16", "--seq-len", "16", "--batch", "4",
                              "--steps", "10", "--quiet", "--out", "t"])
    assert code == 0
    sampled = run(capsys, ["sample", "t", "--length", "40", "--seed", "1"])[1]
    figures = run(capsys, ["eval", "t"])[1]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)                     # the run keeps the text's absolute path
    assert run(capsys, ["eval", str(tmp_path / "t")])[1] == figures
    corpus.rename(tmp_path / "moved.txt")
    assert run(capsys, ["sample", str(tmp_path / "t"), "--length", "40", "--seed", "1"])[1] == sampled
    assert bptt.load(tmp_path / "t").vocabulary == sorted(set("the quick brown fox jumps over the lazy dog. "))
    code, _, err = run(capsys, ["eval", str(tmp_path / "t")])
    assert code == 2 and f"RUN: {tmp_path / 't'} trained on the text {corpus}, which cannot be read now " \
                          f"(no such file: {corpus})" in err
    corpus.write_text("THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG, " * 200, encoding="utf-8")
    for argv in (["eval", str(tmp_path / "t")], ["resume", str(tmp_path / "t"), "--steps", "20"]):
        code, _, err = run(capsys, argv)
        assert code == 2 and f"RUN: the run's text file: {corpus} is not the text this run trained on: its SHA-256 " \
                             f"differs" in err


def test_eval_and_resume_take_a_moved_text_with_the_same_sha256(tmp_path, capsys, monkeypatch):
    """--text gives eval and resume the run's text where it moved: the same figures, a
    resume that goes on, config.json with the new path; a different text, or --text for a
    run on the built-in corpus, is refused."""
    import json
    corpus = tmp_path / "t.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    run_dir = str(tmp_path / "t")
    code, _, _ = run(capsys, ["train", "--text", str(corpus), "--hidden", "16", "--seq-len", "16", "--batch", "4",
                              "--steps", "10", "--quiet", "--out", run_dir])
    assert code == 0
    figures = run(capsys, ["eval", run_dir])[1]
    moved = corpus.rename(tmp_path / "moved.txt")
    code, _, err = run(capsys, ["eval", run_dir])
    assert code == 2 and f'--text PATH (eval, resume) or the "text" of {tmp_path / "t" / "config.json"} gives ' \
                         f'them its new place' in err
    assert run(capsys, ["eval", run_dir, "--text", str(moved)]) == (0, figures, "")
    code, _, err = run(capsys, ["eval", run_dir, "--text", str(tmp_path / "nowhere.txt")])
    assert code == 2 and err.strip() == f"bptt: error: --text: no such file: {tmp_path / 'nowhere.txt'}"
    code, _, err = run(capsys, ["resume", run_dir, "--steps", "20", "--quiet", "--text", str(moved)])
    assert code == 0 and f"text: {moved} (the checkpoint has {corpus}); the same SHA-256" in err
    assert json.loads((tmp_path / "t" / "config.json").read_text())["text"] == str(moved)
    assert json.loads((tmp_path / "t" / "ckpt-00000020.json").read_text())["config"]["text"] == str(moved)
    assert run(capsys, ["eval", run_dir])[0] == 0                  # the newest checkpoint names the new path
    again = moved.rename(tmp_path / "again.txt")                   # config.json edited to the new place
    saved = json.loads((tmp_path / "t" / "config.json").read_text())
    (tmp_path / "t" / "config.json").write_text(json.dumps(saved | {"text": str(again)}))
    code, figures, _ = run(capsys, ["eval", run_dir])              # eval reads it there too
    assert code == 0
    beside = again.rename(tmp_path / "t" / "beside.txt")            # a relative path: from the run's folder
    (tmp_path / "t" / "config.json").write_text(json.dumps(saved | {"text": "beside.txt"}))
    monkeypatch.chdir(tmp_path)
    assert run(capsys, ["eval", run_dir]) == (0, figures, "")
    again = beside.rename(tmp_path / "again.txt")
    (tmp_path / "t" / "config.json").write_text(json.dumps(saved | {"text": str(again)}))
    code, _, err = run(capsys, ["resume", run_dir, "--steps", "25", "--quiet"])
    assert code == 0 and f"text: {again} (the checkpoint has {moved}); the same SHA-256" in err
    moved = again
    other = tmp_path / "other.txt"
    other.write_text("THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG, " * 200, encoding="utf-8")
    for argv in (["eval", run_dir, "--text", str(other)], ["resume", run_dir, "--steps", "40", "--text", str(other)]):
        code, _, err = run(capsys, argv)
        assert code == 2 and f"--text: {other} is not the text this run trained on: its SHA-256 differs" in err
    assert json.loads((tmp_path / "t" / "config.json").read_text())["text"] == str(moved)   # a refusal changes nothing
    code, _, _ = run(capsys, ["train", *SMALL, "--out", str(tmp_path / "a")])
    code, _, err = run(capsys, ["eval", str(tmp_path / "a"), "--text", str(moved)])
    assert code == 2 and "--text: this run trained on the adding task, not on a text file" in err


def test_a_relative_text_in_config_json_is_read_from_the_run_folder_and_kept_relative(tmp_path, capsys,
                                                                                      monkeypatch):
    """config.json's text "corpus.txt" names the file beside it, from any working directory;
    a resume keeps it relative, so the folder moves whole; a missing one is named as
    config.json's."""
    import json
    corpus = tmp_path / "t.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    run_dir = tmp_path / "r"
    assert run(capsys, ["train", "--text", str(corpus), "--hidden", "16", "--seq-len", "16", "--batch", "4",
                        "--steps", "10", "--quiet", "--out", str(run_dir)])[0] == 0
    figures = run(capsys, ["eval", str(run_dir)])[1]
    corpus.rename(run_dir / "corpus.txt")
    saved = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps(saved | {"text": "corpus.txt"}))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert run(capsys, ["eval", str(run_dir)]) == (0, figures, "")
    code, _, err = run(capsys, ["resume", str(run_dir), "--steps", "20", "--quiet"])
    assert code == 0 and "text:" in err and str(run_dir / "corpus.txt") in err
    assert json.loads((run_dir / "config.json").read_text())["text"] == "corpus.txt"
    moved = run_dir.rename(tmp_path / "moved")
    code, figures, _ = run(capsys, ["eval", str(moved)])
    assert code == 0 and figures.startswith("validation: ")
    (moved / "corpus.txt").unlink()
    code, _, err = run(capsys, ["eval", str(moved)])
    assert code == 2 and f"RUN: {moved / 'config.json'} names the run's text as {moved / 'corpus.txt'}, which " \
                         f"cannot be read now" in err


def test_a_run_that_failed_before_its_first_update_leaves_its_folder_to_the_next(tmp_path, capsys, monkeypatch):
    """Sizes beyond memory fail in the first update, after config.json is written: the same
    --out then takes the next run without --fresh (there is nothing to keep), while a run
    with a metrics row is still refused."""
    from bptt.train import trainer
    out = str(tmp_path / "r")
    real = trainer.Trainer.update
    def too_large(self):
        raise MemoryError("Unable to allocate 2.84 PiB")
    monkeypatch.setattr(trainer.Trainer, "update", too_large)
    code, _, err = run(capsys, ["train", *SMALL, "--out", out])
    assert code == 2 and "not enough memory" in err and f"no checkpoint was written, nothing to resume (in {out})" in err
    assert sorted(p.name for p in (tmp_path / "r").iterdir() if p.name != ".lock") == ["config.json", "metrics.jsonl"]
    monkeypatch.setattr(trainer.Trainer, "update", real)
    code, out_text, err = run(capsys, ["train", *SMALL, "--out", out])
    assert code == 0 and err == "" and (tmp_path / "r" / "ckpt-00000020.json").exists()
    for checkpoint in (tmp_path / "r").glob("ckpt-*"):
        checkpoint.unlink()
    for name in ("best.json", "best.safetensors", "loss.png"):
        (tmp_path / "r" / name).unlink()
    code, _, err = run(capsys, ["train", *SMALL, "--out", out])       # metrics rows: refused
    assert code == 2 and "holds a run that stopped before its first checkpoint" in err


def test_a_signal_during_the_last_evaluation_says_the_run_is_complete(tmp_path, capsys, monkeypatch):
    """SIGINT while the last update's evaluation runs: the update is saved, the loss curve
    drawn, exit status 130, and the line says the run is complete rather than sending the
    user to resume it."""
    import os
    import signal
    from bptt.train import trainer
    evaluate = trainer.Trainer.evaluate
    def interrupted_at_the_end(self):
        if self.step == self.config.steps:
            os.kill(os.getpid(), signal.SIGINT)
        return evaluate(self)
    monkeypatch.setattr(trainer.Trainer, "evaluate", interrupted_at_the_end)
    code, out, err = run(capsys, ["train", *SMALL, "--out", str(tmp_path / "r")])
    assert code == 130 and out == ""
    assert err.strip() == (f"bptt: SIGINT: stopped after update 20, saved as {tmp_path / 'r' / 'ckpt-00000020.json'}; "
                           f"the run is complete (its last update); its final sample and figures were not printed")
    assert (tmp_path / "r" / "loss.png").stat().st_size > 0          # the run's curve is drawn all the same


@pytest.mark.parametrize("where", ["plot", "figures"])
@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_after_the_last_update_says_the_run_is_complete(tmp_path, capsys, monkeypatch, where, signum):
    """A signal while the loss plot is drawn (the training loop's handlers) or while the
    final figures are printed (after them): exit 128 + the signal, one line, and the run
    complete rather than waiting for a resume. SIGHUP releases the terminal first, once."""
    import os
    import signal
    from bptt import cli
    from bptt.train import signals, trainer
    released = []
    monkeypatch.setattr(signals, "release_terminal", lambda: released.append(1))
    monkeypatch.setattr(cli, "release_terminal", lambda: released.append(1))
    def signalled(*args, **kwargs):
        os.kill(os.getpid(), getattr(signal, signum))
        return ""
    target = (trainer.Trainer, "plot") if where == "plot" else (cli, "_figures")
    monkeypatch.setattr(*target, signalled)
    code, _, err = run(capsys, ["train", *SMALL, "--out", str(tmp_path / "r")])
    assert code == 128 + getattr(signal, signum) and err.count("\n") == 1, err
    assert "the run is complete" in err and "ckpt-00000020.json" in err and "bptt resume" not in err, err
    assert released == ([1] if signum == "SIGHUP" else [])
    if where == "figures":
        assert err.startswith({"SIGINT": "bptt: interrupted;", "SIGTERM": "bptt: terminated;",
                               "SIGHUP": "bptt: hung up;"}[signum]), err


def test_signals_at_the_last_evaluation_name_what_is_left(tmp_path, capsys, monkeypatch):
    """Two signals at the last update's evaluation stop before its checkpoint: the run is
    not complete, resume continues it. One signal at the evaluation where --patience ends
    the run: complete, as resume would refuse it. SIGTERM while a cell module imports:
    exit 143, not an import error."""
    import os
    import signal
    from bptt.train import trainer
    evaluate = trainer.Trainer.evaluate
    def twice_at_20(self):
        if self.step == 20:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return evaluate(self)
    monkeypatch.setattr(trainer.Trainer, "evaluate", twice_at_20)
    code, _, err = run(capsys, ["train", *SMALL, "--out", str(tmp_path / "a")])
    assert code == 130 and "second SIGINT: stopped at once; the last complete checkpoint is" in err and \
        "ckpt-00000010.json (`bptt resume" in err, err
    monkeypatch.setattr(trainer.Trainer, "_judge", lambda self, figures: setattr(self, "stale", self.stale + 1))
    def once_at_20(self):
        if self.step == 20:
            os.kill(os.getpid(), signal.SIGINT)
        return evaluate(self)
    monkeypatch.setattr(trainer.Trainer, "evaluate", once_at_20)
    code, _, err = run(capsys, ["train", *SMALL, "--steps", "40", "--eval-every", "20", "--patience", "1",
                                "--out", str(tmp_path / "p")])
    assert code == 130 and "stopped after update 20" in err and "the run is complete" in err, err
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "slow_cell.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
    code, _, err = run(capsys, ["train", *SMALL, "--cell", "slow_cell:X", "--out", str(tmp_path / "t")])
    assert code == 143 and err.startswith("bptt: terminated"), err


def test_fresh_deletes_the_run_and_keeps_files_that_are_not_its_own(tmp_path, capsys):
    out = tmp_path / "r"
    assert run(capsys, ["train", *SMALL, "--out", str(out)])[0] == 0
    (out / "ckpt-notes.json").write_text("{}")
    (out / "mine.txt").write_text("kept")
    assert run(capsys, ["train", *SMALL, "--steps", "10", "--out", str(out), "--fresh"])[0] == 0
    assert (out / "ckpt-notes.json").read_text() == "{}" and (out / "mine.txt").read_text() == "kept"
    assert sorted(p.name for p in out.glob("ckpt-*")) == ["ckpt-00000010.json", "ckpt-00000010.safetensors",
                                                           "ckpt-notes.json"]


def test_a_bad_value_in_config_json_names_the_file_and_none_keeps_the_runs_own(tmp_path, capsys):
    import json
    from bptt.train.trainer import Trainer
    out = tmp_path / "r"
    assert run(capsys, ["train", *SMALL, "--out", str(out)])[0] == 0
    saved = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(saved | {"steps": "abc"}))
    code, _, err = run(capsys, ["resume", str(out)])
    assert code == 2 and err.startswith(f"bptt: error: RUN: {out / 'config.json'}: ") and "steps" in err, err
    (out / "config.json").write_text(json.dumps(saved | {"steps": 30}))
    trainer = Trainer.resume(out, steps=None, patience=None)
    assert trainer.config.steps == 30 and trainer.config.patience is None
    trainer._lock.release()


def test_a_run_that_is_not_a_folder_path_is_named(tmp_path, capsys):
    from bptt.train.trainer import Trainer
    (tmp_path / "f").write_text("not a run")
    for call, message in [(lambda: Trainer.load(None), "RUN: expected the path of a run folder, got NoneType None"),
                          (lambda: Trainer.resume(123), "RUN: expected the path of a run folder, got int 123"),
                          (lambda: Trainer.load(tmp_path / "f"), f"RUN: {tmp_path / 'f'} is a file; expected a run folder")]:
        with pytest.raises(ValueError) as raised:
            call()
        assert str(raised.value) == message
    for command in ("eval", "export"):
        code, _, err = run(capsys, [command, str(tmp_path / "f")] + (["--onnx", "m.onnx"] if command == "export" else []))
        assert code == 2 and err.strip() == f"bptt: error: RUN: {tmp_path / 'f'} is a file; expected a run folder", \
            (command, err)


def test_options_a_new_run_would_ignore_are_refused(tmp_path, capsys):
    out = str(tmp_path / "r")
    for argv, message in [
            (["--task", "adding", "--k1", "4"], "--k1: applies to --task text"),
            (["--task", "copy", "--k2", "400"], "--k2: applies to --task text"),
            (["--checkpointing", "8"], "--checkpointing: applies to the synthetic tasks"),
            (["--task", "adding", "--warmup", "50", "--steps", "40"], "--warmup: expected fewer updates than "
                                                                      "--steps 40"),
            (["--cell", ":"], "cell: expected 'package.module:ClassName' (a module and a class in it), got ':'"),
            (["--cell", "gru", "--forget-bias", "1"], "forget-bias: applies to --cell lstm only, got --cell gru"),
            (["--on-nonfinite", "maybe"], "on-nonfinite: expected one of 'stop', 'skip', got 'maybe'")]:
        code, _, err = run(capsys, ["train", *argv, "--out", out])
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "r").exists()


def test_a_run_that_stopped_before_its_first_checkpoint_is_not_sent_to_resume(tmp_path, capsys):
    """A run stopped before its first checkpoint (docs/diagnostics.md's explosion at step 38
    of 50) leaves config.json and metrics.jsonl: its folder without the checkpoints."""
    argv = ["train", *SMALL, "--out", str(tmp_path / "r")]
    assert run(capsys, argv)[0] == 0
    for checkpoint in (tmp_path / "r").glob("*.safetensors"):
        checkpoint.unlink()
        checkpoint.with_suffix(".json").unlink()
    code, _, err = run(capsys, argv)
    assert code == 2 and "holds a run that stopped before its first checkpoint (nothing to resume); --fresh " \
                         "deletes it and starts over" in err and "bptt resume" not in err


def test_an_export_error_names_the_file_asked_for(tmp_path, capsys):
    pytest.importorskip("onnx")
    code, _, _ = run(capsys, ["train", *SMALL, "--out", str(tmp_path / "r")])
    assert code == 0
    (tmp_path / "d.onnx").mkdir()
    code, _, err = run(capsys, ["export", str(tmp_path / "r"), "--onnx", str(tmp_path / "d.onnx")])
    assert code == 2 and err == f"bptt: error: --onnx: expected a file name, got {str(tmp_path / 'd.onnx')!r} " \
                                f"(a folder)\n", err
    (tmp_path / "f").write_text("")
    for target, why in ((tmp_path / "no" / "x.onnx", "does not exist"), (tmp_path / "f" / "x.onnx", "is a file")):
        code, _, err = run(capsys, ["export", str(tmp_path / "r"), "--onnx", str(target)])
        assert code == 2 and err == f"bptt: error: --onnx: expected a file in an existing folder, got " \
                                    f"{str(target)!r} ({target.parent} {why})\n", err
    code, _, err = run(capsys, ["train", *SMALL, "--out", str(tmp_path / "f" / "sub")])
    assert code == 2 and f"--out: expected a folder for the run, got {tmp_path / 'f' / 'sub'} ({tmp_path / 'f'} " \
                         f"is a file)" in err


def test_export_refuses_an_existing_file_unless_told_to_overwrite_it(tmp_path, capsys):
    """An existing --onnx FILE is refused before the run is read (nothing written, the file
    as it was); --overwrite replaces it, through a link to it where --onnx is one."""
    pytest.importorskip("onnx")
    assert run(capsys, ["train", *SMALL, "--out", str(tmp_path / "r")])[0] == 0
    mine = tmp_path / "m.onnx"
    mine.write_bytes(b"my own file")
    refused = (f"bptt: error: --onnx: expected a new file, got {str(mine)!r} (it exists); remove it, choose "
               f"another name, or pass --overwrite to replace it\n")
    for target in (tmp_path / "r", tmp_path / "no-such-run"):         # checked before RUN is read
        code, out, err = run(capsys, ["export", str(target), "--onnx", str(mine)])
        assert code == 2 and out == "" and err == refused, err
    assert mine.read_bytes() == b"my own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "r"]
    link = tmp_path / "link.onnx"
    link.symlink_to(mine)
    code, out, err = run(capsys, ["export", str(tmp_path / "r"), "--onnx", str(link), "--overwrite"])
    assert code == 0 and err == "" and out.startswith(f"wrote {link}: ")
    assert link.is_symlink() and link.resolve() == mine             # written through the link, as open() would
    import onnx
    onnx.checker.check_model(onnx.load(str(mine)))


def test_export_of_a_model_onnx_cannot_express_names_the_run(tmp_path, capsys):
    """The error named "model:", which is no argument of the command."""
    pytest.importorskip("onnx")
    import bptt
    bptt.Model("gru", 3, 4, 2, layer_norm=True).save(tmp_path / "m")
    mine = tmp_path / "m.onnx"
    mine.write_bytes(b"my own file")
    code, out, err = run(capsys, ["export", str(tmp_path / "m"), "--onnx", str(mine), "--overwrite"])
    assert (code, out) == (2, "") and err == (f"bptt: error: RUN: {tmp_path / 'm'}: model: layer_norm=True has no "
                                              f"ONNX operator (ONNX's GRU computes the plain cell); export a model "
                                              f"without it\n"), err
    assert mine.read_bytes() == b"my own file"


def test_eval_of_a_saved_model_says_it_needs_a_run(tmp_path, capsys):
    """eval and resume of a model.save folder say what the folder holds and what they need
    (not only "has no checkpoint", "is not a run", or "written at the first evaluation")."""
    import bptt
    bptt.Model("gru", 3, 4, 2).save(tmp_path / "m")
    hint = ("it holds a model.save (model.json), which `bptt sample` and `export` read, where this needs a run "
            "folder of `bptt train`\n")
    code, out, err = run(capsys, ["eval", str(tmp_path / "m")])
    assert (code, out, err) == (2, "", f"bptt: error: RUN: {tmp_path / 'm'} has no checkpoint (ckpt-*.json with its "
                                       f".safetensors); {hint}")
    code, out, err = run(capsys, ["eval", str(tmp_path / "m"), "--best"])
    assert (code, out, err) == (2, "", f"bptt: error: --best: {tmp_path / 'm'} has no best model (best.json with "
                                       f"best.safetensors); {hint}")
    code, out, err = run(capsys, ["resume", str(tmp_path / "m")])
    assert (code, out, err) == (2, "", f"bptt: error: RUN: {tmp_path / 'm'} is not a run (no config.json or "
                                       f"checkpoint of bptt's); {hint}")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.safetensors"]


def test_a_text_file_from_a_config_file_is_named_as_its_key_there(tmp_path, capsys):
    """A text file that cannot be read is named where it was given: the text key of the
    --config file, or --text on the command line (which wins over the file)."""
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('task = "text"\ntext = "gone.txt"\nhidden = 8\n')
    out = tmp_path / "r"
    code, _, err = run(capsys, ["train", "--config", str(cfg), "--steps", "2", "--quiet", "--out", str(out)])
    assert code == 2 and err == f"bptt: error: text in {cfg}: no such file: {tmp_path / 'gone.txt'}\n", err
    (tmp_path / "gone.txt").mkdir()
    code, _, err = run(capsys, ["train", "--config", str(cfg), "--steps", "2", "--quiet", "--out", str(out)])
    assert code == 2 and err == (f"bptt: error: text in {cfg}: {tmp_path / 'gone.txt'} is a folder; expected a "
                                 f"UTF-8 text file\n"), err
    code, _, err = run(capsys, ["train", "--config", str(cfg), "--text", str(tmp_path / "nor.txt"), "--steps", "2",
                                "--quiet", "--out", str(out)])
    assert code == 2 and err == f"bptt: error: --text: no such file: {tmp_path / 'nor.txt'}\n", err
    (tmp_path / "short.txt").write_text("a short text\n" * 10)              # too short for 32 streams
    cfg.write_text('task = "text"\ntext = "short.txt"\nhidden = 8\n')
    code, _, err = run(capsys, ["train", "--config", str(cfg), "--steps", "2", "--quiet", "--out", str(out)])
    assert code == 2 and err.startswith(f"bptt: error: text in {cfg}: {tmp_path / 'short.txt'} gives "), err
    assert not out.exists()


def test_eval_names_a_checkpoint_cut_short_and_reads_the_one_before(tmp_path, capsys):
    import shutil
    run_dir, at_10 = tmp_path / "r", tmp_path / "at-10"
    assert run(capsys, ["train", *SMALL, "--out", str(run_dir)])[0] == 0
    shutil.copytree(run_dir, at_10)
    for later in at_10.glob("ckpt-00000020.*"):
        later.unlink()
    code, expected, err = run(capsys, ["eval", str(at_10)])
    assert code == 0 and err == ""
    (run_dir / "ckpt-00000020.safetensors").unlink()
    code, out, err = run(capsys, ["eval", str(run_dir)])
    assert code == 0 and out == expected
    assert err == "bptt: ckpt-00000020.json has no ckpt-00000020.safetensors (a checkpoint cut short); " \
                  "reading the newest complete one\n"
    assert (run_dir / "ckpt-00000020.json").exists()                   # eval changes nothing


def test_a_run_that_skipped_updates_says_how_many(tmp_path, capsys):
    code, out, _ = run(capsys, ["train", "--task", "adding", "--cell", "rnn", "--nonlinearity", "identity", "--init",
                                "identity", "--seq-len", "400", "--clip-norm", "1e30", "--lr", "0.1", "--hidden", "16",
                                "--steps", "30", "--on-nonfinite", "skip", "--quiet", "--out", str(tmp_path / "s")])
    import json
    skipped = json.loads((tmp_path / "s" / "ckpt-00000030.json").read_text())["skipped"]
    assert code == 0 and skipped > 0
    assert f"skipped {skipped} of 30 updates: their gradient was not finite (--on-nonfinite skip)" in out


def test_sizes_beyond_memory_are_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    from bptt.train import trainer
    def too_large(*args, **kwargs):
        raise MemoryError("Unable to allocate 2.84 PiB for an array with shape (40000000, 10000000) and data type "
                          "float64")
    monkeypatch.setattr(trainer, "model_for", too_large)
    code, _, err = run(capsys, ["train", "--task", "adding", "--hidden", "10000000", "--out", str(tmp_path / "big")])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("bptt: error: not enough memory for these sizes (Unable to allocate 2.84 PiB") and \
        "expected a smaller --hidden, --batch or --seq-len" in err


def test_a_config_json_alone_is_not_taken_for_a_run_that_failed_in_its_first_update(tmp_path, capsys, monkeypatch):
    """Only config.json beside an empty metrics.jsonl (what a run that failed in its first
    update leaves) is taken over without --fresh; config.json alone is refused, as it was,
    and --fresh starts over there."""
    from bptt.train import trainer
    failed, alone = tmp_path / "failed", tmp_path / "alone"
    real = trainer.Trainer.update
    def too_large(self):
        raise MemoryError("Unable to allocate 2.84 PiB")
    monkeypatch.setattr(trainer.Trainer, "update", too_large)
    assert run(capsys, ["train", *SMALL, "--out", str(failed)])[0] == 2
    monkeypatch.setattr(trainer.Trainer, "update", real)
    assert sorted(p.name for p in failed.iterdir() if p.name != ".lock") == ["config.json", "metrics.jsonl"]
    assert (failed / "metrics.jsonl").read_bytes() == b""
    alone.mkdir()
    (alone / "config.json").write_bytes((failed / "config.json").read_bytes())
    short = ["--steps", "2", "--eval-every", "2", "--checkpoint-every", "2", "--hidden", "4"]
    code, out, err = run(capsys, ["train", *SMALL, *short, "--out", str(alone)])
    assert (code, out) == (2, "") and err == (f"bptt: error: --out: {alone} holds a run that stopped before its "
                                              f"first checkpoint (nothing to resume); --fresh deletes it and starts "
                                              f"over\n"), err
    assert [p.name for p in alone.iterdir()] == ["config.json"]
    assert (alone / "config.json").read_bytes() == (failed / "config.json").read_bytes()
    code, _, err = run(capsys, ["train", *SMALL, *short, "--out", str(failed)])      # the failed run: taken over
    assert code == 0 and err == "" and (failed / "ckpt-00000002.json").exists()
    code, _, err = run(capsys, ["train", *SMALL, *short, "--out", str(alone), "--fresh"])
    assert code == 0 and err == "" and (alone / "ckpt-00000002.json").exists()


@pytest.mark.parametrize("command", ["resume", "eval", "sample", "export"])
@pytest.mark.parametrize("name", ["", " "])
def test_an_empty_run_name_is_named_as_one(command, name, tmp_path, capsys, monkeypatch):
    """RUN "" is not the working directory: one line, as train --out "" is, nothing written."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, [command, name] + (["--onnx", "x.onnx"] if command == "export" else []))
    assert (code, out) == (2, "") and err == f"bptt: error: RUN: expected a run folder's name, got {name!r}\n", err
    assert list(tmp_path.iterdir()) == []


class _FullStdout:
    """A stdout on a full disk: a write fails (unbuffered), or only the flush (buffered)."""

    def __init__(self, at="write"):
        self.at = at

    def write(self, text):
        if self.at == "write":
            raise OSError(errno.ENOSPC, "No space left on device")
        return len(text)

    def flush(self):
        if self.at == "flush":
            raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("at", ["write", "flush"])
def test_a_stdout_that_cannot_be_written_is_named(at, tmp_path, capsys, monkeypatch):
    """sample, eval and explain printing into a full disk: `stdout: No space left on
    device`, exit 1 (it named None, or the run)."""
    corpus = tmp_path / "t.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    run_dir = tmp_path / "t"
    assert run(capsys, ["train", "--text", str(corpus), "--hidden", "8", "--seq-len", "16", "--batch", "4",
                        "--steps", "2", "--quiet", "--out", str(run_dir)])[0] == 0
    before = sorted(p.name for p in run_dir.iterdir())
    for argv in (["sample", str(run_dir), "--length", "10", "--seed", "1"], ["eval", str(run_dir)], ["explain"]):
        monkeypatch.setattr(sys, "stdout", _FullStdout(at))
        code = main(argv)
        monkeypatch.undo()
        assert code == 1 and capsys.readouterr().err == "bptt: error: stdout: No space left on device\n", argv
    assert sorted(p.name for p in run_dir.iterdir()) == before


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("unbuffered", [False, True])
def test_a_full_stdout_is_one_line_and_exit_status_1(unbuffered):
    """`bptt explain > /dev/full`, stdout buffered or not: one line naming stdout, exit 1
    (buffered, the interpreter's flush at exit failed again: a second message, exit 120)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | ({"PYTHONUNBUFFERED": "1"}
                                                                             if unbuffered else {})
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "bptt", "explain"], stdout=full, stderr=subprocess.PIPE,
                              text=True, env=env, timeout=120, check=False)
    assert (done.returncode, done.stderr) == (1, "bptt: error: stdout: No space left on device\n")


def test_a_name_longer_than_the_file_system_takes_is_one_line(tmp_path, capsys, monkeypatch):
    """A name the OS refuses (ENAMETOOLONG) is named in one line, exit 1, for every command
    that reads a run, and resume is not sent back to itself."""
    monkeypatch.chdir(tmp_path)
    name = "x" * 300
    for argv in (["resume", name], ["eval", name], ["sample", name], ["export", name, "--onnx", "m.onnx"]):
        code, out, err = run(capsys, argv)
        assert (code, out, err) == (1, "", f"bptt: error: {name}: File name too long\n"), argv


def test_a_run_folder_that_cannot_be_read_is_named_not_said_to_have_no_checkpoint(tmp_path, capsys, monkeypatch):
    """A run folder whose permissions forbid listing it (chmod a-r) listed no checkpoint, so
    eval, sample, export, resume and flow --run said it had none; it is refused as
    unreadable, and nothing in it changes."""
    run_dir = tmp_path / "r"
    code, _, _ = run(capsys, ["train", *SMALL, "--out", str(run_dir)])
    assert code == 0
    before = sorted(p.name for p in run_dir.iterdir())
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if os.fspath(path) == str(run_dir)
                        and mode & os.R_OK else real_access(path, mode, **kw))     # root reads any folder
    expected = (f"expected a run folder bptt can read, got {run_dir} (not readable: its permissions forbid "
                f"listing or opening its files)")
    run_dir.chmod(0o300)
    try:
        for argv in (["eval", str(run_dir)], ["sample", str(run_dir)], ["resume", str(run_dir), "--steps", "30"],
                     ["export", str(run_dir), "--onnx", str(tmp_path / "m.onnx")],
                     ["flow", "--run", str(run_dir), "--out", str(tmp_path / "f")]):
            code, out, err = run(capsys, argv)
            option = "--run" if argv[0] == "flow" else "RUN"
            assert (code, out, err) == (2, "", f"bptt: error: {option}: {expected}\n"), argv
    finally:
        run_dir.chmod(0o755)
    assert sorted(p.name for p in run_dir.iterdir()) == before
    assert not (tmp_path / "f").exists() and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("option,value", [("--hidden", "99999999999999999999"), ("--batch", "9223372036854775807"),
                                          ("--seq-len", "2147483648"), ("--layers", "99999999999999999999")])
def test_a_size_past_what_an_array_can_hold_names_its_option(tmp_path, capsys, monkeypatch, option, value):
    """--hidden 99999999999999999999 ended in a TypeError traceback from NumPy, and --batch
    2**63 - 1 in "Maximum allowed dimension exceeded", naming no option (--layers: a loop
    building layers until memory ran out); each is refused before anything is made."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, ["train", "--task", "adding", option, value, "--steps", "2", "--quiet"])
    assert (code, out, err) == (2, "", f"bptt: error: {option}: expected a positive integer up to 2147483647 "
                                       f"(2**31 - 1), got {value}\n")
    assert list(tmp_path.iterdir()) == []


def test_a_config_file_with_a_byte_order_mark_is_read(tmp_path, capsys):
    """A TOML file saved with a UTF-8 byte-order mark (Notepad's UTF-8) was refused as `not
    valid TOML: Invalid statement (at line 1, column 1)`; the mark is dropped, as from --text."""
    config = tmp_path / "bom.toml"
    config.write_bytes(b"\xef\xbb\xbf" + 'hidden = 6\ntask = "adding"\nseq_len = 6\n'.encode())
    code, _, err = run(capsys, ["train", "--config", str(config), "--steps", "2", "--quiet",
                                "--out", str(tmp_path / "r")])
    assert code == 0, err
    import json
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (saved["hidden"], saved["task"], saved["seq_len"]) == (6, "adding", 6)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["train", "--help"]])
def test_help_into_a_stdout_that_cannot_take_it_is_one_line(argv):
    """argparse dropped the error of writing --help or --version and exited 0 with nothing
    written; it is exit 1 and one line naming stdout, as for every other command."""
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "bptt", *argv], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=120, check=False)
    assert (done.returncode, done.stderr) == (1, "bptt: error: stdout: No space left on device\n")
    piped = subprocess.run([sys.executable, "-m", "bptt", *argv], capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and piped.stdout and not piped.stderr
