"""Tasks, generated from a seed or shipped in a package, nothing downloaded.

    adding  Arjovsky et al. 2016: two channels, values U[0, 1] and two markers (one in
            each half); the target is the sum of the two marked values. Always
            predicting 1 scores MSE 1/6 ≈ 0.167 in expectation.
    copy    Arjovsky et al. 2016: 10 symbols of 8, T − 1 blanks, a delimiter, 10 blanks;
            the output is blank until the delimiter, then the 10 symbols. Predicting blank
            and then a uniform symbol scores 10·ln 8 / (T + 20) nats.
    sine    noisy sums of sines; predict the clean next value at every step.
    digits  the 1,797 8x8 handwritten digits scikit-learn ships (extra ``data``), read row
            by row (seq_len 8) or pixel by pixel (seq_len 64); ten classes, a fixed split.
    text    character-level language modelling of a UTF-8 file (built in: the source
            files of Python's standard library, in a fixed order), B parallel streams.
"""
from __future__ import annotations

import hashlib
import math
import os
import sysconfig
from pathlib import Path

import numpy as np

from ..generate import one_hot

TASKS = ("text", "adding", "copy", "sine", "digits")


class AddingTask:
    name = "adding"

    def __init__(self, seq_len):
        self.T = self.steps = seq_len
        self.model_kwargs = dict(input_size=2, output_size=1, head="identity", loss="mse", outputs="last")
        self.baseline = 1 / 6
        self.baseline_name = "always 1"

    def batch(self, rng, B, dtype=np.float32):
        T = self.T
        x = np.zeros((T, B, 2), dtype=dtype)
        x[:, :, 0] = rng.uniform(0, 1, size=(T, B))
        first = rng.integers(0, T // 2, size=B)
        second = rng.integers(T // 2, T, size=B)
        cols = np.arange(B)
        x[first, cols, 1] = 1
        x[second, cols, 1] = 1
        y = (x[first, cols, 0] + x[second, cols, 0])[:, None].astype(dtype)
        return x, y

    @staticmethod
    def trivial_loss(x, y) -> float:
        """The MSE of always predicting 1 on these sequences."""
        return float(((np.asarray(y, dtype=np.float64) - 1) ** 2).mean())


class CopyTask:
    name = "copy"
    SYMBOLS, BLANK, DELIMITER, LENGTH = 8, 0, 9, 10

    def __init__(self, seq_len):
        self.T = seq_len
        self.steps = seq_len + 2 * self.LENGTH          # a sequence: symbols, blanks and delimiter, recall
        self.model_kwargs = dict(input_size=10, output_size=9, head="softmax", loss="cross_entropy",
                                 outputs="all")
        self.baseline = self.LENGTH * math.log(self.SYMBOLS) / self.steps
        self.baseline_name = "blank, then uniform"

    def batch(self, rng, B, dtype=np.float32):
        T, n = self.T, self.LENGTH
        symbols = rng.integers(1, self.SYMBOLS + 1, size=(n, B))
        total = T + 2 * n
        codes = np.zeros((total, B), dtype=np.int64)
        codes[:n] = symbols
        codes[n + T - 1] = self.DELIMITER
        targets = np.zeros((total, B), dtype=np.int64)
        targets[-n:] = symbols
        x = np.zeros((total, B, 10), dtype=dtype)
        np.put_along_axis(x, codes[:, :, None], 1, axis=2)
        return x, targets

    def trivial_loss(self, x, y) -> float:
        """Blank, then uniform over the symbols: the same on any sequences of the task."""
        return self.baseline


class SineTask:
    name = "sine"
    SINES, FREQUENCY, AMPLITUDE = 3, (0.02, 0.3), (0.2, 1.0)

    def __init__(self, seq_len, noise=0.1):
        self.T, self.noise = seq_len, noise
        self.steps = seq_len
        self.model_kwargs = dict(input_size=1, output_size=1, head="identity", loss="mse", outputs="all")
        # Its expectation: noise² + Σ_i E[a_i²]·E[1 − cos f_i] over the 3 sines (random phases
        # make the components' step differences independent, mean 0), the same at every step.
        lo, hi = self.AMPLITUDE
        a2 = (hi ** 3 - lo ** 3) / (3 * (hi - lo))
        lo, hi = self.FREQUENCY
        cos = (math.sin(hi) - math.sin(lo)) / (hi - lo)
        self.baseline = noise ** 2 + self.SINES * a2 * (1 - cos)
        self.baseline_name = "repeat the noisy current value"

    def batch(self, rng, B, dtype=np.float32):
        t = np.arange(self.T + 1)[:, None, None]
        freq = rng.uniform(*self.FREQUENCY, size=(1, B, self.SINES))
        phase = rng.uniform(0, 2 * np.pi, size=(1, B, self.SINES))
        amp = rng.uniform(*self.AMPLITUDE, size=(1, B, self.SINES))
        clean = (amp * np.sin(freq * t + phase)).sum(axis=2)               # (T + 1, B)
        noisy = clean + self.noise * rng.standard_normal(clean.shape)
        return noisy[:-1, :, None].astype(dtype), clean[1:, :, None].astype(dtype)

    @staticmethod
    def trivial_loss(x, y) -> float:
        """The MSE of repeating the noisy current value on these sequences."""
        return float(((np.asarray(x, dtype=np.float64) - y) ** 2).mean())


class DigitsTask:
    """The UCI handwritten digits (8x8, grey levels 0-16, scaled to [0, 1]) as sequences:
    seq_len 8 reads an image row by row (x_t: row t, 8 values), seq_len 64 pixel by pixel
    (x_t: one value, rows in order). One split for every run, from a fixed permutation:
    1,257 images train, 180 validate (the best model), 360 test. Classified at the last
    step (outputs="last"); predicting the training split's class frequencies scores
    ``baseline`` nats on the validation split."""
    name = "digits"
    SPLIT = (1257, 180, 360)

    def __init__(self, seq_len):
        if seq_len not in (8, 64):
            raise ValueError(f"seq-len: --task digits reads an 8x8 image row by row (--seq-len 8) or pixel by "
                             f"pixel (--seq-len 64), got {seq_len}")
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise ValueError("task: digits needs scikit-learn, which ships the images: "
                             "pip install 'bptt[data]'") from None
        digits = load_digits()
        order = np.random.default_rng(20240601).permutation(len(digits.target))
        images = (digits.images[order] / 16.0).reshape(len(order), seq_len, 64 // seq_len)
        labels = digits.target[order].astype(np.int64)
        a, b, _ = self.SPLIT
        self.splits = {"train": (images[:a], labels[:a]), "valid": (images[a:a + b], labels[a:a + b]),
                       "test": (images[a + b:], labels[a + b:])}
        self.T = self.steps = seq_len
        self.model_kwargs = dict(input_size=64 // seq_len, output_size=10, head="softmax", loss="cross_entropy",
                                 outputs="last")
        prior = np.bincount(labels[:a], minlength=10) / a
        self.baseline = float(-np.log(prior[labels[a:a + b]]).mean())
        self.baseline_name = "class frequencies"

    def batch(self, rng, B, dtype=np.float32):
        """B training images drawn without replacement: x (T, B, D), y (B,)."""
        images, labels = self.splits["train"]
        pick = rng.choice(len(labels), size=min(B, len(labels)), replace=False)
        return self._sequences(images[pick], dtype), labels[pick]

    def split(self, name, dtype=np.float32):
        """All of one split ("train", "valid", "test"): x (T, N, D), y (N,)."""
        images, labels = self.splits[name]
        return self._sequences(images, dtype), labels

    @staticmethod
    def _sequences(images, dtype):
        return np.ascontiguousarray(images.transpose(1, 0, 2), dtype=dtype)


# ---- text -----------------------------------------------------------------------------------

def builtin_corpus(max_chars=3_000_000) -> str:
    """Python's standard library sources, sorted by path, the first max_chars characters."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("site-packages/", "test/", "idlelib/", "lib2to3/tests/")):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        size += len(text)
        if size >= max_chars:
            break
    return "".join(parts)[:max_chars]


def text_model_kwargs(vocab_size: int) -> dict:
    """The sizes and head of a character model over ``vocab_size`` characters."""
    return dict(input_size=vocab_size, output_size=vocab_size, head="softmax", loss="cross_entropy",
                outputs="all")


class TextFileError(ValueError):
    """A text file that cannot be read as a text to train on: ``reason`` names it by its
    path, the message starts with where it was given (--text unless ``named`` says)."""

    def __init__(self, reason: str, option: str = "--text"):
        super().__init__(f"{option}: {reason}")
        self.reason = reason

    def named(self, option: str) -> "TextFileError":
        """The same error, the file given as ``option`` (the text key of a --config file)."""
        return TextFileError(self.reason, option)


def read_text_file(path) -> str:
    if not str(path).strip():
        raise TextFileError(f"expected the name of a UTF-8 text file, got {os.fspath(path)!r}")
    p = Path(path)
    if p.is_dir():
        raise TextFileError(f"{os.fspath(path)} is a folder; expected a UTF-8 text file")
    if p.exists() and not p.is_file():
        raise TextFileError(f"{os.fspath(path)} is not a regular file (a device or a pipe); expected a "
                            f"UTF-8 text file")
    if not p.is_file():
        raise TextFileError(f"no such file: {os.fspath(path)}")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise TextFileError(f"{os.fspath(path)} cannot be read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")           # utf-8-sig would count an error's byte from after a BOM
    except UnicodeDecodeError as exc:
        raise TextFileError(f"{os.fspath(path)} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    # as Python reads text: a byte-order mark is not a character of it, \r\n and \r end lines as \n
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if len(text) < 100:
        raise TextFileError(f"{os.fspath(path)} has {len(text)} characters; expected at least 100")
    if len(set(text)) < 2:
        raise TextFileError(f"{os.fspath(path)} holds 1 distinct character ({text[0]!r}); expected at least 2 "
                            f"(the model predicts one of them)")
    return text


class TextTask:
    """Characters of one text: the first 90% trains, the last 10% validates."""
    name = "text"

    def __init__(self, text, seq_len, val_fraction=0.1):
        self.sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()    # checkpoints keep it (trainer.py)
        self.first = text[:1]
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}
        codes = np.fromiter((self.index[c] for c in text), dtype=np.int64, count=len(text))
        split = int(len(codes) * (1 - val_fraction))
        self.train, self.valid = codes[:split], codes[split:]
        self.T = self.steps = seq_len
        self.model_kwargs = text_model_kwargs(len(self.chars))
        self.baselines = self._baselines()

    @property
    def vocab_size(self):
        return len(self.chars)

    def _baselines(self):
        """Cross-entropy (nats per char) of add-one unigram and bigram models of the train split."""
        V = self.vocab_size
        uni = np.bincount(self.train, minlength=V) + 1.0
        uni /= uni.sum()
        v = self.valid
        return {"unigram": float(-np.log(uni[v]).mean()),
                "bigram": float(-np.log(self._bigram(v[:-1], v[1:])).mean())}

    def _bigram(self, prev, code):
        """p(code | prev) of the add-one bigram model of the train split, (n_ab + 1) / (n_a + V):
        from the counts of the pairs that occur, never a (V, V) table (8 GB at 32,000 characters)."""
        V, t = self.vocab_size, self.train
        pairs, counts = np.unique(t[:-1] * V + t[1:], return_counts=True)
        wanted = prev * V + code
        at = np.minimum(np.searchsorted(pairs, wanted), len(pairs) - 1)
        n_ab = np.where(pairs[at] == wanted, counts[at], 0)
        n_a = np.bincount(t[:-1], minlength=V)[prev]
        return (n_ab + 1.0) / (n_a + V)

    def one_hot(self, codes, dtype=np.float32):
        return one_hot(codes, self.vocab_size, dtype)

    def streams(self, codes, B):
        """(L, B): B contiguous streams of the codes, char-rnn style."""
        L = len(codes) // B
        return codes[:L * B].reshape(B, L).T

    def encode(self, text):
        unknown = sorted(set(text) - set(self.index))
        if unknown:
            raise ValueError(f"prime: characters not in the model's vocabulary: {''.join(unknown[:10])!r}")
        return np.array([self.index[c] for c in text], dtype=np.int64)

    def decode(self, codes):
        return "".join(self.chars[int(c)] for c in codes)


def make_task(name, seq_len, text=None):
    if name == "adding":
        return AddingTask(seq_len)
    if name == "copy":
        return CopyTask(seq_len)
    if name == "sine":
        return SineTask(seq_len)
    if name == "digits":
        return DigitsTask(seq_len)
    if name == "text":
        return TextTask(builtin_corpus() if text is None else read_text_file(text), seq_len)
    raise ValueError(f"task: expected one of {', '.join(TASKS)}, got {name!r}")
