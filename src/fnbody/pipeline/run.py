"""The stage graph of `fnbody run`: corpus -> search (-> retrieval index) -> char-RNN (+ sweep) -> transformers -> evaluation
-> augment -> report."""

from __future__ import annotations

import sys
import time
import os
from pathlib import Path

from fnbody.config import config_hash, to_dict, write_run_info
from fnbody.errors import FnbodyError
from fnbody.pipeline.config import PipelineConfig
from fnbody.io import read_json, write_json
from fnbody.pipeline.stages import Stage, StageFailed, StageRunner, fnbody_cmd
from fnbody.pipeline.tasks import task_cmd


def _caps(**caps: int) -> list[str]:
    """Debug-cap flags for the caps that are set (0 = no cap)."""
    out: list[str] = []
    for flag, value in caps.items():
        if value:
            out += [f"--{flag.replace('_', '-')}", str(value)]
    return out


def _sets(settings: list[str]) -> list[str]:
    return [a for s in settings for a in ("--set", s)]


# Small recurrent models run fastest on one intra-op thread: on 2 cores, two threads per tiny LSTM step
# cost more in synchronisation than they gain (measured 10x slower under load). An explicit
# OMP_NUM_THREADS from the user wins.
SMALL_MODEL_ENV = {} if "OMP_NUM_THREADS" in os.environ else {"OMP_NUM_THREADS": "1"}


def _for_encoder(settings: list[str], encoder: str) -> list[str]:
    """Search overrides for one encoder: `key=v` applies to all, `rnn:key=v` only to the rnn encoder."""
    out = []
    for s in settings:
        head, sep, rest = s.partition(":")
        if sep and "=" not in head:
            if head == encoder:
                out.append(rest)
        else:
            out.append(s)
    return out


def _search_caps(encoder: str, max_epochs: int, max_steps: int) -> list[str]:
    """`search.max_epochs` / `max_steps` as caps on the encoder's own recipe, as overrides its `settings` can still change.

    A cap never lengthens a run: MiniLM's fine-tune is one epoch with a cosine schedule over it, and a cap of 100
    (CSN's "until early stopping" for the from-scratch encoders) must not stretch that schedule over 100 epochs.
    """
    from fnbody.search.train import default_config  # at stage run time: building the stage list stays torch-free

    own = default_config(encoder).train
    out = []
    if max_epochs:
        out.append(f"train.max_epochs={min(max_epochs, own.max_epochs) if own.max_epochs else max_epochs}")
    if max_steps:
        out.append(f"train.max_steps={min(max_steps, own.max_steps) if own.max_steps else max_steps}")
    return out


