#!/usr/bin/env bash
# Every GPU check in one call: the GPU tests and benchmarks/gpu.py, on a machine with an
# NVIDIA GPU that has CuPy, PyTorch, NumPy, Numba, safetensors and pytest. bptt runs from
# src/ without an install. What it prints also lands in $OUT (gpu_tests.txt,
# gpu_bench.txt, and the recorded results/) when $OUT is set.
#
#     bash benchmarks/gpu_check.sh            # about 3-6 minutes; give it a 540 s limit
#
# It stops with a non-zero status, before any figure is recorded, when there is no GPU,
# CuPy or PyTorch cannot reach it, or a GPU test fails or is skipped; benchmarks/gpu.py
# itself refuses to record a table whose numbers disagree with the float64 reference.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp}"
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1 CUPY_TF32=0
fail() { echo "gpu_check.sh: $*; nothing recorded" >&2; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || fail "nvidia-smi found no NVIDIA GPU"
python3 -c "
import cupy, torch, numpy
from bptt.backends import cuda
print('cupy', cupy.__version__, '| torch', torch.__version__, '| numpy', numpy.__version__)
assert cuda.AVAILABLE and torch.cuda.is_available(), 'CuPy or PyTorch sees no CUDA device'
" || fail "CuPy and PyTorch with a CUDA device are needed"
python3 -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py tests/test_cuda_kernels_on_cpu.py 2>&1 \
    | tee "$OUT/gpu_tests.txt" || fail "a GPU test failed"
! grep -q "skipped" "$OUT/gpu_tests.txt" || fail "GPU tests were skipped"
timeout 420 python3 benchmarks/gpu.py 2>&1 | tee "$OUT/gpu_bench.txt" || fail "benchmarks/gpu.py failed"
cp -r benchmarks/results "$OUT/"
