"""Export a Model to ONNX with ONNX's own RNN, GRU and LSTM operators (opset 14 or later).

    to_onnx(model, "model.onnx")                  # python
    bptt export RUN --onnx model.onnx             # a run's latest (or --best) checkpoint

The graph, for L layers of D directions (2 where bidirectional) and width H:

    inputs   x (T, B, input_size)    h0 (L·D, B, H)    [c0 (L·D, B, H), LSTM]    [lengths (B,) int32]
    outputs  y (T, B, O) [outputs="all"] or (B, O) [outputs="last"]    h_n (L·D, B, H)    [c_n]

T and B are free. Each layer is one operator node; its Y (T, D, B, H) is transposed and
reshaped to (T, B, D·H) for the next layer, and the head is MatMul + Add and the head's
activation. State and lengths follow PyTorch's layout and bptt's: h0[l·D + d] is layer l,
direction d. With ``lengths`` (a mask that is a prefix of each column), the reverse
direction starts at each sequence's last valid step, h_n and outputs="last" are taken
there, and a sequence of 0 steps (a later chunk, its state carried in h0) keeps its h0
(ONNX's layers zero it; a Where after each layer takes h0 back, as bptt's (M1)). On padded
steps ONNX's layers output zeros (ONNX's rule), so y there is the head of zero, g(b_y),
not zero; bptt's y carries the state there.

Gate orders (ONNX spec, "LSTM", "GRU", "RNN"): ONNX's LSTM stacks i, o, f, c where bptt (as
PyTorch) stacks i, f, g, o; ONNX's GRU z, r, h where bptt stacks r, z, n, and
``linear_before_reset=1`` is PyTorch's form, r ⊙ (W_hn h + b_hn) (docs/derivation.md
(G3)-(G4)). Each operator takes two biases, Wb and Rb, added together except for the
GRU's candidate: bptt's b_h goes to Wb, its b_hn to the candidate's Rb, zeros elsewhere.

Refused, with the reason: a user's cell, layer_norm and proj_size (no ONNX operator
computes them) and zoneout (its evaluation mixes old and new state unit by unit).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .. import _checks
from .._files import atomic_write
from ..model import check_model

# Rows of bptt's stacked gate blocks, in the order ONNX's operator reads them.
GATE_ORDER = {"lstm": (0, 3, 1, 2),       # i, f, g, o  ->  i, o, f, c
              "gru": (1, 0, 2),           # r, z, n     ->  z, r, h
              "rnn": (0,)}
OPERATOR = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
ACTIVATION = {"tanh": ("Tanh", None), "relu": ("Relu", None), "sigmoid": ("Sigmoid", None),
              "identity": ("Affine", (1.0, 0.0))}          # Affine(x) = αx + β
HEAD = {"identity": None, "softmax": "Softmax", "sigmoid": "Sigmoid"}
DTYPES = {np.dtype(np.float32): "FLOAT", np.dtype(np.float64): "DOUBLE"}


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX export needs the onnx package: pip install 'bptt[onnx]'") from None
    return onnx


def check_exportable(model):
    """Raise a ValueError naming the option that ONNX's operators cannot express, or the
    parameter of ``model.params`` that a call would refuse."""
    check_model(model)._check_params()
    if not isinstance(model.cell, str) or model.cell not in OPERATOR:
        raise ValueError(f"model: ONNX's RNN, GRU and LSTM operators express cell='rnn', 'lstm' or 'gru'; "
                         f"got cell={model.cell_name!r}")
    for name in ("layer_norm", "proj_size", "zoneout"):
        if getattr(model, name):
            raise ValueError(f"model: {name}={getattr(model, name)!r} has no ONNX operator "
                             f"(ONNX's {OPERATOR[model.cell]} computes the plain cell); export a model without it")


def _layer_weights(model, l):
    """(W, R, B) of layer l for ONNX's operator: (D, G·H, in), (D, G·H, H), (D, 2·G·H)."""
    cell, H = model.cell, model.hidden_size
    order = list(GATE_ORDER[cell])
    G = len(order)

    def gates(a):
        return a.reshape((G, H) + a.shape[1:])[order].reshape(a.shape)

    Ws, Rs, Bs = [], [], []
    for d in range(model.directions):
        p = {k: model.params[f"{model.direction_prefix(l, d)}.{k}"] for k in ("W_x", "W_h", "b_h")}
        rb = np.zeros(G * H, dtype=model.dtype)
        if cell == "gru":
            rb[2 * H:] = model.params[f"{model.direction_prefix(l, d)}.b_hn"]
        Ws.append(gates(p["W_x"]))
        Rs.append(gates(p["W_h"]))
        Bs.append(np.concatenate([gates(p["b_h"]), rb]))
    return np.stack(Ws), np.stack(Rs), np.stack(Bs)


