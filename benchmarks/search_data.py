"""Code search against training-set size: one encoder trained on a base corpus and on corpora that extend its train split.

Usage:
  pip download --no-deps --only-binary=:all: -d /tmp/wheels -r benchmarks/extra_packages.txt
  fnbody corpus build /tmp/wheels/*.whl --extend /tmp/corpus_default --out /tmp/corpus_ext
  .venv/bin/python benchmarks/search_data.py --base /tmp/corpus_default --extended /tmp/corpus_ext [--encoder nbow] \
      [--jobs 2] [--max-epochs 20] [--out /tmp/search_data]

`fnbody corpus build --extend` copies the base's valid and test shards byte for byte, so every run here is early-stopped
on the same valid pairs and scored on the same test pairs (CSN protocol: batches of 1000), and on the 250 real CSN rows.
Each run trains with the encoder's CSN defaults until early stopping (or --max-epochs), in its own process
(`fnbody train search`); --jobs runs them side by side, one thread each. The baseline is the base corpus, trained in the
same run: the ratio column is test MRR over the base's. Fused: dense + w * BM25, w chosen on 4000 valid pairs, BM25's
IDF from each run's own train split. Writes results.json and data_scaling.png (test MRR against training pairs).
--reuse keeps a run folder that already holds a finished run (its best checkpoint) instead of training it again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def train_one(corpus: Path, run: Path, encoder: str, max_epochs: int, threads: int, reuse: bool) -> float | None:
    """Train `encoder` on `corpus` into `run` with `fnbody train search`; seconds taken (None when an earlier run was kept)."""
    if reuse and (run / "checkpoints" / "best").exists() and (run / "metrics.jsonl").exists():
        return None
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "FNBODY_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "fnbody.cli", "train", "search", "--corpus", str(corpus), "--encoder", encoder, "--out", str(run),
           "--max-epochs", str(max_epochs), "--set", "train.show_progress=false"]
    t0 = time.perf_counter()
    log = run.with_suffix(".log")
    run.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"training on {corpus} failed (exit {rc}); see {log}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, type=Path, help="the base corpus (baseline)")
    ap.add_argument("--extended", required=True, nargs="+", type=Path, help="corpora built with `corpus build --extend BASE`")
    ap.add_argument("--encoder", default="nbow")
    ap.add_argument("--max-epochs", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=1, help="runs trained side by side (one thread each when > 1)")
    ap.add_argument("--threads", type=int, default=0, help="threads per run (default: 2 // jobs, at least 1)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/search_data"))
    ap.add_argument("--reuse", action="store_true", help="keep finished runs already in --out")
    args = ap.parse_args()

    from fnbody.corpus.io import check_corpus
    from fnbody.errors import FnbodyError
    from fnbody.search.evaluate import evaluate_search

    corpora = [args.base, *args.extended]
    manifests = [check_corpus(c) for c in corpora]
    for c, m in zip(args.extended, manifests[1:]):
        if (m.get("extends") or {}).get("content_hash") != manifests[0].get("content_hash"):
            raise FnbodyError(f"{c}: not built with `fnbody corpus build --extend {args.base}` (its manifest names another base), "
                              "so its test split may differ; the comparison needs the same test")
    threads = args.threads or max(1, 2 // args.jobs)
    names = [f"{i}_{c.name}" for i, c in enumerate(corpora)]
    print(f"training {args.encoder} on {len(corpora)} corpora, {args.jobs} at a time, {threads} thread(s) each, "
          f"at most {args.max_epochs} epochs (early stopping on valid MRR)", flush=True)
    with ThreadPoolExecutor(args.jobs) as ex:
        secs = list(ex.map(lambda cn: train_one(cn[0], args.out / cn[1], args.encoder, args.max_epochs, threads, args.reuse),
                           zip(corpora, names)))

    rows = []
    for c, m, name, s in zip(corpora, manifests, names, secs):
        run = args.out / name
        ev = evaluate_search(run, c, hybrid="auto")
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
        valid = [x for x in metrics if "valid_mrr" in x]
        best = max(valid, key=lambda x: x["valid_mrr"]) if valid else {}
        rows.append({"corpus": str(c), "train_pairs": m["counts"]["splits"]["train"]["records"], "seconds": None if s is None else round(s, 1),
                     "epochs": max((x.get("epoch", 0) for x in metrics), default=0), "best_valid_mrr": best.get("valid_mrr"),
                     "best_epoch": best.get("epoch"), "test_mrr": ev["csn_protocol"]["mrr"], "signature": ev["csn_protocol"]["signature"],
                     "bm25": ev.get("bm25", {}).get("mrr"), "fused": ev.get("fusion", {}).get("mrr"),
                     "fusion_weight": (ev.get("fusion_weight") or {}).get("weight"),
                     "csn_rows": (ev.get("csn_sample_pool") or {}).get("mrr")})
    base_mrr = rows[0]["test_mrr"]
    print(f"\n| corpus | train pairs | epochs (best) | valid MRR | test MRR | ratio vs base | fused (w) | real CSN rows | train s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        fused = f"{r['fused']:.4f} ({r['fusion_weight']:g})" if r["fused"] is not None else "-"
        print(f"| {Path(r['corpus']).name} | {r['train_pairs']} | {r['epochs']:.0f} ({r['best_epoch']:.0f}) | {r['best_valid_mrr']:.4f} "
              f"| {r['test_mrr']:.4f} | {r['test_mrr'] / base_mrr:.2f}x | {fused} | {r['csn_rows']:.4f} | "
              f"{'kept' if r['seconds'] is None else r['seconds']} |")
    print(f"signature (base): {rows[0]['signature']}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"encoder": args.encoder, "rows": rows}, indent=1) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["train_pairs"] for r in rows]
    ax.plot(xs, [r["test_mrr"] for r in rows], "o-", label=f"{args.encoder}, test (CSN protocol)")
    if all(r["fused"] is not None for r in rows):
        ax.plot(xs, [r["fused"] for r in rows], "s--", label=f"{args.encoder} + BM25, test")
    ax.plot(xs, [r["csn_rows"] for r in rows], "^:", label=f"{args.encoder}, 250 real CSN rows (pool)")
    ax.set_xscale("log")
    ax.set_xlabel("training pairs (same valid and test)")
    ax.set_ylabel("MRR")
    ax.set_title("Code search against training-set size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "data_scaling.png", dpi=120)
    print(f"wrote {args.out / 'results.json'} and {args.out / 'data_scaling.png'}")


if __name__ == "__main__":
    main()
