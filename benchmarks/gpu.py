"""bptt's layers on an NVIDIA GPU (CuPy) against torch.nn.RNN/LSTM/GRU (cuDNN).

    python benchmarks/gpu.py [--cells rnn,lstm,gru] [--shapes T,B,D,H ...] [--quick]

fp32 with TF32 off on both sides (CUPY_TF32=0; torch's allow_tf32 flags False). First,
every result is checked against a float64 reference (torch's own layer in float64 on the
GPU, same weights): the relative error of h, ∂L/∂W_h and ∂L/∂h_0 for ours and for
cuDNN; a result further from it than max(1e-3, 10 × cuDNN's error) stops the script
before anything is recorded. Then forward + backward (a training step: every weight
gradient and ∂L/∂h_0, no ∂L/∂x) is timed with CUDA events after a warm-up, as the
median of repeats, for ours eager, ours replayed as one CUDA graph (backends/graphs.py)
and cuDNN. One table.
"""
from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("CUPY_TF32", "0")

import numpy as np  # noqa: E402

from machine import recorded, stamp  # noqa: E402

SHAPES = [(100, 64, 128, 256), (256, 64, 512, 512), (1000, 16, 128, 1024), (100, 256, 1024, 1024)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default="rnn,lstm,gru", help="comma-separated: rnn, lstm, gru")
    parser.add_argument("--shapes", nargs="*", help="T,B,D,H tuples")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    import importlib.util
    if importlib.util.find_spec("cupy") is None:
        raise SystemExit("benchmarks/gpu.py: needs CuPy and PyTorch with a CUDA device")
    import cupy as cp
    import torch

    from bptt.backends import cuda
    from bptt.backends.graphs import GraphedLayer
    from bptt.cells import layer
    if not (cuda.AVAILABLE and torch.cuda.is_available()):
        raise SystemExit("benchmarks/gpu.py: needs CuPy and PyTorch with a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    repeats = 5 if args.quick else 20
    props = cp.cuda.runtime.getDeviceProperties(0)
    print(stamp())                                    # the host: CPU, BLAS, versions
    print(f"# GPU {props['name'].decode()} · CUDA {cp.cuda.runtime.runtimeGetVersion()} · cupy {cp.__version__} · "
          f"cuDNN {torch.backends.cudnn.version()} · fp32, TF32 off")
    print("| cell | T, B, D, H | rel. err ours | rel. err cuDNN | eager ms | graph ms | cuDNN ms "
          "| graph/cuDNN | eager/cuDNN |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for cell in args.cells.split(","):
        for T, B, D, H in shapes:
            row = bench(cell, T, B, D, H, repeats, cp, torch, layer(cell), GraphedLayer)
            print("| {} | {}, {}, {}, {} | {:.1e} | {:.1e} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} |".format(
                cell, T, B, D, H, *row), flush=True)


def _params_of(ref, cell, cp, torch):
    """bptt's parameter dict from a torch layer's weights, as CuPy copies on the same device."""
    W_x, W_h = ref.weight_ih_l0.detach(), ref.weight_hh_l0.detach()
    b_ih, b_hh = ref.bias_ih_l0.detach(), ref.bias_hh_l0.detach()
    H = W_h.shape[1]

    def to(t):
        return cp.array(t.float().contiguous(), copy=True)       # via __cuda_array_interface__

    params = {"W_x": to(W_x), "W_h": to(W_h)}
    if cell == "gru":
        params["b_h"] = to(torch.cat([b_ih[:2 * H] + b_hh[:2 * H], b_ih[2 * H:]]))
        params["b_hn"] = to(b_hh[2 * H:])
    else:
        params["b_h"] = to(b_ih + b_hh)
    return params


def check_error(cell, shape, err_ours, err_cudnn):
    """Refuse (SystemExit, so nothing is recorded) a result further from the float64
    reference than max(1e-3, 10 × cuDNN's error), or not a number: a table's times mean
    nothing when its numbers are wrong."""
    bound = max(1e-3, 10 * err_cudnn)
    if not err_ours <= bound:                                     # NaN fails too
        raise SystemExit(f"benchmarks/gpu.py: {cell} at T, B, D, H = {', '.join(map(str, shape))}: relative error "
                         f"{err_ours:.1e} against the float64 reference, above {bound:.1e} (cuDNN's: "
                         f"{err_cudnn:.1e}); nothing recorded")


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def bench(cell, T, B, D, H, repeats, cp, torch, layer, GraphedLayer):
    dev = torch.device("cuda")
    torch.manual_seed(0)
    ref64 = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](D, H).to(dev).double()
    ref32 = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](D, H).to(dev)
    ref32.load_state_dict({k: v.float() for k, v in ref64.state_dict().items()})
    gen = torch.Generator(device=dev).manual_seed(1)
    x64 = torch.randn(T, B, D, device=dev, dtype=torch.float64, generator=gen)
    dh64 = torch.randn(T, B, H, device=dev, dtype=torch.float64, generator=gen)

    def torch_pass(module, x, dh):
        h0 = torch.zeros(1, B, H, device=dev, dtype=x.dtype, requires_grad=True)
        s0 = (h0, torch.zeros_like(h0, requires_grad=True)) if cell == "lstm" else h0
        module.zero_grad(set_to_none=True)
        out, _ = module(x, s0)
        out.backward(dh)
        return out, module.weight_hh_l0.grad, h0.grad

    ref_out, ref_gWh, ref_gh0 = (t.cpu().numpy() for t in torch_pass(ref64, x64, dh64))
    x32, dh32 = x64.float(), dh64.float()
    cudnn_out, cudnn_gWh, cudnn_gh0 = (t.detach().cpu().numpy() for t in torch_pass(ref32, x32, dh32))

    params = _params_of(ref32, cell, cp, torch)
    x, dh = cp.asarray(x32.cpu().numpy()), cp.asarray(dh32.cpu().numpy())
    state0 = tuple(cp.zeros((B, H), cp.float32) for _ in layer.STATE)

    def ours():
        h, _, tape = layer.forward(params, x, state0)
        return h, layer.backward(params, dh, None, tape, need_dx=False)

    h, (_, ds0, grads) = ours()
    err_ours = max(_rel(cp.asnumpy(h), ref_out), _rel(cp.asnumpy(grads["W_h"]), ref_gWh),
                   _rel(cp.asnumpy(ds0[0]), ref_gh0[0]))
    err_cudnn = max(_rel(cudnn_out, ref_out), _rel(cudnn_gWh, ref_gWh), _rel(cudnn_gh0, ref_gh0))
    check_error(cell, (T, B, D, H), err_ours, err_cudnn)
    graphed = GraphedLayer(layer, params, x, state0, dh)

    def cupy_time(fn):
        for _ in range(3):
            fn()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        times = []
        for _ in range(repeats):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end))
        return statistics.median(times)

    def graph_time():
        for _ in range(3):
            graphed()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        times = []
        for _ in range(repeats):
            start.record(graphed.stream)
            graphed()
            end.record(graphed.stream)
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end))
        return statistics.median(times)

    def torch_time():
        for _ in range(3):
            torch_pass(ref32, x32, dh32)
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch_pass(ref32, x32, dh32)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    t_eager, t_graph, t_cudnn = cupy_time(ours), graph_time(), torch_time()
    return err_ours, err_cudnn, t_eager, t_graph, t_cudnn, t_graph / t_cudnn, t_eager / t_cudnn


if __name__ == "__main__":
    with recorded(__file__):
        main()