def build_stages(cfg: PipelineConfig, out: Path) -> list[Stage]:
    """Every stage of the pipeline for `cfg`, writing under `out`, in run order."""
    corpus = out / "corpus"
    dev = cfg.device
    stages: list[Stage] = []

    c = cfg.corpus
    # With extra_train_sources the base is built beside the corpus and extended into it: every later stage trains on
    # the larger train split and evaluates on the base's valid and test, unchanged.
    base = out / "corpus-base" if c.extra_train_sources else corpus
    build = [fnbody_cmd("corpus", "build", *c.sources, "--out", base, "--seed", c.seed, *_caps(max_files=c.max_files, jobs=c.jobs))]
    if c.extra_train_sources:
        build.append(fnbody_cmd("corpus", "build", *c.extra_train_sources, "--extend", base, "--out", corpus, *_caps(jobs=c.jobs)))
    stages.append(Stage(
        "corpus", to_dict(c),
        lambda resume: [
            *build,
            task_cmd("corpus_statistics", corpus=str(corpus), out=str(out / "corpus_stats.json"), plots=str(out / "figures")),
        ],
        outputs=[corpus / "manifest.json", out / "corpus_stats.json"], workdir=None,
    ))

    s = cfg.search
    for enc in s.encoders:
        run = out / "search" / enc
        stages.append(Stage(
            f"search-{enc}", {**to_dict(s), "encoders": [enc], "settings": _for_encoder(s.settings, enc), "seed": cfg.seed, "device": dev},
            lambda resume, enc=enc, run=run: [
                fnbody_cmd("train", "search", "--corpus", corpus, "--encoder", enc, "--out", run, "--device", dev,
                           *_caps(max_samples=s.max_samples),
                           *_sets([f"train.seed={cfg.seed}", *_search_caps(enc, s.max_epochs, s.max_steps), *_for_encoder(s.settings, enc)]),
                           *(["--resume"] if resume else [])),
                task_cmd("evaluate_search_run", run=str(run), corpus=str(corpus), out=str(run / "eval.json"),
                         hybrid="auto" if s.bm25_fusion else 0.0),
            ],
            outputs=[run / "eval.json"], deps=["corpus"], workdir=run, env=SMALL_MODEL_ENV,
        ))

    # The retrieval index of the train split: built once, used by retrieval-aware fine-tuning and the augment stage.
    a = cfg.augment
    lm_names = [lm.name for lm in cfg.lms]
    target = a.generator or (lm_names[-1] if lm_names else "")
    rag_lms = [lm.name for lm in cfg.lms if lm.rag]
    if target and target not in lm_names and a.enabled:
        raise FnbodyError(f"augment.generator {target!r} is not one of lms {lm_names}")
    if rag_lms and a.retriever not in s.encoders:
        raise FnbodyError(f"lms {rag_lms} train with retrieved context (rag = true), but augment.retriever {a.retriever!r} "
                          f"is not among search.encoders {s.encoders}: add it there or set augment.retriever")
    index = out / "index"
    want_index = a.retriever in s.encoders and ((a.enabled and target) or rag_lms)
    if want_index:
        stages.append(Stage(
            # With BM25, the index also records the fusion weight chosen on valid: `fnbody serve --search` on it then fuses by
            # default (retrieval for generation keeps augment.rag_hybrid, passed explicitly).
            "rag-index", {"retriever": a.retriever, "bm25": a.rag_hybrid > 0, "fusion_weight": a.rag_hybrid > 0 and s.bm25_fusion, "device": dev},
            lambda resume: [fnbody_cmd("search", "index", out / "search" / a.retriever, "--corpus", corpus, "--splits", "train",
                                       "--out", index, "--overwrite", "--device", dev,
                                       *(["--bm25"] if a.rag_hybrid > 0 else []),
                                       *(["--hybrid-weight", "auto"] if a.rag_hybrid > 0 and s.bm25_fusion else []))],
            outputs=[index / "index.json"], deps=["corpus", f"search-{a.retriever}"], workdir=index,
        ))

    r = cfg.char_rnn
    char_run = out / "char_rnn"
    stages.append(Stage(
        "char-rnn", {**to_dict(r), "seed": cfg.seed, "device": dev},
        lambda resume: [fnbody_cmd(
            "train", "char-rnn", "--corpus", corpus, "--out", char_run, "--cell", r.cell, "--hidden", r.hidden,
            "--layers", r.layers, "--seq-len", r.seq_len, "--batch-size", r.batch_size, "--seed", cfg.seed, "--device", dev,
            *_caps(max_epochs=r.max_epochs, max_steps=r.max_steps, max_samples=r.max_samples), *_sets(r.settings),
            *(["--resume"] if resume else []))],
        outputs=[char_run / "fnbody.json"], deps=["corpus"], workdir=char_run, env=SMALL_MODEL_ENV,
    ))
    generators = [("char-rnn", char_run, "char-rnn")]
    if r.sweep:
        sweep = out / "sweep"
        stages.append(Stage(
            "sweep", {k: v for k, v in to_dict(r).items() if k.startswith("sweep")} | {"seed": cfg.seed, "device": dev},
            lambda resume: [fnbody_cmd(
                "sweep", "--corpus", corpus, "--out", sweep, "--seed", cfg.seed, "--device", dev,
                "--cells", ",".join(r.sweep_cells), "--lrs", ",".join(map(str, r.sweep_lrs)),
                "--batch-sizes", ",".join(map(str, r.sweep_batch_sizes)),
                *_caps(max_steps=r.sweep_max_steps, bleu_samples=r.sweep_bleu_samples, max_samples=r.max_samples),
                *(["--full"] if r.sweep_full else []))],
            outputs=[sweep / "sweep.csv"], deps=["corpus"], workdir=sweep, env=SMALL_MODEL_ENV,
        ))

    for lm in cfg.lms:
        run = out / "lm" / lm.name
        # Retrieval-aware fine-tuning takes augment's retrieval settings, so training and evaluation see the same context.
        rag_sets = [f"data.rag_index={index}", f"data.rag_k={a.rag_k}", f"data.rag_hybrid={a.rag_hybrid}",
                    *([f"data.rag_budget_tokens={a.rag_budget_tokens}"] if a.rag_budget_tokens else [])] if lm.rag else []
        stages.append(Stage(
            f"lm-{lm.name}", {**to_dict(lm), "seed": cfg.seed, "device": dev, **({"rag_sets": rag_sets} if lm.rag else {})},
            lambda resume, lm=lm, run=run, rag_sets=rag_sets: [fnbody_cmd(
                "train", "lm", "--corpus", corpus, "--out", run, "--init", lm.init, "--seed", cfg.seed, "--device", dev,
                *_caps(max_steps=lm.max_steps, max_epochs=lm.max_epochs, max_samples=lm.max_samples), *_sets([*rag_sets, *lm.settings]),
                *(["--resume"] if resume else []))],
            outputs=[run / "fnbody.json", run / "config.json"], deps=["corpus", *(["rag-index"] if lm.rag else [])], workdir=run,
        ))
        generators.append((lm.name, run, f"lm-{lm.name}"))

    e = cfg.evaluation
    for name, run, dep in generators:
        ev = out / "eval" / name
        stages.append(Stage(
            f"eval-{name}", {**to_dict(e), "seed": cfg.seed, "device": dev},
            lambda resume, name=name, run=run, ev=ev: [task_cmd(
                "evaluate_generator", run=str(run), corpus=str(corpus), out=str(ev), name=name,
                bleu_samples=e.bleu_samples, humaneval_problems=e.humaneval_problems, max_new_tokens=e.max_new_tokens,
                batch_size=e.batch_size, timeout=e.timeout, seed=cfg.seed, device=dev, require_body=e.require_body)],
            # Same key: generation resumes from its .partial files; a new key wipes the folder, so no sample from other
            # settings (another max_new_tokens, another model) is resumed into this evaluation.
            outputs=[ev / "summary.json"], deps=["corpus", dep], workdir=ev,
        ))

    if a.enabled and want_index and target:
        aug = out / "augment" / target
        stages.append(Stage(
            f"augment-{target}", {**to_dict(a), **to_dict(e), "seed": cfg.seed, "device": dev},
            lambda resume: [
                task_cmd("evaluate_augmented", run=str(out / "lm" / target), corpus=str(corpus), index=str(index),
                         plain=str(out / "eval" / target), out=str(aug), name=target, rag_k=a.rag_k,
                         rag_budget_tokens=a.rag_budget_tokens, rag_hybrid=a.rag_hybrid, checked_n=a.checked_n, checked_temperature=a.checked_temperature, combined=a.combined,
                         rerank_k=a.rerank_k, guide_alpha=a.guide_alpha, guide_k=a.guide_k,
                         bleu_samples=e.bleu_samples, humaneval_problems=e.humaneval_problems, max_new_tokens=e.max_new_tokens,
                         batch_size=e.batch_size, timeout=e.timeout, seed=cfg.seed, device=dev, require_body=e.require_body)],
            outputs=[aug / "summary.json"], deps=["corpus", "rag-index", f"eval-{target}"], workdir=aug,  # as eval: no stale partials
        ))

    stages.append(Stage(
        "report", {"config": config_hash(cfg), "t": time.time()},  # always rewritten: it is cheap and reads everything
        lambda resume: [task_cmd("write_report", out_dir=str(out))],
        outputs=[out / "report.md", out / "report.json"], deps=[st.name for st in stages],
    ))
    return stages


