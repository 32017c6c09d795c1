#!/usr/bin/env bash
# One GPU session (<= 8 minutes on one H100/H200, no network, no weights): equivalence checks on the
# device, then per-forward timings of a random LLaDA-8B-shaped model (bf16, prompt 768, gen 256,
# block 32) for batch 1/8/32, each cache mode and variant (eager, graphs, graphs+fused); writes JSON + a table.
#
#   bash experiments/gpu_check.sh [OUT_DIR]        # fixtures from $FIXTURES or ../shared/fixtures
#
# Needs only torch (no Hydra / W&B). Record the JSON under experiments/results/ with the card name.
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir=${1:-${OUT:-experiments/results}}
mkdir -p "$out_dir"
fixtures=${FIXTURES:-../shared/fixtures}
card=$(${PYTHON:-python3} -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))")
args=()
[ -d "$fixtures" ] && args+=(--fixtures "$fixtures")
PYTHONPATH=src PYTHONUNBUFFERED=1 timeout "${TIMEOUT_S:-470}" ${PYTHON:-python3} -m dllm_bench.gpu_check "${args[@]}" \
    --out "$out_dir/gpu_check_${card}.json" --budget-s "${BUDGET_S:-400}" ${VARIANTS:+--variants "$VARIANTS"} | tee "$out_dir/gpu_check_${card}.txt"
