"""The step kernels on an NVIDIA GPU (CuPy), with the signatures of the Numba kernels.

The layers' fused paths (cells/) take their array module and their step kernels from
the inputs (``kernels_for``): NumPy arrays get NumPy and backends/fused.py; CuPy arrays
get CuPy, cuBLAS for the GEMMs, and the kernels below. So the loop around the kernels is
one piece of code, tested on the CPU, and the GPU adds only these kernels: one thread
per (b, j), the equations of fused.py line for line (equation numbers from
docs/derivation.md), compiled by NVRTC for float and double.

Install with the extra ``gpu`` (CuPy for CUDA 12). Without CuPy or without a device,
``AVAILABLE`` is False and nothing here is imported by the CPU path.
"""
from __future__ import annotations

import functools

try:                                           # pragma: no cover - depends on the machine
    import cupy as cp
    AVAILABLE = cp.cuda.runtime.getDeviceCount() > 0
except Exception:                              # ImportError, or CUDA without a device
    cp = None
    AVAILABLE = False

THREADS = 256

SOURCE = r"""
__device__ __forceinline__ float tanh_(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_(double x) { return tanh(x); }
template <typename T> __device__ __forceinline__ T sigm(T z) {
    return T(0.5) * tanh_(T(0.5) * z) + T(0.5);                               // (A3)
}

template <typename T>
__global__ void rnn_forward_step(T* a, const T* rec, const T* bias, const T* h_prev,
                                 const bool* valid, int kind, int B, int H) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * H) return;
    int b = idx / H, j = idx - b * H;
    T v = a[idx] + rec[idx] + bias[j];                                          // (R1)
    T h = kind == 0 ? tanh_(v) : kind == 1 ? (v > T(0) ? v : T(0))              // (R2)
        : kind == 2 ? sigm(v) : v;
    a[idx] = valid[b] ? h : h_prev[idx];                                        // (M1)
}

template <typename T>
__global__ void rnn_backward_step(const T* dh_above, const T* dh_next, const T* h,
                                  const bool* valid, int kind, T* delta, T* skip, int B, int H) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * H) return;
    int b = idx / H;
    T dh = dh_above[idx] + dh_next[idx];                                        // (R3)
    if (!valid[b]) { delta[idx] = T(0); skip[idx] = dh; return; }               // (M2), (M3)
    T hv = h[idx];
    delta[idx] = kind == 0 ? dh * (T(1) - hv * hv) : kind == 1 ? (hv > T(0) ? dh : T(0))   // (R4), (A2)
               : kind == 2 ? dh * hv * (T(1) - hv) : dh;
    skip[idx] = T(0);
}

template <typename T>
__global__ void lstm_forward_step(T* gt, const T* rec, const T* bias, const T* h_prev,
                                  const T* c_prev, T* h_out, T* c_out, const bool* valid,
                                  int B, int H) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * H) return;
    int b = idx / H, j = idx - b * H, r = 4 * H * b;
    T i = sigm(gt[r + j] + rec[r + j] + bias[j]);                               // (L1), (L2)
    T f = sigm(gt[r + H + j] + rec[r + H + j] + bias[H + j]);
    T g = tanh_(gt[r + 2 * H + j] + rec[r + 2 * H + j] + bias[2 * H + j]);
    T o = sigm(gt[r + 3 * H + j] + rec[r + 3 * H + j] + bias[3 * H + j]);
    gt[r + j] = i; gt[r + H + j] = f; gt[r + 2 * H + j] = g; gt[r + 3 * H + j] = o;
    T c = f * c_prev[idx] + i * g;                                              // (L3)
    if (valid[b]) { c_out[idx] = c; h_out[idx] = o * tanh_(c); }                // (L4)
    else { c_out[idx] = c_prev[idx]; h_out[idx] = h_prev[idx]; }                // (M1)
}

template <typename T>
__global__ void lstm_backward_step(const T* dh_above, const T* dh_next, T* dc_next, const T* gt,
                                   const T* c_t, const T* c_prev, const bool* valid, T* dz,
                                   T* skip, int B, int H) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * H) return;
    int b = idx / H, j = idx - b * H, r = 4 * H * b;
    T dh = dh_above[idx] + dh_next[idx];                                        // (L5)
    if (!valid[b]) {                                                            // (M2), (M3)
        dz[r + j] = T(0); dz[r + H + j] = T(0); dz[r + 2 * H + j] = T(0); dz[r + 3 * H + j] = T(0);
        skip[idx] = dh;
        return;                                                                 // dc passes unchanged
    }
    T i = gt[r + j], f = gt[r + H + j], g = gt[r + 2 * H + j], o = gt[r + 3 * H + j];
    T tc = tanh_(c_t[idx]);
    T dc = dc_next[idx] + dh * o * (T(1) - tc * tc);                            // (L6)
    dz[r + 2 * H + j] = dc * i * (T(1) - g * g);                                // (L8)
    dz[r + j] = dc * g * i * (T(1) - i);
    dz[r + H + j] = dc * c_prev[idx] * f * (T(1) - f);
    dz[r + 3 * H + j] = dh * tc * o * (T(1) - o);                               // (L7)
    dc_next[idx] = dc * f;                                                      // (L9)
    skip[idx] = T(0);
}

template <typename T>
__global__ void gru_forward_step(T* gt, const T* rec, const T* bias, const T* b_hn,
                                 const T* h_prev, T* q_out, T* h_out, const bool* valid,
                                 int B, int H) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * H) return;
    int b = idx / H, j = idx - b * H, r0 = 3 * H * b;
    T z = sigm(gt[r0 + H + j] + rec[r0 + H + j] + bias[H + j]);                 // (G2)
    T r = sigm(gt[r0 + j] + rec[r0 + j] + bias[j]);                             // (G1)
    T q = rec[r0 + 2 * H + j] + b_hn[j];                                        // (G3)
    T n = tanh_(gt[r0 + 2 * H + j] + bias[2 * H + j] + r * q);                  // (G4)
    gt[r0 + j] = r; gt[r0 + H + j] = z; gt[r0 + 2 * H + j] = n;
    q_out[idx] = q;
    T hp = h_prev[idx];
    h_out[idx] = valid[b] ? n + z * (hp - n) : hp;                              // (G5), (M1)
}

template <typename T>
__global__ void gru_backward_step(const T* dh_above, const T* dh_next, const T* gt, const T* q_t,
                                  const T* h_prev, const bool* valid, T* d_rec, T* d_n,
                                  T* direct, int B, int H) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * H) return;
    int b = idx / H, j = idx - b * H, r0 = 3 * H * b;
    T dh = dh_above[idx] + dh_next[idx];                                        // (G6)
    if (!valid[b]) {                                                            // (M2), (M3)
        d_rec[r0 + j] = T(0); d_rec[r0 + H + j] = T(0); d_rec[r0 + 2 * H + j] = T(0);
        d_n[idx] = T(0);
        direct[idx] = dh;
        return;
    }
    T r = gt[r0 + j], z = gt[r0 + H + j], n = gt[r0 + 2 * H + j];
    T dn = dh * (T(1) - z) * (T(1) - n * n);                                    // (G7)
    d_n[idx] = dn;
    d_rec[r0 + H + j] = dh * (h_prev[idx] - n) * z * (T(1) - z);                // (G8)
    d_rec[r0 + j] = dn * q_t[idx] * r * (T(1) - r);                             // (G9)
    d_rec[r0 + 2 * H + j] = dn * r;
    direct[idx] = dh * z;                                                       // (G6)
}
"""

