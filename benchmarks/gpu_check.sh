#!/usr/bin/env bash
# Every GPU check in one call: the GPU tests and benchmarks/gpu.py, on a machine with an
# NVIDIA GPU that has CuPy, PyTorch, NumPy, Numba, safetensors and pytest. bptt runs from
# src/ without an install. What it prints also lands in $OUT (gpu_tests.txt,
# gpu_bench.txt, and the recorded results/) when $OUT is set.
#
#     bash benchmarks/gpu_check.sh            # about 3-6 minutes; give it a 540 s limit
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp}"
export PYTHONPATH=src PYTHONUNBUFFERED=1 CUPY_TF32=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c "import cupy, torch, numpy; print('cupy', cupy.__version__, '| torch', torch.__version__, '| numpy', numpy.__version__)"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_cuda_kernels_on_cpu.py 2>&1 | tee "$OUT/gpu_tests.txt"
timeout 420 python3 benchmarks/gpu.py 2>&1 | tee "$OUT/gpu_bench.txt"
cp -r benchmarks/results "$OUT/" 2>/dev/null || true
