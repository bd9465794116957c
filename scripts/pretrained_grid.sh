#!/bin/bash
# Issue 15's controlled comparison at laptop scale, every step from the text pretraining to the grid's table
# (bench/RESULTS.md, "The controlled comparison"). Run from the repository root after the quickstart built
# data/embedded. Steps that have their output already are skipped, so a stopped run continues when re-run.
#   bash scripts/pretrained_grid.sh            # ~2 hours on 2 CPU cores
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/grid}
STEPS=${STEPS:-400}                      # stage-1 steps per grid run
AUDIO=(--num-audio-units 200 --audio-feature-dim 768 --text-vocab-size 267)   # the quickstart's data

# 1. The pretrained text LMs (MoE: DeepSeek-V2 layout; dense: Llama layout), one thread each, side by side.
[ -f runs/pretrain_text/moe/hf/config.json ] || OMP_NUM_THREADS=1 $PY -m lightning_most fit --config conf/pretrain_text.yaml &
[ -f runs/pretrain_text/dense/hf/config.json ] || OMP_NUM_THREADS=1 $PY -m lightning_most fit --config conf/pretrain_text.yaml \
    --config conf/pretrain/dense.yaml &
wait
# 2. Their Hugging Face folders -> backbone weights with the quickstart's audio shapes (MoE twice: with and without
#    its shared expert).
$PY -m lightning_most convert --src runs/pretrain_text/moe/hf --out runs/pretrain_text/moe.pt "${AUDIO[@]}"
$PY -m lightning_most convert --src runs/pretrain_text/moe/hf --out runs/pretrain_text/moe_noshared.pt "${AUDIO[@]}" \
    --moe-variant noshared
$PY -m lightning_most convert --src runs/pretrain_text/dense/hf --out runs/pretrain_text/dense.pt "${AUDIO[@]}"
# 3. Expert groups clustered from the pretrained MoE's routing of dev text and audio.
$PY -m lightning_most partition --config conf/quickstart.yaml --config conf/grid/pretrained_moe.yaml \
    --out $OUT/partition_clustering.yaml
# 4. The spoken-LM pair sets (300 sWUGGY / 300 sBLIMP / 200 + 200 StoryCloze pairs), built once.
SETS=$($PY -m lightning_most spoken_lm_sets --cache_dir $OUT/cache | sed -n 's/.*--spoken_lm_root \([^ ]*\).*/\1/p')
# 5. Five variants x 3 seeds from the same pretrained starts, two runs at a time, each evaluated.
$PY -m lightning_most grid --config conf/quickstart.yaml \
    --variants dense=conf/grid/pretrained_dense.yaml \
               vanilla=conf/ablation/vanilla_moe.yaml+conf/grid/pretrained_moe.yaml \
               most=conf/ablation/most.yaml+conf/grid/pretrained_moe.yaml \
               noshared=conf/grid/pretrained_moe_noshared.yaml \
               most_clustering=conf/ablation/most.yaml+conf/grid/pretrained_moe.yaml+$OUT/partition_clustering.yaml \
    --seeds 0 1 2 --jobs 2 --out_dir $OUT --max_utterances 50 --spoken_lm_root "$SETS" \
    -- --trainer.max_steps $STEPS --trainer.val_check_interval $STEPS --trainer.limit_val_batches 8