PLAN = "plan.json"  # in OUT/stages: the current config's stages and keys; the report shows only outputs that match it


def check_out_dir(out: Path) -> dict | None:
    """Refuse an --out that is a file, another kind of run, or a non-empty folder holding no pipeline; return its old run info."""
    if out.exists() and not out.is_dir():
        raise FnbodyError(f"--out {out}: is a file, not a folder; pick a new folder")
    if not out.exists():
        return None
    info_path = out / "fnbody.json"
    if info_path.exists():
        try:
            info = read_json(info_path)
        except FnbodyError:
            info = {}
        if info.get("kind") != "pipeline":
            raise FnbodyError(f"--out {out}: holds a {info.get('kind', 'unknown')!r} run, not a pipeline; pick a new folder")
        return info
    if any(out.iterdir()):
        raise FnbodyError(f"--out {out}: a folder with other files and no pipeline run in it (stages would write into and "
                          "wipe subfolders); pick a new or empty folder")
    return None


def plan_keys(stages: list[Stage], runner: StageRunner) -> dict[str, str]:
    """Every stage's key, in run order, known before any runs (a key depends on config and deps' keys only)."""
    for stage in stages:
        runner.keys[stage.name] = runner.key(stage)
    return dict(runner.keys)


def run_pipeline(cfg: PipelineConfig, out: Path, only: list[str] | None = None, argv: list[str] | None = None) -> StageRunner:
    """Run (or resume) every stage; a failing stage raises StageFailed naming it and its log.

    The report is written even then (or when `only` leaves stages unfinished), and says which stages it lacks.
    """
    old = check_out_dir(out)
    stages = build_stages(cfg, out)  # before writing anything: a config error leaves OUT untouched
    names = [st.name for st in stages]
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise FnbodyError(f"--only {unknown}: no such stage; this config's stages are {names}")
    if old is not None and old.get("config") != to_dict(cfg):
        print(f"pipeline: {out} holds a run made with another config; stages whose settings changed run again, and the "
              "report shows only outputs of this config's stages", file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    write_run_info(out, "pipeline", cfg, argv)
    runner = StageRunner(out)
    keys = plan_keys(stages, runner)
    runner.records.mkdir(parents=True, exist_ok=True)
    write_json(runner.records / PLAN, {"stages": {n: k for n, k in keys.items() if n != "report"}})
    runner.keys = {}
    t0 = time.perf_counter()
    report = stages[-1]
    for i, stage in enumerate(stages, 1):
        if only and stage.name not in only and stage.name != "report":
            runner.keys[stage.name] = runner.key(stage)
            continue
        try:
            runner.run(stage, i, len(stages))
        except StageFailed:
            if stage is not report:
                _report_anyway(runner, report, stages)
            raise
        done = time.perf_counter() - t0
        print(f"pipeline: {i}/{len(stages)} stages, {done:.0f}s elapsed", file=sys.stderr, flush=True)
    return runner


def _report_anyway(runner: StageRunner, report: Stage, stages: list[Stage]) -> None:
    """After a failed stage: rewrite the report from the finished stages (it names the missing ones), so no older report stands."""
    for stage in stages:
        runner.keys.setdefault(stage.name, runner.key(stage))
    try:
        runner.run(report)
    except FnbodyError as e:
        print(f"pipeline: could not write the partial report: {e}", file=sys.stderr, flush=True)
        (runner.out_dir / "report.md").unlink(missing_ok=True)
        (runner.out_dir / "report.json").unlink(missing_ok=True)
