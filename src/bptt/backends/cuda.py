"""The built-in cells' steps on an NVIDIA GPU (CuPy): the protocol's step and
step_backward (cells/protocol.py), each one CUDA kernel with one thread per (b, j).

A layer called with CuPy arrays runs the Python loop (cells/loop.py) with cuBLAS for its
GEMMs and, for a built-in cell, ``steps_for(cell)`` in place of its NumPy step: one GEMM
and one launch a step. The kernels are cells/rnn.py, lstm.py and gru.py line for line
(equation numbers from docs/derivation.md); NVRTC compiles them for float and double.
tests/test_cuda_kernels_on_cpu.py runs the g++ build of the same source in the same loop
against the NumPy reference. Needs the extra ``gpu``; without CuPy or a device,
``AVAILABLE`` is False.
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
__global__ void rnn_step(const T* u, const T* v, T* h, int kind, int B, int H) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * H) return;
    T a = u[idx] + v[idx];                                                      // (R1)
    h[idx] = kind == 0 ? tanh_(a) : kind == 1 ? (a > T(0) ? a : T(0))           // (R2)
           : kind == 2 ? sigm(a) : a;
}

template <typename T>
__global__ void rnn_step_backward(const T* dh, const T* h, T* delta, int kind, int B, int H) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * H) return;
    T d = dh[idx], hv = h[idx];
    delta[idx] = kind == 0 ? d * (T(1) - hv * hv) : kind == 1 ? (hv > T(0) ? d : T(0))   // (R4), (A2)
               : kind == 2 ? d * hv * (T(1) - hv) : d;
}

template <typename T>
__global__ void lstm_step(const T* u, const T* v, const T* c_prev, T* gates, T* h, T* c, int B, int H) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * H) return;
    int b = idx / H, j = idx - b * H, r = 4 * H * b;
    T i = sigm(u[r + j] + v[r + j]);                                            // (L1), (L2)
    T f = sigm(u[r + H + j] + v[r + H + j]);
    T g = tanh_(u[r + 2 * H + j] + v[r + 2 * H + j]);
    T o = sigm(u[r + 3 * H + j] + v[r + 3 * H + j]);
    gates[r + j] = i; gates[r + H + j] = f; gates[r + 2 * H + j] = g; gates[r + 3 * H + j] = o;
    T cn = f * c_prev[idx] + i * g;                                             // (L3)
    c[idx] = cn;
    h[idx] = o * tanh_(cn);                                                     // (L4)
}

template <typename T>
__global__ void lstm_step_backward(const T* dh, const T* dc_next, const T* gates, const T* c_prev,
                                   const T* c, T* dz, T* dh_prev, T* dc_prev, int B, int H) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * H) return;
    int b = idx / H, j = idx - b * H, r = 4 * H * b;
    T i = gates[r + j], f = gates[r + H + j], g = gates[r + 2 * H + j], o = gates[r + 3 * H + j];
    T tc = tanh_(c[idx]);
    T dc = dc_next[idx] + dh[idx] * o * (T(1) - tc * tc);                       // (L6)
    dz[r + 2 * H + j] = dc * i * (T(1) - g * g);                                // (L8)
    dz[r + j] = dc * g * i * (T(1) - i);
    dz[r + H + j] = dc * c_prev[idx] * f * (T(1) - f);
    dz[r + 3 * H + j] = dh[idx] * tc * o * (T(1) - o);                          // (L7)
    dc_prev[idx] = dc * f;                                                      // (L9)
    dh_prev[idx] = T(0);
}

template <typename T>
__global__ void gru_step(const T* u, const T* v, const T* b_hn, const T* h_prev, T* gates, T* q,
                         T* h, int B, int H) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * H) return;
    int b = idx / H, j = idx - b * H, r0 = 3 * H * b;
    T r = sigm(u[r0 + j] + v[r0 + j]);                                          // (G1)
    T z = sigm(u[r0 + H + j] + v[r0 + H + j]);                                  // (G2)
    T qv = v[r0 + 2 * H + j] + b_hn[j];                                         // (G3)
    T n = tanh_(u[r0 + 2 * H + j] + r * qv);                                    // (G4)
    gates[r0 + j] = r; gates[r0 + H + j] = z; gates[r0 + 2 * H + j] = n;
    q[idx] = qv;
    h[idx] = n + z * (h_prev[idx] - n);                                         // (G5)
}

template <typename T>
__global__ void gru_step_backward(const T* dh, const T* gates, const T* q, const T* h_prev, T* du,
                                  T* dv, T* dh_prev, int B, int H) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * H) return;
    int b = idx / H, j = idx - b * H, r0 = 3 * H * b;
    T r = gates[r0 + j], z = gates[r0 + H + j], n = gates[r0 + 2 * H + j], d = dh[idx];
    T da_n = d * (T(1) - z) * (T(1) - n * n);                                   // (G7)
    T da_z = d * (h_prev[idx] - n) * z * (T(1) - z);                            // (G8)
    T da_r = da_n * q[idx] * r * (T(1) - r);                                    // (G9)
    du[r0 + j] = da_r; du[r0 + H + j] = da_z; du[r0 + 2 * H + j] = da_n;        // (G10)
    dv[r0 + j] = da_r; dv[r0 + H + j] = da_z; dv[r0 + 2 * H + j] = da_n * r;
    dh_prev[idx] = d * z;                                                       // (G6)
}
"""

