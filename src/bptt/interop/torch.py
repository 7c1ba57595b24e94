"""Load weights from ``torch.nn.RNN/LSTM/GRU`` + ``torch.nn.Linear`` and export them back.

PyTorch keeps two bias vectors per layer, b_ih and b_hh. They enter every gate as a sum,
so bptt keeps that sum (``b_h``), with one exception: the GRU's hidden bias of n,
b_hn, sits inside the reset product r ⊙ (W_hn h + b_hn) and is kept apart as ``b_hn``.
Loading therefore changes no result, and exporting puts the whole sum in b_ih and
zeros in b_hh (b_hh's n block = b_hn for the GRU).

torch is imported only when these functions run; it is never a dependency of bptt.
"""
from __future__ import annotations

import numpy as np

from ..model import Model, check_model

_KINDS = {"RNN": "rnn", "LSTM": "lstm", "GRU": "gru"}


def _torch():
    try:
        import torch
    except ImportError as exc:   # pragma: no cover - depends on the environment
        raise ImportError("bptt.interop.torch needs PyTorch: pip install torch") from exc
    return torch


def from_torch(rnn, linear, head="identity", loss="mse", outputs="all", reduction="mean") -> Model:
    """A ``Model`` with the weights of ``rnn`` (nn.RNN/LSTM/GRU) and ``linear`` (nn.Linear).

    Inputs stay time-major (T, B, D) in bptt, whatever ``rnn.batch_first`` says.
    Dropout between layers is a training-time option of PyTorch, not a weight: ignored.
    """
    torch = _torch()
    kind = _KINDS.get(type(rnn).__name__)
    if kind is None or not isinstance(rnn, torch.nn.RNNBase):
        raise ValueError(f"rnn: expected torch.nn.RNN, LSTM or GRU, got {type(rnn).__name__}")
    if not isinstance(linear, torch.nn.Linear):
        raise ValueError(f"linear: expected torch.nn.Linear, got {type(linear).__name__}")
    P = getattr(rnn, "proj_size", 0)
    width = (P or rnn.hidden_size) * (2 if rnn.bidirectional else 1)
    if linear.in_features != width:
        raise ValueError(f"linear: expected in_features = {'2 · ' if rnn.bidirectional else ''}"
                         f"rnn.{'proj' if P else 'hidden'}_size = {width}, got {linear.in_features}")
    dtype = rnn.weight_hh_l0.dtype
    if dtype not in (torch.float32, torch.float64) or linear.weight.dtype != dtype:
        raise ValueError(f"rnn, linear: expected both float32 or both float64, got "
                         f"{rnn.weight_hh_l0.dtype} and {linear.weight.dtype}")
    model = Model(kind, rnn.input_size, rnn.hidden_size, linear.out_features, num_layers=rnn.num_layers,
                  nonlinearity=getattr(rnn, "nonlinearity", "tanh"), head=head, loss=loss,
                  outputs=outputs, reduction=reduction, dtype=str(dtype).removeprefix("torch."),
                  bidirectional=rnn.bidirectional, proj_size=P)
    H = rnn.hidden_size

    def array(t):
        return t.detach().cpu().numpy().astype(model.dtype, copy=True)

    p = model.params
    for l in range(rnn.num_layers):
        for d in range(model.directions):
            ours, theirs = model.direction_prefix(l, d), f"l{l}" + ("_reverse" if d else "")
            p[f"{ours}.W_x"] = array(getattr(rnn, f"weight_ih_{theirs}"))
            p[f"{ours}.W_h"] = array(getattr(rnn, f"weight_hh_{theirs}"))
            if P:
                p[f"{ours}.W_hr"] = array(getattr(rnn, f"weight_hr_{theirs}"))
            if rnn.bias:
                b_ih, b_hh = array(getattr(rnn, f"bias_ih_{theirs}")), array(getattr(rnn, f"bias_hh_{theirs}"))
            else:
                b_ih = b_hh = np.zeros(p[f"{ours}.b_h"].shape[0], dtype=model.dtype)
            if kind == "gru":
                p[f"{ours}.b_h"] = np.concatenate([b_ih[:2 * H] + b_hh[:2 * H], b_ih[2 * H:]])
                p[f"{ours}.b_hn"] = b_hh[2 * H:].copy()
            else:
                p[f"{ours}.b_h"] = b_ih + b_hh
    model.params["head.W_y"] = array(linear.weight)
    model.params["head.b_y"] = (array(linear.bias) if linear.bias is not None
                                else np.zeros(linear.out_features, dtype=model.dtype))
    return model


def to_torch(model: Model):
    """(nn.RNN/LSTM/GRU, nn.Linear) with ``model``'s weights (time-major): linear(rnn(x)[0])
    is what ``model``'s head activation (identity, softmax, sigmoid) takes at every step.
    With outputs="last" it takes linear of the top layer's h_n, both directions side by
    side: rnn(x)[0]'s last step for one direction, but not for two, whose reverse half
    there has read only the last step. ``model.params`` is checked first, as a call
    checks it."""
    check_model(model)._check_params()
    if model.cell not in ("rnn", "lstm", "gru"):
        raise ValueError(f"model: PyTorch has layers for the cells 'rnn', 'lstm' and 'gru', got {model.cell_name!r}")
    if model.layer_norm:
        raise ValueError("model: PyTorch has no layer-normalised LSTM or GRU layer (layer_norm=True)")
    if model.zoneout:
        raise ValueError(f"model: zoneout={model.zoneout!r} has no PyTorch layer (in evaluation each unit "
                         f"keeps the share p of its old state, which nn.{model.cell.upper()} does not); "
                         f"export a model without it")
    torch = _torch()
    dtype = getattr(torch, model.dtype.name)
    kw = dict(input_size=model.input_size, hidden_size=model.hidden_size, num_layers=model.num_layers,
              bidirectional=model.bidirectional, dtype=dtype)
    if model.proj_size:
        kw["proj_size"] = model.proj_size
    if model.cell == "rnn":
        if model.nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"model: torch.nn.RNN supports nonlinearity 'tanh' or 'relu', "
                             f"got {model.nonlinearity!r}")
        rnn = torch.nn.RNN(nonlinearity=model.nonlinearity, **kw)
    else:
        rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[model.cell](**kw)
    linear = torch.nn.Linear(model.directions * model.output_width, model.output_size, dtype=dtype)
    H = model.hidden_size
    with torch.no_grad():
        for l in range(model.num_layers):
            for d in range(model.directions):
                p, theirs = model.direction_params(l, d), f"l{l}" + ("_reverse" if d else "")
                getattr(rnn, f"weight_ih_{theirs}").copy_(torch.from_numpy(p["W_x"]))
                getattr(rnn, f"weight_hh_{theirs}").copy_(torch.from_numpy(p["W_h"]))
                if model.proj_size:
                    getattr(rnn, f"weight_hr_{theirs}").copy_(torch.from_numpy(p["W_hr"]))
                getattr(rnn, f"bias_ih_{theirs}").copy_(torch.from_numpy(p["b_h"]))
                b_hh = getattr(rnn, f"bias_hh_{theirs}")
                b_hh.zero_()
                if model.cell == "gru":
                    b_hh[2 * H:] = torch.from_numpy(p["b_hn"])
        linear.weight.copy_(torch.from_numpy(model.params["head.W_y"]))
        linear.bias.copy_(torch.from_numpy(model.params["head.b_y"]))
    return rnn, linear
