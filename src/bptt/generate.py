"""Text from a character model: feed a prime, then draw one character at a time, each fed
back with the carried state.

A character model reads one-hot inputs and has a softmax head over the same characters,
``model.vocabulary`` (set by the trainer, kept by ``model.save`` and ``bptt.load``)."""
from __future__ import annotations

import numpy as np

from . import _checks
from .cells import head as head_layer
from .model import check_model


def one_hot(codes, size, dtype=np.float32):
    """(…, size): a 1 at each code's column (characters as a model reads them)."""
    x = np.zeros(codes.shape + (size,), dtype=dtype)
    np.put_along_axis(x, codes[..., None], 1, axis=-1)
    return x


def tempered(p, temperature: float, top_k: int | None = None) -> np.ndarray:
    """The distribution ``p`` at ``temperature`` (> 0, finite), ∝ p^(1/T), among its ``top_k``
    likeliest entries (``tempered_logits`` of log p; a p of 0 keeps weight 0)."""
    with np.errstate(divide="ignore"):
        return tempered_logits(np.log(np.asarray(p, dtype=np.float64)), temperature, top_k)


def tempered_logits(logits, temperature: float, top_k: int | None = None) -> np.ndarray:
    """softmax(logits / T) among the ``top_k`` largest logits: the logits less their largest,
    then divided by T, so that the likeliest entry has weight exp(0) = 1 for any T and a
    tiny T draws it alone (greedy)."""
    logits = np.array(logits, dtype=np.float64)
    logits -= logits.max()
    if top_k is not None and top_k < logits.size:
        # exactly k entries, ties broken by the lower index: a cut by value kept every entry
        # tied at the k-th (top_k=1 over two equal maxima drew either, not greedily)
        logits[np.argsort(-logits, kind="stable")[top_k:]] = -np.inf
    with np.errstate(over="ignore", under="ignore"):      # -x/T beyond the range is -inf: weight 0
        q = np.exp(logits / temperature)
    return q / q.sum()


def _logits(model, x, state, drawn):
    """(the head's logits after x from ``state``, in float64; the state after x). Sampling reads
    logits, not the softmax's probabilities: in float32 those are 0 (or a few bits of a
    subnormal) past a logit gap of 87, which a high temperature would raise to a weight of
    exp(-gap/T). The head reads the top layer's h, the first array of the state (the output)."""
    state = model.advance(x, state, carried_state=state is not None)
    top = (state[0] if model.tuple_state else state)[-1]
    logits = head_layer.forward(model.head_params(), top.astype(np.float64))[0]
    if not np.isfinite(logits).all():
        raise ValueError(f"model: its output is not finite after {drawn} drawn characters (its state overflowed: "
                         f"{np.count_nonzero(~np.isfinite(top))} of {top.size} values of the top layer's h); "
                         f"expected finite logits to draw from")
    return logits, state


def generate(model, length: int = 300, prime: str | None = None, temperature: float = 1.0,
             top_k: int | None = None, seed=None, vocabulary=None) -> str:
    """``length`` characters drawn from ``model`` after feeding ``prime``.

    Args:
        model: a Model with a softmax head whose inputs and outputs are characters.
        prime: the text fed first (default: a newline, or the first character where the
            vocabulary has no newline).
        temperature: > 0; divides the log-probabilities (lower: more conservative).
        top_k: draw only among the k most likely characters.
        seed: a seed or a numpy Generator for the draws (None: fresh entropy).
        vocabulary: the characters, in the model's order (default ``model.vocabulary``).
    """
    check_model(model)
    name, raw = ("vocabulary", vocabulary) if vocabulary is not None else ("model.vocabulary", model.vocabulary)
    if raw is None:
        raise ValueError("vocabulary: the model has none (model.vocabulary is None); pass vocabulary=, the "
                         "characters in the order of the model's inputs")
    characters = model.head == "softmax" and model.input_size == model.output_size
    chars = _checks.characters(name, raw, model.output_size if characters else None)
    V = len(chars)
    if not characters:
        raise ValueError(f"model: generating text needs one-hot inputs and a softmax over the {V} characters of "
                         f"the vocabulary; got input_size={model.input_size}, output_size={model.output_size}, "
                         f"head={model.head!r}")
    if model.bidirectional or model.outputs != "all":
        raise ValueError("model: generating text reads the output at every step of a unidirectional model; got "
                         f"bidirectional={model.bidirectional}, outputs={model.outputs!r}")
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
        raise ValueError(f"length: expected an integer >= 0, got {length!r}")
    temperature = _checks.number("temperature", temperature, lambda t: t > 0, "a positive number")
    if top_k is not None:
        top_k = _checks.positive_int("top_k", top_k)
    index = {c: i for i, c in enumerate(chars)}
    if prime is not None and not isinstance(prime, str):
        raise ValueError(f"prime: expected a string of the model's characters, got {type(prime).__name__} {prime!r}")
    if not prime:
        prime = "\n" if "\n" in index else chars[0]
    unknown = sorted(set(prime) - set(index))
    if unknown:
        raise ValueError(f"prime: characters not in the model's vocabulary: {''.join(unknown[:10])!r}; expected "
                         f"a text of its {V} characters")
    rng = _checks.generator("seed", seed)
    codes = np.array([index[c] for c in prime], dtype=np.int64)
    logits, state = _logits(model, one_hot(codes[:, None], V, model.dtype), None, 0)
    out = []
    for _ in range(length):
        code = int(rng.choice(V, p=tempered_logits(logits, temperature, top_k)))
        out.append(code)
        logits, state = _logits(model, one_hot(np.array([[code]]), V, model.dtype), state, len(out))
    return "".join(chars[c] for c in out)