def check_onnx_path(path, name: str = "path") -> Path:
    """``path`` as a Path: a file name ending in .onnx, in a folder that exists (else a
    ValueError under ``name``: ``path`` here, ``--onnx`` for `bptt export`)."""
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not isinstance(text, str) or not text.endswith(".onnx") or Path(text).name == ".onnx":
        raise ValueError(f"{name}: expected a file name ending in .onnx, got {path!r}")
    if Path(text).is_dir():
        raise ValueError(f"{name}: expected a file name, got {text!r} (a folder)")
    folder = Path(text).absolute().parent
    if not folder.is_dir():
        raise ValueError(f"{name}: expected a file in an existing folder, got {text!r} "
                         f"({folder} {'is a file' if folder.exists() else 'does not exist'})")
    return Path(text)


def to_onnx(model, path, lengths: bool = False, opset: int = 17):
    """Write ``model`` as an ONNX file at ``path`` (see the module's docstring for the
    graph) and return the ``onnx.ModelProto``. ``lengths=True`` adds the int32 input
    ``lengths`` (B,), each sequence's number of valid steps. ``path`` ends in .onnx, in a
    folder that exists (an existing file is replaced); ``opset`` runs from 14 to the newest
    that the installed onnx knows. The file is checked with
    ``onnx.checker.check_model(full_check=True)`` before it is written."""
    check_exportable(model)
    path = check_onnx_path(path)
    lengths = _checks.flag("lengths", lengths)
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, (bool, np.bool_)) or not isinstance(opset, (int, np.integer)) or not 14 <= opset <= newest:
        raise ValueError(f"opset: expected an integer from 14 (Reshape's allowzero, the operators' layout) to "
                         f"{newest} (the newest this onnx {onnx.__version__} knows), got {opset!r}")
    opset = int(opset)
    elem = getattr(TensorProto, DTYPES[model.dtype])
    L, D, H, cell = model.num_layers, model.directions, model.hidden_size, model.cell
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    state = [("h0", "h_n")] + ([("c0", "c_n")] if cell == "lstm" else [])
    inputs = [helper.make_tensor_value_info("x", elem, ["T", "B", model.input_size])]
    inputs += [helper.make_tensor_value_info(s0, elem, [L * D, "B", H]) for s0, _ in state]
    if lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, ["B"]))
    const("merge_directions", np.array([0, 0, -1], dtype=np.int64))
    if lengths:               # (1, B, 1): which sequences have a valid step, for each layer's Where below
        zero = const("zero_steps", np.array(0, np.int32))
        nodes.append(helper.make_node("Greater", ["lengths", zero], ["lengths.some"]))
        nodes.append(helper.make_node("Unsqueeze", ["lengths.some", const("state_axes", np.array([0, 2], np.int64))],
                                      ["lengths.started"]))
    activation, alpha_beta = ACTIVATION[model.nonlinearity]
    direction = "bidirectional" if D == 2 else "forward"
    layer_in, finals = "x", {s0: [] for s0, _ in state}
    for l in range(L):
        W, R, B = _layer_weights(model, l)
        names = [const(f"layer{l}.{k}", v) for k, v in (("W", W), ("R", R), ("B", B))]
        starts, ends = const(f"layer{l}.first", np.array([l * D], np.int64)), const(f"layer{l}.end", np.array([(l + 1) * D], np.int64))
        axes = const(f"layer{l}.axis", np.array([0], np.int64))
        initial = []
        for s0, _ in state:
            nodes.append(helper.make_node("Slice", [s0, starts, ends, axes], [f"layer{l}.{s0}"]))
            initial.append(f"layer{l}.{s0}")
        Y, Yh, Yc = f"layer{l}.Y", f"layer{l}.Y_h", f"layer{l}.Y_c"
        attrs = {"hidden_size": H, "direction": direction}
        if cell == "gru":
            attrs["linear_before_reset"] = 1
        if cell == "rnn":
            attrs["activations"] = [activation] * D
            if alpha_beta:
                attrs["activation_alpha"], attrs["activation_beta"] = [alpha_beta[0]] * D, [alpha_beta[1]] * D
        node_inputs = [layer_in] + names + ["lengths" if lengths else ""] + initial
        finals_of_layer = [Yh] + ([Yc] if cell == "lstm" else [])
        computed = [f"{n}.computed" for n in finals_of_layer] if lengths else finals_of_layer
        nodes.append(helper.make_node(OPERATOR[cell], node_inputs, [Y] + computed, name=f"layer{l}", **attrs))
        if lengths:           # ONNX's layers zero the state of a sequence of 0 steps; bptt carries it (M1)
            for s_computed, s0, final in zip(computed, initial, finals_of_layer):
                nodes.append(helper.make_node("Where", ["lengths.started", s_computed, s0], [final]))
        finals["h0"].append(Yh)
        if cell == "lstm":
            finals["c0"].append(Yc)
        nodes.append(helper.make_node("Transpose", [Y], [f"layer{l}.Y_tbdh"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [f"layer{l}.Y_tbdh", "merge_directions"], [f"layer{l}.out"]))
        layer_in = f"layer{l}.out"
    for s0, sn in state:
        nodes.append(helper.make_node("Concat", finals[s0], [sn], axis=0))
    if model.outputs == "last":                      # each direction's final state, (B, D·H)
        nodes.append(helper.make_node("Transpose", [finals["h0"][-1]], ["last.bdh"], perm=[1, 0, 2]))
        nodes.append(helper.make_node("Reshape", ["last.bdh", const("merge_last", np.array([0, -1], np.int64))],
                                      ["head.in"]))
    else:
        nodes.append(helper.make_node("Identity", [layer_in], ["head.in"]))
    W_y, b_y = model.params["head.W_y"], model.params["head.b_y"]
    nodes.append(helper.make_node("MatMul", ["head.in", const("head.W_y_t", np.ascontiguousarray(W_y.T))], ["head.z"]))
    activation = HEAD[model.head]
    nodes.append(helper.make_node("Add", ["head.z", const("head.b_y", b_y)], ["head.a" if activation else "y"]))
    if activation:
        nodes.append(helper.make_node(activation, ["head.a"], ["y"], axis=-1) if activation == "Softmax"
                     else helper.make_node(activation, ["head.a"], ["y"]))
    y_shape = ["T", "B", model.output_size] if model.outputs == "all" else ["B", model.output_size]
    outputs = [helper.make_tensor_value_info("y", elem, y_shape)]
    outputs += [helper.make_tensor_value_info(sn, elem, [L * D, "B", H]) for _, sn in state]
    graph = helper.make_graph(nodes, "bptt", inputs, outputs, initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="bptt")
    proto.ir_version = min(proto.ir_version, 10)         # what onnxruntime reads
    if model.vocabulary is not None:           # for a sampler that has onnxruntime alone
        helper.set_model_props(proto, {"bptt.vocabulary": json.dumps(model.vocabulary, ensure_ascii=False)})
    onnx.checker.check_model(proto, full_check=True)
    atomic_write(path, lambda p: onnx.save(proto, str(p)))
    return proto