NAMES = ("rnn_forward_step", "rnn_backward_step", "lstm_forward_step", "lstm_backward_step",
         "gru_forward_step", "gru_backward_step")


@functools.lru_cache(maxsize=None)
def _module():
    expressions = [f"{n}<{t}>" for n in NAMES for t in ("float", "double")]
    return cp.RawModule(code=SOURCE, options=("-std=c++14",), name_expressions=expressions)


def _launcher(name):
    """A callable with the Numba kernel's signature; B and H come from its state argument."""
    state_arg = _STATE_ARG[name]
    compiled = {}                               # dtype -> kernel: looked up once, launched every step

    def launch(*args):
        state = args[state_arg]
        B, H = state.shape
        kernel = compiled.get(state.dtype)
        if kernel is None:
            kind = "double" if state.dtype == cp.float64 else "float"
            kernel = compiled[state.dtype] = _module().get_function(f"{name}<{kind}>")
        grid = ((B * H + THREADS - 1) // THREADS,)
        kernel(grid, (THREADS,), tuple(_arg(a) for a in args) + (cp.int32(B), cp.int32(H)))

    launch.__name__ = name
    return launch


# The argument, by position, whose shape is (B, H) in each kernel's signature.
_STATE_ARG = {"rnn_forward_step": 3, "rnn_backward_step": 2, "lstm_forward_step": 3,
              "lstm_backward_step": 1, "gru_forward_step": 4, "gru_backward_step": 1}


def _arg(a):
    if isinstance(a, int):                     # the Elman nonlinearity's number
        return cp.int32(a)
    if not a.flags.c_contiguous:
        raise ValueError(f"kernel argument: expected a C-contiguous array, got strides {a.strides}")
    return a


class _Kernels:
    """The CUDA step kernels under the names and signatures of backends/fused.py."""

    def __init__(self):
        for name in NAMES:
            setattr(self, name, _launcher(name))


@functools.lru_cache(maxsize=None)
def kernels():
    if not AVAILABLE:
        raise RuntimeError("the CuPy backend needs CuPy and an NVIDIA GPU (pip install -e '.[gpu]')")
    return _Kernels()
