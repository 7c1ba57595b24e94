"""The `bptt` command as a user meets it: runs that finish with their figures last, and
one-line errors (exit status 2, no traceback) for every mistake a user can make."""
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
    assert code == 0 and "baseline, always 1: 0.16667" in out.strip().splitlines()[-1]
    code, out, _ = run(capsys, ["eval", str(tmp_path / "r")])
    assert code == 0 and out.startswith("validation adding")


def test_text_run_samples(tmp_path, capsys):
    corpus = tmp_path / "t.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    code, out, _ = run(capsys, ["train", "--text", str(corpus), "--hidden", "16", "--seq-len", "16",
                                "--batch", "4", "--steps", "10", "--quiet", "--out", str(tmp_path / "t")])
    assert code == 0 and "sample:" in out and "bigram" in out.strip().splitlines()[-1]
    code, out, _ = run(capsys, ["sample", str(tmp_path / "t"), "--length", "40", "--seed", "1", "--prime", "the"])
    assert code == 0 and len(out.rstrip("\n")) == 40
    code, best, _ = run(capsys, ["sample", str(tmp_path / "t"), "--length", "40", "--seed", "1", "--prime", "the",
                                 "--best"])
    assert code == 0 and best == out                   # 10 updates, one evaluation: the best is the last


@pytest.mark.parametrize("argv,message", [
    (["train", "--hidden", "x"], "argument --hidden: invalid int value: 'x'"),
    (["train", "--colour", "red"], "unrecognized arguments: --colour red"),
    (["train", "--cell", "transformer"], "cell: expected one of 'rnn', 'lstm', 'gru' or 'package.module:ClassName', got 'transformer'"),
    (["train", "--task", "adding", "--text", "a.txt"], "text: applies to task='text' only"),
    (["train", "--text", "/no/such/file.txt"], "--text: no such file: /no/such/file.txt"),
    (["train", "--k1", "8", "--k2", "4"], "k2: expected k2 >= k1 = 8, got 4"),
    (["resume", "/no/such/run"], "RUN: no such run folder: /no/such/run"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
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
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("colour = 3\n")
    broken = tmp_path / "broken.toml"
    broken.write_text("hidden = \n")
    empty_run = tmp_path / "empty"
    empty_run.mkdir()
    cases = [(["train", "--text", str(binary)], "is not UTF-8 text"),
             (["train", "--config", str(bad_toml)], "config: hidden expected int, got 'big'"),
             (["train", "--config", str(unknown)], "config: unknown key 'colour'"),
             (["train", "--config", str(broken)], "is not valid TOML"),
             (["sample", str(empty_run)], "has no checkpoint")]
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


def test_python_dash_m_bptt_works():
    out = subprocess.run([sys.executable, "-m", "bptt", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "train" in out.stdout and "resume" in out.stdout
