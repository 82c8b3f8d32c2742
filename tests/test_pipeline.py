"""`fnbody run --preset tiny` end to end on a small fixture corpus: every report section holds real numbers."""

import json
import math
import sysconfig
from pathlib import Path

import pytest

from fnbody.cli import main
from fnbody.errors import FnbodyError
from fnbody.pipeline.config import PRESETS, load_preset
from fnbody.search.evaluate import CSN_SAMPLE

# Small standard-library packages as separate "repos"; their names hash into all three splits (seed 0).
STDLIB = Path(sysconfig.get_paths()["stdlib"])
SOURCES = ["json", "html", "concurrent", "wsgiref", "importlib", "tomllib", "dbm"]


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "run"
    sources = "[" + ",".join(f'"{STDLIB / s}"' for s in SOURCES) + "]"
    argv = ["run", "--preset", "tiny", "--out", str(out), "--quiet", "--set", f"corpus.sources={sources}",
            "--set", "corpus.max_files=0", "--set", "search.max_steps=3", "--set", "char_rnn.max_steps=10",
            "--set", "char_rnn.sweep_max_steps=3", "--set", "lms.0.max_steps=4", "--set", "evaluation.humaneval_problems=2",
            "--set", "evaluation.bleu_samples=4", "--set", "augment.rag_hybrid=0.3", "--set", "lms.0.rag=true"]
    assert main(argv) == 0
    return out, argv


