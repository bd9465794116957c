#!/bin/bash
# Issue 15's same-start comparison: dense against MoE variants all upcycled from ONE pretrained dense text LM
# (MoST section 6.1 upcycles Llama-3.2), and one shared expert against two. bench/RESULTS.md, "Same start".
# Run from the repository root after the quickstart built data/embedded. Steps whose output exists are skipped,
# and the grid skips finished runs, so a stopped run continues when re-run.
#   bash scripts/upcycled_grid.sh            # ~90 min on 2 CPU cores
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/grid_upcycled}
STEPS=${STEPS:-400}                      # stage-1 steps per grid run (as scripts/pretrained_grid.sh)
AUDIO=(--num_audio_units 200 --audio_feature_dim 768 --text_vocab_size 267)   # the quickstart's data
mkdir -p $OUT

# 1. The pretrained dense text LM (Llama layout, GQA, MLP width 256 in all 4 layers).
[ -f runs/pretrain_text/dense/hf/config.json ] || $PY -m lightning_most fit --config conf/pretrain_text.yaml \
    --config conf/pretrain/dense.yaml
# 2. The dense baseline's weights, and the MoE variants upcycled from the same folder. Fine-grained slices: each
#    layer after the first cuts its MLP (256) into 4 slices of 64; 16 routed experts, each expert group (8 for
#    MoST's halves, all 16 for vanilla) holds every slice twice; top-4, so a token's routed compute equals the
#    dense MLP's. Zero router, no noise: before training every variant computes exactly the dense model's logits
#    (tests/test_upcycling.py), so the variants differ only in how they may learn.
[ -f runs/pretrain_text/dense.pt ] || $PY -m lightning_most convert --src runs/pretrain_text/dense/hf \
    --out runs/pretrain_text/dense.pt --num-audio-units 200 --audio-feature-dim 768 --text-vocab-size 267
upcycle() {  # name, then the variant's options
  local name=$1; shift
  [ -f $OUT/upcycled_$name.yaml ] || $PY -m lightning_most upcycle --src runs/pretrain_text/dense/hf "${AUDIO[@]}" \
      --out $OUT/upcycled_$name.pt --out_config $OUT/upcycled_$name.yaml \
      --construction slice --num_slices 4 --num_routed_experts 16 --top_k 4 --first_k_dense 1 "$@"
}
upcycle vanilla --variant vanilla --num_shared_experts 1
upcycle most --variant mamoe --num_shared_experts 1
upcycle most_shared2 --variant mamoe --num_shared_experts 2
upcycle noshared --variant noshared --num_shared_experts 0
# 3. The spoken-LM pair sets (300 sWUGGY / 300 sBLIMP / 200 + 200 StoryCloze pairs), built once.
SETS=$($PY -m lightning_most spoken_lm_sets --cache_dir runs/grid/cache | sed -n 's/.*--spoken_lm_root \([^ ]*\).*/\1/p')
# 4. Five variants x 3 seeds, two runs at a time, each evaluated as in scripts/pretrained_grid.sh.
$PY -m lightning_most grid --config conf/quickstart.yaml \
    --variants dense=conf/grid/pretrained_dense.yaml \
               vanilla=$OUT/upcycled_vanilla.yaml \
               most=$OUT/upcycled_most.yaml \
               most_shared2=$OUT/upcycled_most_shared2.yaml \
               noshared=$OUT/upcycled_noshared.yaml \
    --seeds 0 1 2 --jobs 2 --out_dir $OUT --max_utterances 50 --spoken_lm_root "$SETS" \
    -- --trainer.max_steps $STEPS --trainer.val_check_interval $STEPS --trainer.limit_val_batches 8