NAMES = ("rnn_step", "rnn_step_backward", "lstm_step", "lstm_step_backward", "gru_step", "gru_step_backward")


@functools.lru_cache(maxsize=None)
def _module():
    expressions = [f"{n}<{t}>" for n in NAMES for t in ("float", "double")]
    return cp.RawModule(code=SOURCE, options=("-std=c++14",), name_expressions=expressions)


def _launch_on_gpu(name, B, H, *args):
    """Kernel ``name`` over B·H threads; args: arrays (C-contiguous) and ints."""
    dtype = next(a.dtype for a in args if hasattr(a, "dtype"))
    kernel = _module().get_function(f"{name}<{'double' if dtype == cp.float64 else 'float'}>")
    grid = ((B * H + THREADS - 1) // THREADS,)
    kernel(grid, (THREADS,), tuple(cp.int32(a) if isinstance(a, int) else cp.ascontiguousarray(a) for a in args)
           + (cp.int32(B), cp.int32(H)))


class DeviceSteps:
    """The protocol's step and step_backward of a built-in cell, one kernel each.

    ``launch(name, B, H, *args)`` runs a kernel of SOURCE (on the GPU by default; the tests
    give the g++ build of the same source). Arrays come from the array module of the
    inputs, so the class itself runs on CuPy and on NumPy alike."""

    def __init__(self, cell, launch=None):
        self.cell, self.name = cell, cell.name
        self.launch = launch or _launch_on_gpu

    def step(self, p, u, v, state):
        B, H = state[0].shape
        xp = _module_of(u)
        u, v = xp.ascontiguousarray(u), xp.ascontiguousarray(v)
        h = xp.empty((B, H), u.dtype)
        if self.name == "rnn":
            self.launch("rnn_step", B, H, u, v, h, self.cell.option)
            return (h,), (h,)
        gates = xp.empty_like(u)
        if self.name == "lstm":
            c_prev = xp.ascontiguousarray(state[1])
            c = xp.empty((B, H), u.dtype)
            self.launch("lstm_step", B, H, u, v, c_prev, gates, h, c)
            return (h, c), (gates, c_prev, c)
        h_prev = xp.ascontiguousarray(state[0])
        q = xp.empty((B, H), u.dtype)
        self.launch("gru_step", B, H, u, v, xp.ascontiguousarray(p["b_hn"]), h_prev, gates, q, h)
        return (h,), (gates, q, h_prev)

    def step_backward(self, p, dstate, cache):
        xp = _module_of(dstate[0])
        dh = xp.ascontiguousarray(dstate[0])
        B, H = dh.shape
        dh_prev = xp.empty((B, H), dh.dtype)
        if self.name == "rnn":
            delta = xp.empty((B, H), dh.dtype)
            self.launch("rnn_step_backward", B, H, dh, cache[0], delta, self.cell.option)
            return delta, delta, (xp.zeros_like(dh),), {}
        if self.name == "lstm":
            gates, c_prev, c = cache
            dz, dc_prev = xp.empty_like(gates), xp.empty((B, H), dh.dtype)
            self.launch("lstm_step_backward", B, H, dh, xp.ascontiguousarray(dstate[1]), gates, c_prev, c, dz,
                        dh_prev, dc_prev)
            return dz, dz, (dh_prev, dc_prev), {}
        gates, q, h_prev = cache
        du, dv = xp.empty_like(gates), xp.empty_like(gates)
        self.launch("gru_step_backward", B, H, dh, gates, q, h_prev, du, dv, dh_prev)
        return du, dv, (dh_prev,), {"b_hn": dv[:, 2 * H:].sum(axis=0)}                    # (G10)


def _module_of(a):
    return cp if cp is not None and isinstance(a, cp.ndarray) else __import__("numpy")


def steps_for(cell):
    """The device steps of a built-in cell, or None for a cell of one's own."""
    if not AVAILABLE:
        raise RuntimeError("the CuPy backend needs CuPy and an NVIDIA GPU (pip install -e '.[gpu]')")
    return DeviceSteps(cell) if type(cell).__module__ in ("bptt.cells.rnn", "bptt.cells.lstm", "bptt.cells.gru") \
        else None
