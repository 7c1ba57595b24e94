"""Checkpoints and configs are untrusted input: every damaged or foreign file is refused with
an error that names what is wrong, and nothing in the project can unpickle."""
import json
import re
from pathlib import Path

import pytest

from bptt.cli import main
from bptt.train import runs
from bptt.train.config import Config
from bptt.train.trainer import Trainer

SRC = Path(__file__).resolve().parents[1] / "src" / "bptt"


@pytest.fixture()
def run_dir(tmp_path):
    c = Config(task="adding", cell="gru", hidden=8, seq_len=10, batch=4, steps=4, checkpoint_every=2,
               eval_every=2, dtype="float64", out=str(tmp_path / "run"))
    Trainer(c).train(progress=False)
    return tmp_path / "run"


def newest(run_dir):
    return runs.checkpoints(run_dir)[-1]


def refused(run_dir, pattern):
    with pytest.raises(ValueError, match=pattern):
        Trainer.resume(run_dir)


def test_a_truncated_tensor_file_is_refused_and_the_previous_checkpoint_named(run_dir):
    tensors = newest(run_dir).with_suffix(".safetensors")
    tensors.write_bytes(tensors.read_bytes()[:-100])
    refused(run_dir, r"ckpt-00000004.safetensors does not match the SHA-256 .* truncated, corrupted "
                     r"or was changed; the previous checkpoint ckpt-00000002.json may be intact")


def test_one_flipped_bit_in_a_weight_is_refused(run_dir):
    tensors = newest(run_dir).with_suffix(".safetensors")
    data = bytearray(tensors.read_bytes())
    data[-9] ^= 0x01                                  # inside the last tensor's values
    tensors.write_bytes(bytes(data))
    refused(run_dir, "does not match the SHA-256")


def test_a_tensor_file_swapped_for_another_is_refused(run_dir):
    older, latest = runs.checkpoints(run_dir)
    latest.with_suffix(".safetensors").write_bytes(older.with_suffix(".safetensors").read_bytes())
    refused(run_dir, "does not match the SHA-256")


def test_the_intact_previous_checkpoint_resumes_once_the_broken_one_is_moved(run_dir):
    latest = newest(run_dir)
    latest.with_suffix(".safetensors").write_bytes(b"\x00" * 10)
    refused(run_dir, "may be intact")
    latest.unlink()                                   # the user moves the broken one away
    assert Trainer.resume(run_dir).step == 2


@pytest.mark.parametrize("edit,pattern", [
    (lambda m: m["config"].update(hidden="8"), r"config: hidden expected an integer, got '8'"),
    (lambda m: m["config"].update(hidden=16), r"checkpoint layer0.W_x is \(24, 2\) float64, the model expects "
                                              r"\(48, 2\) float64"),
    (lambda m: m["config"].update(dtype="float32"), r"float64, the model expects .* float32"),
    (lambda m: m["config"].update(cell="lstm"), r"do not match the model of its config"),
    (lambda m: m["config"].update(colour="red"), r"config: unknown key 'colour'"),
    (lambda m: m.update(step="4"), r"step must be an integer >= 0, got '4'"),
    (lambda m: m.update(step=-1), r"step must be an integer >= 0, got -1"),
    (lambda m: m.update(format=99), r"has format 99, expected 2"),
    (lambda m: m.pop("sha256"), r"checkpoint ckpt-00000004.json records no SHA-256 of ckpt-00000004.safetensors"),
    (lambda m: m["rng"].update(bit_generator="MT19937"), r"the checkpoint at update 4 holds no valid random-generator"),
    (lambda m: m.pop("rng"), r"the checkpoint at update 4 holds no valid random-generator state \(rng: 'rng'\)"),
])
def test_a_json_with_wrong_types_or_another_model_is_refused(run_dir, edit, pattern):
    meta_path = newest(run_dir)
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))
    refused(run_dir, pattern)


def test_a_json_that_is_not_json_is_refused(run_dir):
    newest(run_dir).write_text("{not json")
    refused(run_dir, "ckpt-00000004.json is unreadable")


def test_the_command_reports_a_broken_checkpoint_in_one_line(run_dir, capsys):
    newest(run_dir).with_suffix(".safetensors").write_bytes(b"garbage")
    assert main(["resume", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "SHA-256" in err and "Traceback" not in err


def test_nothing_in_the_project_can_unpickle():
    risky = re.compile(r"\bimport pickle\b|\bpickle\.load|allow_pickle\s*=\s*True|torch\.load|\bdill\b|"
                       r"\bjoblib\b|\bshelve\b|\bmarshal\.load")
    hits = [f"{p.relative_to(SRC)}:{i + 1}" for p in SRC.rglob("*.py")
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines()) if risky.search(line)]
    assert hits == []
