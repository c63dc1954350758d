#!/usr/bin/env bash
# GPU bench: LoRA training at Llama-2-7B's shapes (random init, bf16), our trial loop vs the seed
# recipe's HF Trainer (tokens/s, MFU, peak memory), then two trials sharing one GPU at 0.5 GPU each
# via Ray. One prepared script; writes bench/results/gpu.json. Needs a CUDA build of torch in the venv
# and one GPU with >= 40 GiB (H100/H200: ~5 minutes). Extra arguments go to bench/gpu.py, e.g.
#   bash bench/gpu.sh --batch 4 --seq-len 512 --steps 24
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "bench/gpu.sh: torch in $PY has no CUDA device (a CPU wheel, or no GPU): install a CUDA torch build" >&2
    exit 2
fi
exec timeout "${GPU_BENCH_TIMEOUT:-540}" "$PY" -m bench.gpu "$@"
