"""The CUDA step kernels of backends/cuda.py, compiled for the CPU by g++.

The kernels' source text is compiled unchanged, with __global__ and __device__ defined
away and one "thread" per (b, j) run in a loop. Each thread of these kernels reads and
writes only its own elements, so running them one after another is what the GPU does in
parallel. The result launches like backends/cuda.py's ``DeviceSteps.launch``, so the
Python loop can run the device steps on NumPy arrays: the GPU's arithmetic, checked on any
machine with a C++ compiler.
"""
from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from bptt.backends import cuda

PRELUDE = r"""
#include <cmath>
#define __global__
#define __device__
#define __forceinline__ inline
struct Dim { int x; };
static Dim blockIdx, blockDim, threadIdx;
static inline float tanhf_(float x) { return std::tanh(x); }
#define tanhf tanhf_
using std::tanh;
"""


def _signatures():
    """name -> list of (type, parameter name) from the kernel source."""
    out = {}
    for name, params in re.findall(r"__global__ void (\w+)\((.*?)\)\s*{", cuda.SOURCE, re.S):
        out[name] = [tuple(p.strip().rsplit(" ", 1)) for p in params.split(",")]
    return out


def _wrappers():
    lines = []
    for name, params in _signatures().items():
        for t in ("float", "double"):
            decl = ", ".join(f"{ty.replace('T', t) if 'T' in ty.split('*')[0].split() else ty} {p}"
                             for ty, p in params)
            call = ", ".join(p for _, p in params)
            lines.append(f'extern "C" void {name}_{t}({decl}) {{\n'
                         f"  blockDim.x = 1; threadIdx.x = 0;\n"
                         f"  for (int i = 0; i < B * H; ++i) {{ blockIdx.x = i; {name}<{t}>({call}); }}\n}}")
    return "\n".join(lines)


def build(directory) -> "EmulatedKernels | None":
    """Compile into ``directory``; None when no C++ compiler is found."""
    if shutil.which("g++") is None:
        return None
    src = Path(directory) / "kernels.cpp"
    lib = Path(directory) / "kernels.so"
    src.write_text(PRELUDE + cuda.SOURCE + _wrappers())
    subprocess.run(["g++", "-O1", "-shared", "-fPIC", "-std=c++14", str(src), "-o", str(lib)], check=True,
                   capture_output=True)
    return EmulatedKernels(ctypes.CDLL(str(lib)))


class EmulatedKernels:
    """``launch(name, B, H, *args)`` of backends/cuda.py's DeviceSteps, on NumPy arrays."""

    def __init__(self, lib):
        self.lib = lib
        self.names = set(_signatures())
        self.calls = []

    def __call__(self, name, B, H, *args):
        assert name in self.names, name
        dtype = next(a.dtype for a in args if hasattr(a, "dtype"))
        fn = getattr(self.lib, f"{name}_{'double' if dtype == np.float64 else 'float'}")
        converted = []
        for a in args:
            if isinstance(a, (int, np.integer)):
                converted.append(ctypes.c_int(int(a)))
            else:
                assert a.flags.c_contiguous, name
                converted.append(ctypes.c_void_p(a.ctypes.data))
        self.calls.append(name)
        fn(*converted, ctypes.c_int(B), ctypes.c_int(H))