def test_report_has_every_section_with_real_numbers(tiny_run):
    out, _ = tiny_run
    rep = json.loads((out / "report.json").read_text())
    data = rep["data"]
    assert all(data["splits"][s]["records"] > 0 for s in ("train", "valid", "test"))
    assert _is_number(data["code_tokens"]["median"]) and data["signature"].startswith("corpus-stats|")
    assert set(rep["search"]) == {"nbow", "rnn"}
    for ev in rep["search"].values():
        main_score = ev.get("csn_protocol") or ev["test_pool"]
        assert 0 < main_score["mrr"] <= 1 and "MRR|" in main_score["signature"]
        # The 250 real CSN rows live in the shared/ folder beside the repo; without it the report has no such row.
        assert (ev["csn_sample_pool"]["n"] == 250) if CSN_SAMPLE.is_dir() else ("csn_sample_pool" not in ev)
        # search.bm25_fusion (default on): BM25 alone and the fusion, its weight chosen on valid, on the same queries
        assert ev["fusion"]["n"] == ev["bm25"]["n"] == main_score["n"] and ev["fusion"]["weight"] == ev["fusion_weight"]["weight"]
        assert 0 < ev["fusion"]["mrr"] <= 1 and "(valid:" in ev["fusion"]["signature"]
    assert rep["search_bm25"]["mrr"] == rep["search"]["nbow"]["bm25"]["mrr"]
    assert _is_number(rep["char_rnn"]["final"]["valid_loss"])
    assert set(rep["generation"]) == {"char-rnn", "gpt2-scratch"}
    for summary in rep["generation"].values():
        for metric in ("seed-bleu", "bleu", "codexglue-bleu", "exact-match", "chrf"):
            assert _is_number(summary["bleu"][metric]["score"]) and "model:" in summary["bleu"][metric]["signature"]
        assert _is_number(summary["humaneval"]["pass@1"]) and summary["humaneval"]["tasks"] == 2
        assert _is_number(summary["syntax"]["syntax_valid_rate"])
        assert summary["decoding"].endswith("|require_body") == (summary["model"] != "char-rnn")
        assert summary["listing"] and summary["listing"][0]["prompt"].lstrip().startswith(("def", "async def", "@"))
    assert rep["bleu_during_training"]["gpt2-scratch"]
    beyond = rep["beyond"]["gpt2-scratch"]
    assert beyond["bleu"]["own_repo_hits"] == 0
    for side in ("plain", "rag"):
        assert _is_number(beyond["bleu"][side]["bleu"]["score"]) and "data:" in beyond["bleu"][side]["bleu"]["signature"]
    assert "rag:k2" in beyond["bleu"]["rag"]["bleu"]["signature"]
    assert "+bm25|hybrid:0.3|" in beyond["bleu"]["rag"]["bleu"]["signature"] and beyond["index"]["hybrid"] == 0.3
    paired = beyond["bleu"]["rag_vs_plain"]
    assert 0 < paired["p_value"] <= 1 and paired["delta"] == pytest.approx(beyond["bleu"]["rag"]["bleu"]["score"] - beyond["bleu"]["plain"]["bleu"]["score"])
    assert paired["signature"].startswith("bleu-paired-bootstrap|") and "hybrid:0.3" in paired["signature"]
    for side in ("plain", "rag", "checked", "rag+checked"):
        assert _is_number(beyond["humaneval"][side]["pass@1"]) and beyond["humaneval"][side]["tasks"] == 2
    assert "checked:n2" in beyond["humaneval"]["checked"]["signature"]
    assert "rag:k2" in beyond["humaneval"]["rag+checked"]["signature"] and "checked:n2" in beyond["humaneval"]["rag+checked"]["signature"]
    # augment.rerank_k: the same sampled test candidates ranked by log-probability and by retrieved neighbours
    rr = beyond["rerank"]
    for key in ("checked", "neighbours"):
        assert _is_number(rr[key]["bleu"]["score"]) and "checked:n2" in rr[key]["bleu"]["signature"]
    assert "neighbours:k2|sentence-bleu|hybrid:0.3" in rr["neighbours"]["bleu"]["signature"] and "neighbours" not in rr["checked"]["bleu"]["signature"]
    assert rr["neighbours_vs_plain"]["system"] == pytest.approx(rr["neighbours"]["bleu"]["score"])
    assert rr["neighbours_vs_checked"]["baseline"] == pytest.approx(rr["checked"]["bleu"]["score"]) and 0 <= rr["changed_choice"] <= 4
    # augment.guide_alpha: the test rows decoded with retrieval-guided decoding, beside plain greedy
    gd = beyond["guide"]
    assert _is_number(gd["bleu"]["score"]) and "guide:k3|alpha:0.2|n:1-4|hybrid:0.3" in gd["bleu"]["signature"]
    assert gd["guide_vs_plain"]["system"] == pytest.approx(gd["bleu"]["score"])
    assert gd["guide_vs_plain"]["baseline"] == pytest.approx(beyond["bleu"]["plain"]["bleu"]["score"])
    guided = [json.loads(line) for line in (out / "augment" / "gpt2-scratch" / "test_samples_guided.jsonl").read_text().splitlines()]
    assert len(guided) == 4 and all(g["model"].endswith("+guide3") for g in guided)
    cands = [json.loads(line) for line in (out / "augment" / "gpt2-scratch" / "test_candidates.jsonl").read_text().splitlines()]
    assert len(cands) == 4 and all(1 <= len(c["candidates"]) <= 2 and c["candidates"][0]["source"] == "greedy" for c in cands)
    # the progress file of a finished augment stage is gone: only summary.json, the complete one, remains
    assert not (out / "augment" / "gpt2-scratch" / "summary.partial.json").exists() and "partial" not in beyond
    md = (out / "report.md").read_text()
    for heading in ("## Data", "## Code search", "## Char-RNN baseline", "### Sweep", "## Generation", "## BLEU during training", "## Sample generations",
                    "## Beyond the report"):
        assert heading in md
    assert "ranked by retrieved neighbours" in md and "Retrieval as a ranker" in md
    assert "| + retrieval-guided decoding (greedy) |" in md and "Retrieval-guided decoding (nothing added to the prompt" in md
    assert "NBoW encoder fused with BM25, weight 0.3" in md and "paired bootstrap over the test rows: p = " in md
    # The train index records the fusion weight that served search defaults to: the same valid choice as the search
    # stage's eval (same model, same train-split IDF), so the same weight, pairs and grid.
    fw, ev_fw = json.loads((out / "index" / "index.json").read_text())["fusion_weight"], rep["search"]["nbow"]["fusion_weight"]
    assert (fw["weight"], fw["n"]) == (ev_fw["weight"], ev_fw["n"]) and fw["grid"] == pytest.approx(ev_fw["grid"])
    assert "| BM25 alone (no training) |" in md and "fused with BM25 (weight from valid)" in md
    fw = rep["search"]["nbow"]["fusion_weight"]  # the text names what the weight was chosen on, as recorded
    assert f"ranks the valid split's first {fw['n']} pairs (one pool) best" in md and fw["protocol"] == "pool"
    assert "![fusion weight on valid](figures/search_fusion_valid.png)" in md
    assert (out / "figures" / "search_fusion_valid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # lms.0.rag: the generator was fine-tuned with context from the same index the augment stage retrieves from
    assert beyond["trained_with_context"] is True and "(fine-tuned with retrieved context)" in md
    lm_cfg = json.loads((out / "lm" / "gpt2-scratch" / "fnbody.json").read_text())["config"]["data"]
    assert lm_cfg["rag_index"] == str(out / "index") and lm_cfg["rag_k"] == 2 and lm_cfg["rag_hybrid"] == 0.3
    assert _is_number(beyond["bleu"]["plain"]["bleu"]["bp"]) and "brevity penalty" in md
    for fig in ("token_lengths.png", "search_nbow_curves.png", "char_rnn_loss.png", "lm_gpt2-scratch_curves.png"):
        assert (out / "figures" / fig).stat().st_size > 1000
    assert (out / "fnbody.json").exists() and (out / "logs" / "corpus.log").exists()


def test_second_run_is_cached(tiny_run, capsys):
    out, argv = tiny_run
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("up to date (cached), skipping") == 10  # every stage but the report


def test_augment_can_score_humaneval_first_with_checked_before_retrieval(tiny_run, tmp_path, monkeypatch):
    """The order a time-limited GPU run wants: every part is still scored, and each lands in the partial summary as it ends."""
    import fnbody.generate.run as gen_run
    from fnbody.pipeline.tasks import evaluate_augmented

    out, _ = tiny_run
    order, partial_keys = [], []
    real = gen_run.generate_samples

    def spy(gen, rows, cfg, path, **kw):
        part = tmp_path / "aug" / "summary.partial.json"
        partial_keys.append(sorted(json.loads(part.read_text()).get("humaneval", {})) if part.exists() else [])
        order.append(Path(path).name)
        return real(gen, rows, cfg, path, **kw)

    monkeypatch.setattr(gen_run, "generate_samples", spy)
    kw = dict(run=str(out / "lm" / "gpt2-scratch"), corpus=str(out / "corpus"), index=str(out / "index"), plain=str(out / "eval" / "gpt2-scratch"),
              name="gpt2-scratch", checked_n=2, bleu_samples=4, humaneval_problems=2, max_new_tokens=16, batch_size=4, device="cpu")
    summary = evaluate_augmented(out=str(tmp_path / "aug"), humaneval_first=True, **kw)
    assert order == ["humaneval_samples_checked.jsonl", "humaneval_samples_rag.jsonl", "test_samples_rag.jsonl"]
    assert partial_keys[1] == ["checked", "plain", "problems"] and partial_keys[2] == ["checked", "plain", "problems", "rag"]  # kept as each ends
    assert set(summary["humaneval"]) == {"problems", "plain", "checked", "rag"} and "rag_vs_plain" in summary["bleu"]
    order.clear()
    evaluate_augmented(out=str(tmp_path / "default"), **kw)
    assert order == ["test_samples_rag.jsonl", "humaneval_samples_rag.jsonl", "humaneval_samples_checked.jsonl"]


def test_rerank_samples_once_and_resamples_only_for_other_settings(tiny_run, tmp_path, monkeypatch):
    from fnbody.augment.checked import ExecutionCheckedGenerator
    from fnbody.pipeline.tasks import evaluate_augmented

    out, _ = tiny_run
    calls = []
    real = ExecutionCheckedGenerator.sample

    def spy(self, prompts, cfg):
        calls.append(self.n_candidates)
        return real(self, prompts, cfg)

    monkeypatch.setattr(ExecutionCheckedGenerator, "sample", spy)
    kw = dict(run=str(out / "lm" / "gpt2-scratch"), corpus=str(out / "corpus"), index=str(out / "index"), plain=str(out / "eval" / "gpt2-scratch"),
              out=str(tmp_path / "aug"), name="gpt2-scratch", bleu_samples=4, humaneval_problems=1, max_new_tokens=12, batch_size=4,
              device="cpu", rerank_k=1)
    first = evaluate_augmented(checked_n=2, **kw)["rerank"]
    n_first = len(calls)
    again = evaluate_augmented(checked_n=2, **kw)["rerank"]
    assert n_first == 2 and len(calls) == n_first  # nothing sampled again: the test candidates (and HumanEval's samples) were reused
    assert again["neighbours"]["bleu"]["score"] == first["neighbours"]["bleu"]["score"]
    drawn = lambda: {json.loads(line)["decoding"].split("|")[0] for line in (tmp_path / "aug" / "test_candidates.jsonl").read_text().splitlines()}
    assert drawn() == {"n2"}
    evaluate_augmented(checked_n=3, **kw)
    assert 3 in calls and drawn() == {"n3"}  # other settings: the test rows were sampled anew, not taken from the n2 file


def test_failing_stage_names_itself_and_its_log(tiny_run):
    out, argv = tiny_run
    with pytest.raises(FnbodyError, match=r"stage 'lm-gpt2-scratch' failed .* see its log: .*lm-gpt2-scratch\.log"):
        from fnbody.commands.pipeline import cmd_run
        import argparse

        cmd_run(argparse.Namespace(preset="tiny", out=str(out), set=argv[argv.index("--set"):][1::2] + ["lms.0.init=nonsense:spec"],
                                   only="", quiet=True))


def test_presets_load_and_bad_overrides_are_named():
    for name in PRESETS:
        cfg = load_preset(name)
        assert cfg.name == name and cfg.lms
    with pytest.raises(FnbodyError, match="unknown preset"):
        load_preset("nope")
    from fnbody.config import apply_overrides

    with pytest.raises(FnbodyError, match="expected an integer"):
        apply_overrides(load_preset("tiny"), ["evaluation.bleu_samples=many"])
    with pytest.raises(FnbodyError, match="rag_hybrid"):
        apply_overrides(load_preset("tiny"), ["augment.rag_hybrid=-1"])
    with pytest.raises(FnbodyError, match=r"guide_alpha must be in \[0, 1\)"):
        apply_overrides(load_preset("tiny"), ["augment.guide_alpha=1.5"])


def test_repo_configs_link_reaches_every_preset():
    # The README's ./configs: a path to each preset loads the same config as its name.
    configs = Path(__file__).resolve().parents[1] / "configs"
    for name in PRESETS:
        assert load_preset(str(configs / f"{name}.toml")) == load_preset(name)


def test_generation_stages_start_clean_when_their_settings_change(tmp_path, capsys):
    """An interrupted evaluation's .partial samples are resumed only under the same settings, never under new ones."""
    from fnbody.pipeline.run import build_stages
    from fnbody.pipeline.stages import StageRunner

    out = tmp_path / "run"
    stages = {st.name: st for st in build_stages(load_preset("tiny"), out)}
    assert stages["eval-gpt2-scratch"].workdir == out / "eval" / "gpt2-scratch"
    assert stages["augment-gpt2-scratch"].workdir == out / "augment" / "gpt2-scratch"
    ev = stages["eval-gpt2-scratch"]
    runner = StageRunner(out)
    runner.keys.update({d: "x" for d in ev.deps})
    stale = ev.workdir / "test_samples.jsonl.partial"  # left by an attempt under other settings
    stale.parent.mkdir(parents=True)
    stale.write_text('{"task_id": "t", "completion": "old"}\n')
    (out / "stages").mkdir(parents=True, exist_ok=True)
    (out / "stages" / f"{ev.name}.started.json").write_text('{"key": "another key"}')
    seen = []
    ev.commands = lambda resume: seen.append((resume, stale.exists())) or []
    runner.run(ev)
    assert seen == [(False, False)]  # started clean: the stale partial was removed before the stage ran
    assert f"removing {ev.workdir}, made with other settings" in capsys.readouterr().err  # and it said so



def test_search_epoch_cap_never_stretches_an_encoders_recipe_and_settings_win(tmp_path):
    from fnbody.config import apply_overrides
    from fnbody.pipeline.run import build_stages
    from fnbody.search.train import config_with_overrides

    def train_cfg(cfg, enc):
        st = {s.name: s for s in build_stages(cfg, tmp_path)}[f"search-{enc}"]
        argv = [str(a) for a in st.commands(False)[0]]
        assert "--max-epochs" not in argv and "--max-steps" not in argv
        return config_with_overrides(enc, [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]).train

    paper = apply_overrides(load_preset("paper"), ['search.encoders=["nbow","minilm"]'])
    assert paper.search.max_epochs == 100
    assert train_cfg(paper, "nbow").max_epochs == 100  # from scratch (CSN default 300): capped at 100
    assert train_cfg(paper, "minilm").max_epochs == 1  # MiniLM's one-epoch fine-tune is not stretched to 100
    tuned = apply_overrides(paper, ['search.settings=["minilm:train.max_epochs=2","train.max_steps=7"]'])
    assert train_cfg(tuned, "minilm").max_epochs == 2 and train_cfg(tuned, "minilm").max_steps == 7  # settings win over the caps
    demo = load_preset("demo")
    t = train_cfg(demo, demo.search.encoders[0])
    assert (t.max_epochs, t.max_steps) == (demo.search.max_epochs, demo.search.max_steps)


def test_extra_train_sources_extend_the_corpus_stage_and_the_report_says_so(tmp_path):
    import subprocess

    from fnbody.config import apply_overrides
    from fnbody.corpus.io import read_split
    from fnbody.pipeline.report import write_report
    from fnbody.pipeline.run import build_stages

    from corpus_helpers import module

    srcs = []
    for i in range(12):
        (tmp_path / "src" / f"repo_{i}").mkdir(parents=True)
        (tmp_path / "src" / f"repo_{i}" / "m.py").write_text(module(f"r{i}", 3))
        srcs.append(str(tmp_path / "src" / f"repo_{i}"))
    (tmp_path / "more" / "extra").mkdir(parents=True)
    (tmp_path / "more" / "extra" / "x.py").write_text(module("extra", 3))
    out = tmp_path / "run"
    cfg = apply_overrides(load_preset("tiny"), [f"corpus.sources={json.dumps(srcs)}", "corpus.max_files=0", "corpus.jobs=1",
                                                f"corpus.extra_train_sources={json.dumps([str(tmp_path / 'more' / 'extra')])}"])
    stage = build_stages(cfg, out)[0]
    cmds = stage.commands(False)
    assert stage.name == "corpus" and len(cmds) == 3
    assert "--extend" in cmds[1] and str(out / "corpus-base") in cmds[1] and str(out / "corpus") in cmds[1]
    for cmd in cmds:
        subprocess.run(cmd, check=True, capture_output=True)
    base_test, test = list(read_split(out / "corpus-base", "test")), list(read_split(out / "corpus", "test"))
    assert test == base_test and len(test) > 0
    train = list(read_split(out / "corpus", "train"))
    assert sum(r["repo"] == "extra" for r in train) == 3 == len(train) - len(list(read_split(out / "corpus-base", "train")))
    stats = json.loads((out / "corpus_stats.json").read_text())
    assert stats["extends"]["added_train"] == 3 and stats["extends"]["added_repos"] == 1
    write_report(out)
    assert "+3 functions from 1 repos over the base corpus" in (out / "report.md").read_text()
    # Without extra sources the stage builds the corpus directly, as before.
    assert "--extend" not in build_stages(load_preset("tiny"), out)[0].commands(False)[0]


def test_retrieval_index_stage_feeds_context_training_and_augment(tmp_path):
    from fnbody.config import apply_overrides
    from fnbody.pipeline.run import build_stages

    out = tmp_path / "run"
    cfg = apply_overrides(load_preset("tiny"), ["lms.0.rag=true", "augment.rag_k=3", "augment.rag_budget_tokens=96"])
    stages = build_stages(cfg, out)
    names = [st.name for st in stages]
    assert names.index("rag-index") < names.index("lm-gpt2-scratch") < names.index("augment-gpt2-scratch")
    by_name = {st.name: st for st in stages}
    assert by_name["rag-index"].deps == ["corpus", "search-nbow"]
    lm = by_name["lm-gpt2-scratch"]
    assert "rag-index" in lm.deps and "rag-index" in by_name["augment-gpt2-scratch"].deps
    argv = [str(a) for a in lm.commands(False)[0]]
    assert {f"data.rag_index={out / 'index'}", "data.rag_k=3", "data.rag_budget_tokens=96"} <= set(argv)
    # Without rag the LM stage neither waits for the index nor gets context settings.
    plain = {st.name: st for st in build_stages(load_preset("tiny"), out)}["lm-gpt2-scratch"]
    assert plain.deps == ["corpus"] and not any("rag_index" in str(a) for a in plain.commands(False)[0])


def test_context_training_without_its_retriever_is_refused(tmp_path):
    from fnbody.config import apply_overrides
    from fnbody.pipeline.run import build_stages

    cfg = apply_overrides(load_preset("tiny"), ["lms.0.rag=true", "augment.retriever=minilm"])
    with pytest.raises(FnbodyError, match=r"augment.retriever 'minilm' is not among search.encoders"):
        build_stages(cfg, tmp_path)
    # The augment stage alone just does not run when its retriever was not trained (as before, for nbow).
    names = [st.name for st in build_stages(apply_overrides(load_preset("tiny"), ["augment.retriever=minilm"]), tmp_path)]
    assert "rag-index" not in names and not any(n.startswith("augment-") for n in names)


def test_report_splits_the_bleu_change_into_brevity_and_precision(tmp_path):
    from fnbody.pipeline.report import _Plan, _beyond_section

    def side(bleu, bp):
        return {"seed-bleu": {"score": 0.1, "signature": "s"}, "bleu": {"score": bleu, "bp": bp, "signature": "b"},
                "codexglue-bleu": {"score": 5.0, "signature": "c"}}

    he = {"pass@1": 0.0, "signature": "p"}
    summary = {"model": "m", "index": {"encoder": "minilm", "count": 10, "hybrid": 0.0}, "trained_with_context": True,
               "bleu": {"plain": side(2.0, 0.2), "rag": side(2.2, 0.25), "own_repo_hits": 0, "mean_context_functions": 1.0},
               "humaneval": {"problems": "HumanEval first 2 of 164", "plain": he, "rag": he, "checked": he}}
    (tmp_path / "augment" / "m").mkdir(parents=True)
    (tmp_path / "augment" / "m" / "summary.json").write_text(json.dumps(summary))
    md, rep = [], {}
    _beyond_section(tmp_path, rep, md, _Plan(tmp_path))
    text = "\n".join(md)
    # +10% BLEU, all of it from length: BP x1.25, precisions x(2.2/0.25)/(2.0/0.2) = x0.88
    assert "+10% relative (brevity penalty x1.25, n-gram precisions x0.88)" in text
    assert "**m** (fine-tuned with retrieved context)" in text and "MiniLM encoder" in text
    assert rep["beyond"]["m"]["bleu_gain"] == pytest.approx(0.1)


@pytest.mark.parametrize("override, match", [
    ("search.encoders=[\"bogus\"]", "unknown encoder"),
    ("search.encoders=[\"nbow\",\"nbow\"]", "twice"),
    ("search.max_steps=-5", "max_steps must be >= 0"),
    ("corpus.max_files=-1", "max_files must be >= 0"),
    ("char_rnn.hidden=0", "hidden must be >= 1"),
    ("char_rnn.cell=lsmt", "cell must be one of"),
    ("char_rnn.sweep_cells=[]", "sweep_cells is empty.*set sweep = false"),
    ("char_rnn.sweep_cells=[\"lstm\",\"tcn\"]", "sweep_cells \\['tcn'\\] unknown"),
    ("char_rnn.sweep_lrs=[-0.1]", "sweep_lrs must all be"),
    ("char_rnn.sweep_batch_sizes=[0]", "sweep_batch_sizes must all be"),
    ("lms.0.init=scratch:huge", "scratch sizes are"),
    ("lms.0.name=../elsewhere", "names a folder"),
    ("lms.0.max_steps=-1", "max_steps must be >= 0"),
    ("evaluation.max_new_tokens=0", "max_new_tokens must be >= 1"),
    ("augment.rag_k=0", "rag_k must be >= 1"),
])
def test_bad_config_values_are_refused_by_name(override, match):
    from fnbody.config import apply_overrides

    with pytest.raises(FnbodyError, match=match):
        apply_overrides(load_preset("tiny"), [override])
    assert apply_overrides(load_preset("tiny"), ["char_rnn.sweep=false", "char_rnn.sweep_cells=[]"]).char_rnn.sweep_cells == []


def test_duplicate_lm_names_and_bad_preset_paths_are_refused(tmp_path):
    toml = tmp_path / "dup.toml"
    toml.write_text('[[lms]]\nname = "a"\n[[lms]]\nname = "a"\n')
    with pytest.raises(FnbodyError, match=r"lms names \['a'\] are used twice"):
        load_preset(str(toml))
    with pytest.raises(FnbodyError, match="unknown preset"):
        load_preset(str(tmp_path))  # a folder is not a TOML file


def test_search_encoder_names_match_the_search_package():
    from fnbody.pipeline.config import SEARCH_ENCODERS
    from fnbody.search.model import ENCODERS
    from fnbody.search.pretrained import PRETRAINED_ENCODERS

    assert set(SEARCH_ENCODERS) == set(ENCODERS + PRETRAINED_ENCODERS)


def test_out_folder_and_only_are_checked_before_anything_is_written(tmp_path):
    from fnbody.pipeline.run import run_pipeline

    cfg = load_preset("tiny")
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(FnbodyError, match="is a file"):
        run_pipeline(cfg, afile)
    other = tmp_path / "other"
    other.mkdir()
    (other / "fnbody.json").write_text(json.dumps({"kind": "char-rnn"}))
    with pytest.raises(FnbodyError, match="holds a 'char-rnn' run"):
        run_pipeline(cfg, other)
    assert json.loads((other / "fnbody.json").read_text()) == {"kind": "char-rnn"}  # not overwritten
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    with pytest.raises(FnbodyError, match="no pipeline run"):
        run_pipeline(cfg, junk)
    with pytest.raises(FnbodyError, match=r"--only \['serch-nbow'\]: no such stage"):
        run_pipeline(cfg, tmp_path / "new", only=["serch-nbow"])
    assert not (tmp_path / "new").exists() and sorted(p.name for p in junk.iterdir()) == ["notes.txt"]


def _fake_search_eval(run: Path) -> None:
    run.mkdir(parents=True)
    (run / "eval.json").write_text(json.dumps({"test_pool": {"mrr": 0.5, "n": 3, "signature": "MRR|fake"}}))


def test_report_shows_only_this_configs_finished_stages_and_says_what_is_missing(tmp_path):
    from fnbody.pipeline.report import write_report

    _fake_search_eval(tmp_path / "search" / "rnn")  # left by a run with another config
    _fake_search_eval(tmp_path / "search" / "nbow")
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "plan.json").write_text(json.dumps({"stages": {"search-nbow": "k-new"}}))
    (tmp_path / "stages" / "search-nbow.json").write_text(json.dumps({"key": "k-old", "seconds": 1}))  # another config's
    write_report(tmp_path)
    rep, md = json.loads((tmp_path / "report.json").read_text()), (tmp_path / "report.md").read_text()
    assert rep["complete"] is False and rep["missing_stages"] == ["search-nbow"]
    assert "INCOMPLETE" in md and "search" not in rep and "Search stage did not run" in md
    (tmp_path / "stages" / "search-nbow.json").write_text(json.dumps({"key": "k-new", "seconds": 1}))
    write_report(tmp_path)
    rep, md = json.loads((tmp_path / "report.json").read_text()), (tmp_path / "report.md").read_text()
    assert rep["complete"] is True and set(rep["search"]) == {"nbow"} and "INCOMPLETE" not in md


