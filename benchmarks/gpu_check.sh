#!/usr/bin/env bash
# One run on a machine with an NVIDIA GPU: the test suite (its CUDA cases run there) and the GPU
# benchmark. Run from the repository root; results land in benchmarks/results/ and, when $OUT is
# set (the device tool), are copied there too.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-benchmarks/results}"
PY="${PYTHON:-python3}"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$PY" -c "import torch, torchdiffeq; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0)); print('torchdiffeq', torchdiffeq.__version__)"
} 2>&1 | tee "$OUT/gpu_device.txt"
timeout 300 "$PY" -m pytest tests -q -p no:cacheprovider -rs --ignore=tests/test_book.py 2>&1 | tail -40 | tee "$OUT/gpu_tests.txt"
"$PY" benchmarks/speed.py --problem L --device cuda --repeats 10 --out speed_L_cuda
"$PY" benchmarks/speed.py --problem S --device cuda --repeats 10 --out speed_S_cuda
# chapter 7's training iteration, eager against compiled "reduce-overhead" (CUDA graphs); bounded so
# that it cannot use up a device lease on its own
timeout 300 "$PY" benchmarks/training_compiled.py --device cuda --iterations 100
if [ "$OUT" != benchmarks/results ]; then cp benchmarks/results/speed_*_cuda.* benchmarks/results/training_compiled_cuda.* "$OUT/" 2>/dev/null; fi
