"""--task digits: scikit-learn's 8x8 digits as sequences, row by row or pixel by pixel, a
fixed split, and a short run that learns far past the class-frequency baseline."""
import numpy as np
import pytest

from bptt.train.config import Config
from bptt.train.tasks import DigitsTask
from bptt.train.trainer import Trainer


def test_rows_and_pixels_are_the_same_images_in_one_fixed_split():
    rows, pixels = DigitsTask(8), DigitsTask(64)
    sizes = {name: len(y) for name, (_, y) in rows.splits.items()}
    assert sizes == {"train": 1257, "valid": 180, "test": 360}
    for name in ("train", "valid", "test"):
        x8, y8 = rows.split(name)
        x64, y64 = pixels.split(name)
        assert x8.shape == (8, sizes[name], 8) and x64.shape == (64, sizes[name], 1)
        np.testing.assert_array_equal(y8, y64)
        # pixel t·8 + j of the pixel sequence is row t, column j of the row sequence
        np.testing.assert_array_equal(x64[:, :, 0], x8.transpose(0, 2, 1).reshape(64, -1))
        assert 0 <= x8.min() and x8.max() == 1
    again = DigitsTask(8)
    for name in rows.splits:
        np.testing.assert_array_equal(rows.splits[name][1], again.splits[name][1])
    assert set(rows.splits["test"][1]) == set(range(10))
    assert abs(rows.baseline - np.log(10)) < 0.02             # ten nearly equal classes


def test_a_batch_draws_distinct_training_images_from_the_generator():
    task = DigitsTask(8)
    x, y = task.batch(np.random.default_rng(0), 32)
    x2, y2 = task.batch(np.random.default_rng(0), 32)
    assert x.shape == (8, 32, 8) and y.shape == (32,) and x.dtype == np.float32
    np.testing.assert_array_equal(x, x2)
    train_x, _ = task.split("train")
    flat = {train_x[:, i].tobytes(): i for i in range(train_x.shape[1])}
    picked = [flat[x[:, b].tobytes()] for b in range(32)]
    assert len(set(picked)) == 32


@pytest.mark.parametrize("seq_len", [7, 16])
def test_other_sequence_lengths_are_refused_by_name(seq_len):
    with pytest.raises(ValueError, match=f"seq-len: --task digits reads an 8x8 image row by row .* got {seq_len}"):
        Config(task="digits", seq_len=seq_len).check()


def test_a_short_run_row_by_row_beats_the_baseline_by_far(tmp_path):
    trainer = Trainer(Config(task="digits", seq_len=8, steps=400, batch=32, hidden=64, eval_every=400,
                             out=str(tmp_path / "run")))
    final = trainer.train(progress=False)
    assert final["val_loss"] < 0.25 * trainer.task.baseline
    assert final["val_acc"] > 0.85 and final["test_acc"] > 0.85


def test_a_batch_larger_than_the_training_split_is_refused(tmp_path):
    """batch=5000 trained on the 1257 training images per update and recorded batch 5000."""
    pytest.importorskip("sklearn")
    with pytest.raises(ValueError, match=r"^--batch: --task digits draws a batch from its 1257 training images "
                                         r"without replacement; expected at most 1257, got 5000$"):
        Trainer(Config(task="digits", seq_len=8, batch=5000, out=str(tmp_path / "r")))
    assert not (tmp_path / "r").exists()
    assert Trainer(Config(task="digits", seq_len=8, batch=1257, hidden=4, out=str(tmp_path / "r"))).config.batch == 1257
    assert DigitsTask(8).batch(np.random.default_rng(0), 1257)[0].shape == (8, 1257, 8)
