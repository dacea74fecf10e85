#!/usr/bin/env bash
# The GPU path in a few minutes on one GPU, no data needed: what the README's GPU table reports.
#   1. bench/gpu_check.py: R50-FPN GN at the paper's size (800 x 1333), 2 images/iteration, in
#      bf16 autocast and in fp32, with channels-last, at 8 images/iteration, and the SyncBN
#      variant through SyncBatchNorm + DDP + NCCL;
#   2. bench/gpu_trial.py: one trial of the default study on the GPU (pinned-memory loading,
#      bf16, evaluation, checkpoint with CUDA RNG), stopped and resumed.
# Results go to $RESULTS (default ./gpu_check_results) as JSON lines and a log.
#
#   bash bench/gpu_check.sh            # on a machine with a CUDA GPU and this project installed
set -uo pipefail  # a failing variant is reported, and the others still run
cd "$(dirname "$0")/.."
results="${RESULTS:-gpu_check_results}"
mkdir -p "$results"
export PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
failed=0
step() { echo "== $*"; "$@" || { echo "== FAILED ($?): $*"; failed=1; }; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$python" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
  check=("$python" bench/gpu_check.py --json "$results/gpu_check.jsonl")
  step "${check[@]}"                  # the reference: GN, bf16, 2 images
  step "${check[@]}" --no-bf16        # fp32
  step "${check[@]}" --channels-last
  step "${check[@]}" --ims-per-gpu 8
  step "${check[@]}" --norm syncbn
  step "$python" bench/gpu_trial.py --space search_spaces/default.yaml --json "$results/gpu_trial.jsonl"
  exit $failed
} 2>&1 | tee "$results/gpu_check.log"
