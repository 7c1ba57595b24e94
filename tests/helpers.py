"""Shared builders for the tests: small models with nonzero biases and states."""
import os

import numpy as np

import bptt

KINDS = [("rnn", "tanh"), ("rnn", "relu"), ("rnn", "sigmoid"), ("rnn", "identity"),
         ("lstm", "tanh"), ("gru", "tanh")]
HEAD_LOSSES = [("identity", "mse"), ("sigmoid", "mse"), ("softmax", "mse"),
               ("softmax", "cross_entropy"), ("sigmoid", "bce")]


def make_model(cell, nonlinearity="tanh", layers=1, D=3, H=4, O=3, dtype="float64", seed=0, **kw):
    m = bptt.Model(cell, D, H, O, num_layers=layers, nonlinearity=nonlinearity, dtype=dtype, seed=seed, **kw)
    rng = np.random.default_rng(seed + 100)
    for name, p in m.params.items():
        if name.endswith(("b_h", "b_hn", "b_y")):   # biases well away from zero
            p += rng.uniform(-0.5, 0.5, p.shape).astype(p.dtype)
    return m


def make_state(model, B, rng, scale=0.5):
    shape = (model.num_layers * model.directions, B, model.hidden_size)
    if model.cell == "lstm":
        return tuple(scale * rng.standard_normal(shape).astype(model.dtype) for _ in range(2))
    return scale * rng.standard_normal(shape).astype(model.dtype)


def make_targets(model, T, B, rng):
    lead = (T, B) if model.outputs == "all" else (B,)
    if model.loss == "cross_entropy":
        return rng.integers(0, model.output_size, size=lead)
    if model.loss == "bce":
        return rng.uniform(0, 1, size=lead + (model.output_size,)).astype(model.dtype)
    return rng.standard_normal(lead + (model.output_size,)).astype(model.dtype)


def ragged_mask(T, lengths):
    """(T, B) mask of sequences with the given lengths, padded at the end."""
    return np.arange(T)[:, None] < np.asarray(lengths)[None, :]


def python_loop(run):
    """run() with every layer on the Python loop and the cells' NumPy steps (BPTT_LOOPS=0):
    the reference the compiled loop is held to."""
    from bptt.backends import settings
    os.environ["BPTT_LOOPS"] = "0"
    settings.reset()
    try:
        return run()
    finally:
        del os.environ["BPTT_LOOPS"]
        settings.reset()


EDITED_PARAMS = [       # a GRU's params (2, 3, 1, float64) edited as a call refuses them: exports must refuse them too
    (lambda p: p.__setitem__("layer0.W_h", p["layer0.W_h"][:, :1].copy()),
     r"^params\['layer0.W_h'\]: expected shape \(9, 3\) and dtype float64, got shape \(9, 1\) and dtype float64$"),
    (lambda p: p.__setitem__("layer0.W_h", p["layer0.W_h"].astype(np.float32)),
     r"^params\['layer0.W_h'\]: expected shape \(9, 3\) and dtype float64, got shape \(9, 3\) and dtype float32$"),
    (lambda p: p.pop("head.b_y"), r"^params\['head.b_y'\]: expected an array of shape \(1,\) \(float64\), got NoneType$"),
    (lambda p: p.__setitem__("extra", np.ones(2)), r"^params: unexpected key 'extra'; expected the keys layer0.W_x, "),
]
