"""Code search: MRR known values, encoder shapes, losses, training, eval, index round trip and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fnbody.cli import main
from fnbody.errors import FnbodyError
from fnbody.search.embed import Embedder
from fnbody.search.data import query_tokens, split_identifier, training_pair
from fnbody.search.losses import cosine_loss, max_margin_loss, retrieval_loss, softmax_loss
from fnbody.search.metrics import batched_mrr, mean_reciprocal_rank, reciprocal_ranks
from fnbody.search.model import ENCODERS, SearchModelConfig, TwoTowerModel


@pytest.mark.parametrize("scores, expected", [
    ([[1.0, 0.0], [0.0, 1.0]], 1.0),                                   # both first
    ([[0.0, 1.0], [1.0, 0.0]], 0.5),                                   # both second
    ([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [3.0, 2.0, 1.0]], (1 + 1 / 2 + 1 / 3) / 3),
    ([[1.0, 1.0], [0.0, 1.0]], (1 / 2 + 1) / 2),                       # a tie counts against the true code (CSN)
])
def test_mrr_known_values(scores, expected):
    assert mean_reciprocal_rank(np.array(scores)) == pytest.approx(expected)


def test_mrr_rejects_non_square():
    with pytest.raises(ValueError):
        reciprocal_ranks(np.zeros((2, 3)))


def test_batched_mrr_drops_partial_batch_and_needs_a_full_one():
    q = np.eye(5, dtype=np.float32)
    c = np.eye(5, dtype=np.float32)
    c[4] = -1.0  # the 5th pair is wrong, but it sits in the dropped partial batch
    assert batched_mrr(q, c, batch_size=2) == (1.0, 4)
    mrr, n = batched_mrr(q, c, batch_size=10)
    assert n == 0 and np.isnan(mrr)


def test_losses_known_values():
    eye = torch.eye(3) * 10
    assert softmax_loss(eye).item() == pytest.approx(np.log(1 + 2 * np.exp(-10)), rel=1e-3)
    assert softmax_loss(torch.zeros(4, 4)).item() == pytest.approx(np.log(4))
    # cosine: true cos 1, best negative 0 -> margin - 1 + 0 = 0 with margin 1
    assert cosine_loss(torch.eye(3)).item() == pytest.approx(0.0)
    assert cosine_loss(torch.zeros(3, 3)).item() == pytest.approx(1.0)
    assert max_margin_loss(torch.zeros(2, 2)).item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        retrieval_loss(torch.zeros(2, 4), torch.zeros(2, 4), loss="nope")


def test_symmetric_softmax_loss_known_values():
    # Row 0 ranks its code first; column 1 (code 1) prefers query 0: the two directions differ.
    scores = torch.tensor([[2.0, 1.0], [0.0, 0.0]])
    rows = (np.log(np.exp(2) + np.exp(1)) - 2 + np.log(2)) / 2
    cols = (np.log(np.exp(2) + 1) - 2 + np.log(np.exp(1) + 1) - 0) / 2
    assert softmax_loss(scores).item() == pytest.approx(rows, rel=1e-5)
    assert softmax_loss(scores, symmetric=True).item() == pytest.approx((rows + cols) / 2, rel=1e-5)
    assert softmax_loss(torch.zeros(4, 4), symmetric=True).item() == pytest.approx(np.log(4))
    # identical queries are nobody's negative in either direction: with both masked, only the diagonal counts
    mask = torch.tensor([[False, True], [True, False]])
    assert softmax_loss(scores, mask, symmetric=True).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="softmax"):
        retrieval_loss(torch.zeros(2, 4), torch.zeros(2, 4), loss="cosine", symmetric=True)
    with pytest.raises(ValueError, match="symmetric_loss"):
        SearchModelConfig(loss="cosine", symmetric_loss=True)
    model = TwoTowerModel(SearchModelConfig(encoder="nbow", emb_dim=8, vocab_size=20, loss="softmax", symmetric_loss=True), 20, 20)
    q, c = torch.randn(3, 8), torch.randn(3, 8)
    assert model.loss(q, c).item() == pytest.approx(retrieval_loss(q, c, "softmax", symmetric=True).item())
    assert model.loss(q, c).item() != pytest.approx(retrieval_loss(q, c, "softmax").item())


@pytest.mark.parametrize("encoder", ENCODERS)
def test_encoder_forward_shapes(encoder):
    cfg = SearchModelConfig(encoder=encoder, emb_dim=16, vocab_size=50, code_max_len=12, query_max_len=6,
                            attn_heads=2, attn_ffn=32, attn_layers=1, cnn_kernel=3, cnn_layers=2, rnn_layers=1, loss="softmax")
    model = TwoTowerModel(cfg, 40, 50)
    q_ids = torch.randint(2, 40, (4, 6))
    c_ids = torch.randint(2, 50, (4, 12))
    c_ids[0, 5:] = 0  # padding
    q, c, loss = model(q_ids, c_ids)
    assert q.shape == (4, 16) and c.shape == (4, 16)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert model.query_encoder is not model.code_encoder
    assert model.query_encoder.embed.weight.shape[0] == 40 and model.code_encoder.embed.weight.shape[0] == 50


def test_padding_does_not_change_the_vector():
    cfg = SearchModelConfig(encoder="cnn", emb_dim=8, vocab_size=20, cnn_kernel=3, cnn_layers=2, dropout=0.0)
    enc = TwoTowerModel(cfg, 20, 20).eval().code_encoder
    ids = torch.tensor([[3, 4, 5]])
    padded = torch.tensor([[3, 4, 5, 0, 0, 0]])
    assert torch.allclose(enc(ids), enc(padded), atol=1e-5)


def test_query_tokens_bad_input_and_unicode():
    with pytest.raises(FnbodyError, match="empty query"):
        query_tokens("   ")
    with pytest.raises(FnbodyError, match="stop words"):
        query_tokens("the of and ?")
    assert query_tokens("lire un fichier café 读取")


def test_function_name_replaces_query():
    rec = {"func_name": "Reader.read_csv_file_fast", "docstring_tokens": ["Read", "it"], "code_tokens": ["def", "read_csv_file_fast", "(", ")"]}
    q, c = training_pair(rec, use_func_name=True)
    assert q == ["read", "csv", "file", "fast"] and "read_csv_file_fast" not in c
    assert training_pair(rec, use_func_name=False) == (["Read", "it"], rec["code_tokens"])
    assert split_identifier("readCSVFile_v2") == ["read", "csv", "file", "v2"]


def test_subword_vocab_round_trip(tmp_path):
    from fnbody.tokens.subword import PAD_ID, SubwordVocab, train_subword_vocab

    vocab = train_subword_vocab([["def", "read_csv", "(", "path", ")"]] * 20, vocab_size=60)
    assert vocab.size <= 60
    ids = vocab.encode(["read_csv", "path"], max_len=50)
    assert ids and PAD_ID not in ids
    vocab.save(tmp_path / "v.json")
    assert SubwordVocab.load(tmp_path / "v.json").encode(["read_csv", "path"], 50) == ids
    assert len(vocab.encode(["read_csv"] * 30, max_len=7)) == 7


TINY = ["--set", "model.emb_dim=16", "--set", "model.vocab_size=200", "--set", "train.log_every=1", "--set", "train.batch_size=16"]


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory):
    from conftest import make_tiny_corpus

    root = tmp_path_factory.mktemp("search")
    corpus = make_tiny_corpus(root / "corpus")
    run = root / "run"
    assert main(["train", "search", "--corpus", str(corpus), "--encoder", "nbow", "--out", str(run), "--max-epochs", "6", *TINY]) == 0
    return run


@pytest.fixture
def trained_run(shared_run, tmp_path):
    """A private copy of one tiny trained NBoW run (tests may change it)."""
    import shutil

    return shutil.copytree(shared_run, tmp_path / "run")


def test_train_loss_decreases_and_writes_run(trained_run):
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    train = [r["train_loss"] for r in rows if "train_loss" in r]
    assert train[-1] < train[0]
    assert any("valid_mrr" in r for r in rows)
    info = json.loads((trained_run / "fnbody.json").read_text())
    assert info["kind"] == "search" and info["config"]["model"]["emb_dim"] == 16
    assert (trained_run / "curves.png").stat().st_size > 1000
    assert (trained_run / "checkpoints" / "best" / "model.safetensors").exists()


def test_train_resume_and_refusals(trained_run, tiny_corpus, capsys):
    args = ["train", "search", "--corpus", str(tiny_corpus), "--encoder", "nbow", "--out", str(trained_run), *TINY]
    assert main(args + ["--max-epochs", "7"]) == 2
    assert "--resume" in capsys.readouterr().err
    # Patience off: the 12-function valid set saturates, and early stopping would (rightly) end the run first.
    assert main(args + ["--max-epochs", "8", "--resume", "--set", "train.patience=0"]) == 0
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["epoch"] for r in rows) == 8


def test_a_refused_resume_writes_nothing(trained_run, tiny_corpus, tmp_path, capsys):
    import shutil

    args = ["train", "search", "--encoder", "nbow", "--out", str(trained_run), "--resume", "--max-epochs", "9", *TINY]
    before = {p.name: p.read_bytes() for p in trained_run.iterdir() if p.is_file()}
    # Other data: fewer functions (--max-samples), or another corpus of the same size.
    assert main(args + ["--corpus", str(tiny_corpus), "--max-samples", "20"]) == 2
    assert "cannot resume on other data" in capsys.readouterr().err
    other = shutil.copytree(tiny_corpus, tmp_path / "other")
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "content_hash": "sha256:another"}))
    assert main(args + ["--corpus", str(other)]) == 2
    assert "cannot resume on other data" in capsys.readouterr().err
    # A missing vocabulary is never retrained on resume (the checkpoint's ids are defined by it).
    (trained_run / "code_vocab.json").unlink()
    assert main(args + ["--corpus", str(tiny_corpus)]) == 2
    assert "code_vocab.json missing" in capsys.readouterr().err
    after = {p.name: p.read_bytes() for p in trained_run.iterdir() if p.is_file()}
    assert after == {k: v for k, v in before.items() if k != "code_vocab.json"}  # fnbody.json and query vocab untouched


def test_resume_of_a_run_that_died_before_its_first_checkpoint_starts_it_again(tiny_corpus, tmp_path, capsys):
    from fnbody.config import write_run_info

    run = tmp_path / "died"
    write_run_info(run, "search", {"model": {}})  # what a run killed while building its vocabularies leaves
    args = ["train", "search", "--corpus", str(tiny_corpus), "--encoder", "nbow", "--out", str(run), "--max-steps", "2", *TINY]
    assert main(args + ["--resume"]) == 0  # as the pipeline reruns a stage it started
    assert "nothing to resume" in capsys.readouterr().err and (run / "checkpoints" / "last").exists()


def test_train_refuses_an_out_folder_holding_other_files(tiny_corpus, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.jsonl").write_text("important\n")
    args = ["train", "search", "--corpus", str(tiny_corpus), "--encoder", "nbow", "--max-steps", "1", *TINY]
    assert main(args + ["--out", str(mine)]) == 2
    assert "a folder with other files in it" in capsys.readouterr().err
    assert (mine / "metrics.jsonl").read_text() == "important\n"
    assert main(args + ["--out", str(mine / "metrics.jsonl")]) == 2
    assert "a file, not a folder" in capsys.readouterr().err
    # Config contradictions and out-of-range shares are named.
    assert main(args + ["--out", str(tmp_path / "r"), "--set", "model.encoder=rnn"]) == 2
    assert "contradicts --encoder nbow" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "r"), "--set", "func_name_fraction=2"]) == 2
    assert "func_name_fraction" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "r"), "--set", "train.lr=nan"]) == 2
    assert "lr must be a finite number" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_init_from_starts_where_the_run_ended(trained_run, tiny_corpus, tmp_path, capsys):
    """--init-from takes the run's vocabularies and weights: at a vanishing learning rate the vectors stay the run's."""
    from fnbody.search.embed import Embedder

    out = tmp_path / "cont"
    args = ["train", "search", "--corpus", str(tiny_corpus), "--out", str(out), "--init-from", str(trained_run), *TINY]
    assert main(args + ["--encoder", "nbow", "--max-steps", "2", "--set", "train.lr=1e-12", "--set", "train.group_by_length=2"]) == 0
    assert (out / "code_vocab.json").read_bytes() == (trained_run / "code_vocab.json").read_bytes()
    assert json.loads((out / "fnbody.json").read_text())["config"]["init_from"] == str(trained_run)
    docs, code = [["read", "a", "file"], ["parse", "json", "text"]], [["def", "f", "(", "x", ")", ":", "return", "x"]]
    start, cont = Embedder.load(trained_run), Embedder.load(out)
    assert np.allclose(start.embed_query_tokens(docs), cont.embed_query_tokens(docs), atol=1e-5)
    assert np.allclose(start.embed_code_tokens(code), cont.embed_code_tokens(code), atol=1e-5)
    assert np.abs(start.embed_query_tokens(docs)).max() > 1e-3  # not two all-zero models
    # Refusals name the problem: another architecture, another encoder, no run there.
    assert main(args[:4] + ["--out", str(tmp_path / "r1"), "--init-from", str(trained_run), *TINY, "--encoder", "nbow",
                            "--set", "model.emb_dim=8"]) == 2
    assert "weights do not match the model config" in capsys.readouterr().err
    assert main(args[:4] + ["--out", str(tmp_path / "r2"), "--init-from", str(trained_run), *TINY, "--encoder", "rnn"]) == 2
    assert "a nbow run; it cannot start a rnn run" in capsys.readouterr().err
    assert main(args[:4] + ["--out", str(tmp_path / "r3"), "--init-from", str(tmp_path / "nope"), *TINY, "--encoder", "nbow"]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.parametrize("encoder", ["rnn", "cnn", "selfatt"])
def test_sequence_encoders_train_on_tiny_corpus(encoder, tiny_corpus, tmp_path):
    extra = ["--set", "model.attn_layers=1", "--set", "model.attn_heads=2", "--set", "model.attn_ffn=32", "--set", "model.rnn_layers=1",
             "--set", "model.cnn_layers=1", "--set", "model.cnn_kernel=3", "--set", "train.lr=0.01",
             "--set", "model.code_max_len=24"]
    assert main(["train", "search", "--corpus", str(tiny_corpus), "--encoder", encoder, "--out", str(tmp_path / encoder),
                 "--max-epochs", "3", "--max-samples", "16", *TINY, *extra]) == 0
    rows = [json.loads(line) for line in (tmp_path / encoder / "metrics.jsonl").read_text().splitlines()]
    train = [r["train_loss"] for r in rows if "train_loss" in r]
    assert train[-1] < train[0]


def test_eval_labels_small_test_split(trained_run, tiny_corpus, csn_sample_dir, capsys):
    assert main(["eval", "search", str(trained_run), "--corpus", str(tiny_corpus), "--csn-sample", str(csn_sample_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["csn_protocol"] is None and "cannot be applied" in out["note"]
    assert out["test_pool"]["n"] == 12 and 0 < out["test_pool"]["mrr"] <= 1
    assert out["test_pool"]["signature"].startswith("MRR|protocol:pool|n:12|")
    assert out["csn_sample_pool"]["n"] == 250


def test_index_round_trip_and_query(trained_run, tiny_corpus, tmp_path, capsys):
    from fnbody.search.index import SearchIndex

    idx = tmp_path / "idx"
    assert main(["search", "index", str(trained_run), "--corpus", str(tiny_corpus), "--out", str(idx)]) == 0
    index = SearchIndex.load(idx, run=trained_run)
    assert len(index) == 72
    hits = index.query("read a text file and return its lines", k=5)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
    assert {"repo", "path", "func_name", "score", "snippet", "code"} <= set(hits[0])
    # The top hit's score is its vector's product with the query vector.
    q = index.embedder.embed_queries(["read a text file and return its lines"])[0]
    row = next(i for i, r in enumerate(index.records) if r["func_name"] == hits[0]["func_name"] and r["repo"] == hits[0]["repo"])
    assert float(index.vectors[row] @ q) == pytest.approx(hits[0]["score"], rel=1e-5)
    assert index.query("ファイルを読む read file", k=1)
    capsys.readouterr()
    assert main(["search", "query", str(idx), "merge two dictionaries", "-k", "2"]) == 0
    assert "merge_dicts" in capsys.readouterr().out
    assert main(["search", "index", str(trained_run), "--corpus", str(tiny_corpus), "--out", str(tmp_path / "twice"),
                 "--splits", "test,test"]) == 2
    assert "named twice" in capsys.readouterr().err and not (tmp_path / "twice").exists()
    with pytest.raises(FnbodyError, match="stop words"):
        index.query("the and of")


def test_mismatched_index_and_missing_files(trained_run, tiny_corpus, tmp_path):
    from fnbody.search.index import SearchIndex, build_index
    from fnbody.corpus.io import read_split

    idx = tmp_path / "idx"
    build_index(trained_run, read_split(tiny_corpus, "test"), idx)
    other = tmp_path / "other"
    assert main(["train", "search", "--corpus", str(tiny_corpus), "--encoder", "nbow", "--out", str(other), "--max-epochs", "1",
                 *TINY, "--set", "train.seed=7"]) == 0
    with pytest.raises(FnbodyError, match="another model"):
        SearchIndex.load(idx, run=other)
    before = (idx / "embeddings.npy").read_bytes()
    with pytest.raises(FnbodyError, match="another model"):
        build_index(other, read_split(tiny_corpus, "test"), idx)
    assert (idx / "embeddings.npy").read_bytes() == before  # refused without touching the old index
    (idx / "index.json").write_text(json.dumps({**json.loads((idx / "index.json").read_text()), "format_version": 99}))
    with pytest.raises(FnbodyError, match="format version"):
        SearchIndex.load(idx)
    with pytest.raises(FnbodyError, match="not a search index"):
        SearchIndex.load(tmp_path)
    (idx / "index.json").write_text(json.dumps({**json.loads((idx / "index.json").read_text()), "format_version": 1}))
    # Files of another build with the same shapes (another model's vectors, rows in another order) are refused.
    build_index(other, read_split(tiny_corpus, "test"), tmp_path / "idx_other")
    good = (idx / "embeddings.npy").read_bytes()
    (idx / "embeddings.npy").write_bytes((tmp_path / "idx_other" / "embeddings.npy").read_bytes())
    with pytest.raises(FnbodyError, match="embeddings.npy is not the file this index was built with"):
        SearchIndex.load(idx)
    (idx / "embeddings.npy").write_bytes(good)
    from fnbody.io import read_jsonl, write_jsonl

    rows = read_jsonl(idx / "records.jsonl.gz")
    write_jsonl(idx / "records.jsonl.gz", rows[::-1])
    with pytest.raises(FnbodyError, match="records.jsonl.gz is not the file"):
        SearchIndex.load(idx)
    write_jsonl(idx / "records.jsonl.gz", rows)
    assert len(SearchIndex.load(idx)) == len(rows)  # the same bytes again: accepted
    # A folder beside the index that merely shares the old temporary names is never touched.
    for sibling in ("idx.tmp", "idx.old"):
        (tmp_path / sibling).mkdir()
        (tmp_path / sibling / "notes.txt").write_text("mine")
    build_index(trained_run, read_split(tiny_corpus, "test"), idx)
    assert all((tmp_path / s / "notes.txt").read_text() == "mine" for s in ("idx.tmp", "idx.old"))
    assert not list(tmp_path.glob(".idx.building-*"))
    # A run folder with its vocabulary missing.
    (other / "code_vocab.json").unlink()
    with pytest.raises(FnbodyError, match="code_vocab.json"):
        Embedder.load(other)


def test_corpus_without_test_split(trained_run, tiny_corpus):
    import shutil

    shutil.rmtree(tiny_corpus / "test")
    from fnbody.search.evaluate import evaluate_search

    with pytest.raises(FnbodyError, match="no 'test' split"):
        evaluate_search(trained_run, tiny_corpus, csn_sample=None)


def _synthetic_pairs(n: int, seed: int, vocab: int = 60, words: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries of random topic words 2..vocab-1; each code holds the same topics under a fixed id permutation, plus noise."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(vocab - 2, generator=torch.Generator().manual_seed(123)) + 2
    q = torch.randint(2, vocab, (n, words), generator=g)
    noise = torch.randint(2, vocab, (n, 3 * words), generator=g)
    c = torch.cat([perm[q - 2], noise], dim=1)
    c[: n // 2, -words:] = 0  # half the code rows end in padding
    return q, c


def test_nbow_learns_in_a_few_steps_with_csn_defaults():
    """Regression: with PyTorch's N(0, 1) embedding init, NBoW at CSN's lr 0.01 stayed at chance for an epoch."""
    torch.manual_seed(0)
    cfg = SearchModelConfig(encoder="nbow", emb_dim=128, vocab_size=60, loss="cosine")  # CSN's NBoW settings
    model = TwoTowerModel(cfg, 60, 60)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(15):
        q, c = _synthetic_pairs(200, seed=step)
        loss = model(q, c)[2]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    q, c = _synthetic_pairs(200, seed=999)
    with torch.no_grad():
        mrr = mean_reciprocal_rank(model.scores(model.encode_queries(q), model.encode_code(c)).numpy())
    chance = float(np.mean(1 / np.arange(1, 201)))  # H(200)/200 = 0.029
    assert mrr > 0.5, f"MRR {mrr:.3f} after 15 steps (chance ~{chance:.3f})"


def test_embeddings_start_small_and_padding_is_zero():
    for encoder in ENCODERS:
        cfg = SearchModelConfig(encoder=encoder, emb_dim=32, vocab_size=1000, attn_heads=2, attn_ffn=32, attn_layers=1, rnn_layers=1)
        emb = TwoTowerModel(cfg, 1000, 1000).code_encoder.embed.weight
        assert emb[1:].abs().max() <= (6 / (1000 + 32)) ** 0.5 + 1e-6  # Glorot uniform bound, as CSN
        assert emb[0].abs().sum() == 0


def test_packed_nbow_equals_padded_weighted_mean():
    torch.manual_seed(0)
    enc = TwoTowerModel(SearchModelConfig(encoder="nbow", emb_dim=8, vocab_size=30, dropout=0.0), 30, 30).eval().code_encoder
    ids = torch.tensor([[3, 4, 5, 0, 0], [7, 8, 9, 10, 11], [2, 0, 0, 0, 0]])
    ref = enc.pool(enc.embed(ids), (ids != 0).float())
    assert torch.allclose(enc(ids), ref, atol=1e-6)
    assert torch.allclose(enc(ids[:1, :3]), ref[:1], atol=1e-6)


def test_packed_nbow_under_bf16_autocast():
    """CUDA training runs under bf16 autocast; the gate's bf16 weights must not break the fp32 pooling sums."""
    torch.manual_seed(0)
    enc = TwoTowerModel(SearchModelConfig(encoder="nbow", emb_dim=8, vocab_size=30, dropout=0.0), 30, 30).eval().code_encoder
    ids = torch.tensor([[3, 4, 5, 0, 0], [7, 8, 9, 10, 11]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc(ids)
    assert out.shape == (2, 8) and torch.allclose(out.float(), enc(ids), atol=0.05)


def test_identical_queries_are_not_negatives():
    # Rows 0 and 1 share a docstring: each one's code must not count against the other.
    scores = torch.tensor([[0.9, 0.95, 0.1], [0.95, 0.9, 0.1], [0.1, 0.2, 0.9]])
    groups = torch.tensor([5, 5, 2])
    from fnbody.search.losses import same_group

    nn_ = same_group(groups)
    assert cosine_loss(scores, not_negative=nn_).item() == pytest.approx(((1 - 0.9 + 0.1) * 2 + (1 - 0.9 + 0.2)) / 3)
    assert cosine_loss(scores).item() > cosine_loss(scores, not_negative=nn_).item()
    expected = -np.mean([np.log(np.exp(0.9) / (np.exp(0.9) + np.exp(0.1)))] * 2 + [np.log(np.exp(0.9) / np.exp([0.1, 0.2, 0.9]).sum())])
    assert softmax_loss(scores, nn_).item() == pytest.approx(expected, rel=1e-5)
    assert torch.isfinite(max_margin_loss(scores[:2, :2], not_negative=nn_[:2, :2]))  # no negatives left: loss from the margin only


def test_pair_dataset_batches_and_groups():
    from fnbody.search.data import PairDataset

    data = PairDataset([[3, 4], [5], [3, 4], []], [[7, 8, 9], [6], [2], [9, 9, 9, 9]])
    assert len(data) == 4 and data[2] == 2
    b = data.collate([1, 0])
    assert b["query"].tolist() == [[5, 0], [3, 4]] and b["code"].tolist() == [[6, 0, 0], [7, 8, 9]]
    assert data.group[0] == data.group[2] and data.group[0] != data.group[1]
    assert data.rows([3])["query"].tolist() == [[1]]  # an empty query becomes one <unk>
    assert data.clusters is None  # no cluster labels given: group_by_cluster refuses such a dataset
    with pytest.raises(ValueError, match="4 pairs but 3 cluster labels"):
        PairDataset([[3, 4], [5], [3, 4], []], [[7], [6], [2], [9]], ["a", "b", "a"])


def test_encode_pairs_clusters_pairs_by_repo_and_trains_with_group_by_cluster(tiny_corpus, tmp_path):
    from fnbody.corpus.io import read_split
    from fnbody.search.data import encode_pairs
    from fnbody.tokens.subword import train_subword_vocab

    records = read_split(tiny_corpus, "train")
    vocab = train_subword_vocab([training_pair(r, False)[1] for r in records], vocab_size=200)
    data = encode_pairs(records, vocab, vocab, 8, 16)
    repos = [r["repo"] for r in records]
    assert len(set(repos)) > 1
    for i in range(len(records)):
        for j in range(len(records)):
            assert (data.clusters[i] == data.clusters[j]) == (repos[i] == repos[j])
    run = tmp_path / "c"
    assert main(["train", "search", "--corpus", str(tiny_corpus), "--encoder", "nbow", "--out", str(run), "--max-steps", "2",
                 "--set", "train.group_by_cluster=2", *TINY]) == 0
    assert json.loads((run / "fnbody.json").read_text())["config"]["train"]["group_by_cluster"] == 2


def test_set_overrides_win_over_flags_as_in_train_lm(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "search", "--corpus", str(tiny_corpus), "--encoder", "nbow", "--out", str(run), "--max-epochs", "6",
                 "--set", "train.max_epochs=1", *TINY]) == 0
    cfg = json.loads((run / "fnbody.json").read_text())["config"]
    assert cfg["train"]["max_epochs"] == 1
    epochs = [json.loads(line).get("epoch", 0) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert max(epochs) <= 1.0
