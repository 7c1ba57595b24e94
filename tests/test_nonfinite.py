"""A non-finite gradient is traced to its first step, forward or backward, and reported."""
import numpy as np
import pytest

import bptt
from bptt.cli import main
from bptt.diagnostics.nonfinite import first_nonfinite

F32_MAX = float(np.finfo(np.float32).max)


def linear_rnn(gain, T):
    """An identity-activation RNN with W_h = gain·I: ∂L/∂h_k grows like gain^(T-1-k) (V1, V2)."""
    m = bptt.Model("rnn", 1, 4, 1, nonlinearity="identity", outputs="last", dtype="float32", seed=0)
    m.params["layer0.W_h"][:] = gain * np.eye(4, dtype=np.float32)
    m.params["layer0.b_h"][:] = 0
    return m, np.full((T, 2, 1), 0.01, np.float32), np.zeros((2, 1), np.float32)


def test_the_backward_step_where_float32_overflows_is_found():
    m, x, y = linear_rnn(1.6, 150)
    found = first_nonfinite(m, x, y)
    # the same recursion in float64: dh_{T-1} = W_yᵀ δo, dh_{k-1} = W_hᵀ dh_k (f' = 1)
    m64 = m.astype("float64")
    pred, _ = m64.forward(x.astype(np.float64))
    dh = (2 * 0.5 * (pred - y)) @ m64.params["head.W_y"]
    k = x.shape[0] - 1
    while np.abs(dh).max() <= F32_MAX:
        dh = dh @ m64.params["layer0.W_h"]
        k -= 1
    assert found.forward == [None] and found.backward == [k] and not found.loss_finite
    assert f"step {k} (layer 0" in found.describe()


def test_the_forward_step_where_the_state_overflows_is_found():
    m, x, y = linear_rnn(3.0, 120)
    h = np.zeros(4)
    t = 0
    while True:                                       # h_t = 3 h_{t-1} + W_x·0.01 in float64
        h = 3.0 * h + m.params["layer0.W_x"][:, 0].astype(np.float64) * 0.01
        if np.abs(h).max() > F32_MAX:
            break
        t += 1
    found = first_nonfinite(m, x, y)
    assert found.forward == [t]
    assert found.describe() == f"the forward pass left the finite range at step {t} (layer 0)"


def test_the_earliest_step_is_named_whichever_layer_it_is_in():
    """Layer 1 overflows at step 42 and layer 0 at 43 (each reads the one below, so the
    sum of both grows faster): the report named step 43 of layer 0, the lowest layer with
    a hit, not the first step. A hand-written float32 pass gives both steps."""
    m = bptt.Model("rnn", 2, 3, 1, nonlinearity="identity", dtype="float32", seed=0, num_layers=2)
    for l in range(2):
        m.params[f"layer{l}.W_h"][:] = 8 * np.eye(3, dtype=np.float32)
    x, y = np.ones((60, 2, 2), np.float32), np.zeros((60, 2, 1), np.float32)
    first = []
    inputs = x[:, 0]
    for l in range(2):
        p = m.layer_params(l)
        h, seq = np.zeros(3, np.float32), []
        with np.errstate(over="ignore", invalid="ignore"):
            for t in range(60):
                h = inputs[t] @ p["W_x"].T + p["b_h"] + h @ p["W_h"].T
                seq.append(h)
        first.append(next(t for t, v in enumerate(seq) if not np.isfinite(v).all()))
        inputs = np.array(seq)
    found = first_nonfinite(m, x, y)
    assert found.forward == first and first[1] < first[0]
    assert found.describe() == f"the forward pass left the finite range at step {first[1]} (layer 1)"


def test_a_finite_gradient_is_said_to_be_finite():
    m, x, y = linear_rnn(0.5, 30)
    assert first_nonfinite(m, x, y).describe() == "every state and every ∂L/∂h_k is finite"


def test_the_command_names_the_parameter_and_the_step(tmp_path, capsys):
    code = main(["train", "--task", "adding", "--cell", "rnn", "--nonlinearity", "identity", "--init", "identity",
                 "--seq-len", "400", "--hidden", "8", "--batch", "4", "--steps", "50", "--lr", "0.1",
                 "--clip-norm", "1e30", "--quiet", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "not finite" in err and "left the finite range at step" in err


@pytest.mark.parametrize("kwargs,got", [(dict(bidirectional=True), "bidirectional=True, proj_size=0"),
                                        (dict(cell="lstm", proj_size=2), "bidirectional=False, proj_size=2")])
def test_a_bidirectional_or_projected_model_is_refused_by_name(kwargs, got):
    m = bptt.Model(**{"cell": "rnn", "input_size": 3, "hidden_size": 4, "output_size": 2, "dtype": "float64",
                      **kwargs})
    x, y = np.zeros((5, 2, 3)), np.zeros((5, 2, 2))
    with pytest.raises(ValueError, match=rf"^model: first_nonfinite follows one direction's unprojected state "
                                         rf"through time; got {got}$"):
        first_nonfinite(m, x, y)


@pytest.mark.parametrize("kwargs", [dict(cell="lstm", scale=10.0),
                                    dict(cell="rnn", nonlinearity="identity", zoneout=0.1, scale=2.0)])
def test_a_float32_lstm_or_zoneout_backward_overflows_where_the_models_own_backward_does(kwargs):
    """The linearised steps stay in float32: the LSTM's δz and zoneout's d were float64, so
    the recursion never overflowed and a gradient of inf was reported finite. Reference:
    ∂L/∂h_k from the model's own float32 backward over x[k+1:] from s_k."""
    scale = kwargs.pop("scale")
    m = bptt.Model(input_size=2, hidden_size=4, output_size=2, head="softmax", loss="cross_entropy",
                   outputs="last", dtype="float32", seed=0, **kwargs)
    m.params["layer0.W_h"][:] *= scale
    m.params["head.W_y"][:] = 1e38 * np.array([[1, -1, 1, -1], [-1, 1, -1, 1]], np.float32) / 4
    m.params["head.b_y"][:] = 0
    x = np.random.default_rng(0).standard_normal((6, 1, 2)).astype(np.float32)
    with np.errstate(all="ignore"):
        y = np.array([np.argmin(m.forward(x)[0][0])])            # a finite loss of about 1e37
        own = [k for k in range(5) if not np.isfinite(m.gradients(x[k + 1:], y, m.advance(x[:k + 1])).state0[0]).all()]
        assert np.isfinite(m.loss_value(x, y)) and own
    found = first_nonfinite(m, x, y)
    assert found.loss_finite and found.forward == [None] and found.backward == [max(own)]
