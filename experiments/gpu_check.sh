#!/usr/bin/env bash
# One GPU session (<= 8 minutes on one H100/H200, no network, no weights): golden cases on the device,
# bf16 token agreement, per-forward timings of random LLaDA-8B- and Dream-7B-shaped models (bf16,
# prompt 768, gen 256, block 32; batch 1/8/32; separate vs fused projections, both with CUDA graphs and
# fused ops), kernel profiles at batch 1 and 32, the confidence kernel, and the method table (every
# registered cache x rule: NFE, ms per forward, tokens/s, bf16 batch invariance); JSON + a table.
#
#   bash experiments/gpu_check.sh [OUT_DIR]        # fixtures from $FIXTURES or ../shared/fixtures
#
# Needs only torch (no Hydra / W&B). Writes OUT_DIR/gpu_check_<card>_<date>_<time>.json (+ .txt):
# copy it into experiments/results/ and add a line to experiments/results/README.md.
# Overrides: BUDGET_S (sections started after it are skipped, 400), TIMEOUT_S (hard stop, 470),
# VARIANTS, PRESETS, EXTRA (more gpu_check arguments).
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir=${1:-${OUT:-experiments/results}}
mkdir -p "$out_dir"
fixtures=${FIXTURES:-../shared/fixtures}
card=$(${PYTHON:-python3} -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))")
name="gpu_check_${card}_$(date -u +%Y-%m-%d_%H%M)"
args=()
[ -d "$fixtures" ] && args+=(--fixtures "$fixtures")
PYTHONPATH=src PYTHONUNBUFFERED=1 timeout "${TIMEOUT_S:-470}" ${PYTHON:-python3} -m dllm_bench.gpu_check "${args[@]}" \
    --out "$out_dir/$name.json" --budget-s "${BUDGET_S:-400}" ${VARIANTS:+--variants "$VARIANTS"} \
    ${PRESETS:+--presets "$PRESETS"} ${EXTRA:-} | tee "$out_dir/$name.txt"