def test_a_finished_sweep_is_shown_when_the_char_rnn_stage_failed(tmp_path):
    from fnbody.pipeline.report import write_report

    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "sweep.md").write_text("# Sweep\n\n| cell | seed-BLEU |\n|---|---:|\n| lstm | 0.1234 |\n")
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "plan.json").write_text(json.dumps({"stages": {"char-rnn": "k1", "sweep": "k2"}}))
    (tmp_path / "stages" / "sweep.json").write_text(json.dumps({"key": "k2", "seconds": 1}))  # char-rnn never finished
    write_report(tmp_path)
    rep, md = json.loads((tmp_path / "report.json").read_text()), (tmp_path / "report.md").read_text()
    assert rep["missing_stages"] == ["char-rnn"] and "Char-RNN stage did not run" in md
    assert "| lstm | 0.1234 |" in md and rep["char_rnn"] == {"sweep_csv": str(tmp_path / "sweep" / "sweep.csv")}


def test_a_failed_stage_still_rewrites_the_report_as_incomplete(tmp_path, monkeypatch):
    import sys

    from fnbody.pipeline import run as run_mod
    from fnbody.pipeline.stages import Stage, StageFailed
    from fnbody.pipeline.tasks import task_cmd

    out = tmp_path / "run"
    (out / "stages").mkdir(parents=True)
    (out / "fnbody.json").write_text(json.dumps({"kind": "pipeline", "config": {}}))
    (out / "report.md").write_text("# an older, complete report\n")

    def stages(cfg, out):
        boom = Stage("boom", {}, lambda resume: [[sys.executable, "-c", "raise SystemExit(3)"]], outputs=[out / "never"])
        report = Stage("report", {}, lambda resume: [task_cmd("write_report", out_dir=str(out))],
                       outputs=[out / "report.md"], deps=["boom"])
        return [boom, report]

    monkeypatch.setattr(run_mod, "build_stages", stages)
    with pytest.raises(StageFailed, match="stage 'boom' failed"):
        run_mod.run_pipeline(load_preset("tiny"), out)
    rep = json.loads((out / "report.json").read_text())
    assert rep["complete"] is False and rep["missing_stages"] == ["boom"] and "INCOMPLETE" in (out / "report.md").read_text()
