#!/usr/bin/env bash
# GPU benchmark for the transformer generator (issue 6, part c): GPT-2 124M at sequence 1024,
# training tokens/s + MFU (fnbody Trainer and a plain compiled loop) and generation tokens/s at
# batch 1 and 32 against plain model.generate. Under 8 minutes on one H100/H200.
#
#   bash benchmarks/gpu.sh              # on a GPU machine (a copy of this repo, no network)
#   GPU_SH_SMOKE=1 bash benchmarks/gpu.sh   # tiny sizes on CPU: checks the script end to end
#   GPU_PEAK_TFLOPS=989 bash benchmarks/gpu.sh  # peak for MFU when the card is not recognised
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 FNBODY_NO_PROGRESS=1

# A python whose torch sees CUDA: whatever is on PATH first, then the repo's .venv.
PY=""
for cand in python3 python .venv/bin/python; do
  if command -v "$cand" >/dev/null 2>&1 && ok=$("$cand" -c 'import torch, transformers, tokenizers, safetensors; print(torch.cuda.is_available())' 2>/dev/null); then
    if [ "$ok" = "True" ] || { [ -n "${GPU_SH_SMOKE:-}" ] && [ -z "$PY" ]; }; then PY="$cand"; [ "$ok" = "True" ] && break; fi
  fi
done
if [ -z "$PY" ]; then
  echo "gpu.sh: no python with torch+transformers+tokenizers+safetensors and CUDA found (tried python3, python, .venv/bin/python)" >&2
  exit 2
fi
echo "gpu.sh: using $(command -v "$PY") ($("$PY" -c 'import sys, torch, transformers; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, cuda {torch.cuda.is_available()}")'))"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

args=(--gpu)
[ -n "${GPU_SH_SMOKE:-}" ] && args+=(--smoke)
timeout 470 "$PY" benchmarks/lm.py "${args[@]}"
