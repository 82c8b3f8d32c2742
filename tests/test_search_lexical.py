"""BM25 lexical channel and dense + BM25 hybrid search: subtokens, BM25 known values, save/load, hybrid index, eval."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fnbody.cli import main
from fnbody.errors import FnbodyError
from fnbody.search.lexical import IDF, BM25Index, fuse, pair_scores, subtokens, zscore
from fnbody.search.metrics import reciprocal_ranks
from test_search import shared_run  # noqa: F401  (module fixture: tiny corpus and NBoW run)


@pytest.mark.parametrize("tokens, expected", [
    (["read_csv_file"], ["read", "csv", "file"]),
    (["getHTTPResponse2"], ["get", "http", "response", "2"]),
    (["HTTPServer", "__init__"], ["http", "server", "init"]),
    (["self", ".", "max_len", "=", "x2y", "3.5"], ["self", "max", "len", "x", "2", "y", "3", "5"]),
    (["(", "'", ""], []),
])
def test_subtokens_known_values(tokens, expected):
    assert subtokens(tokens) == expected


# Three documents: d0 = read file path (3 subtokens), d1 = read lines file file (4), d2 = write data (2); mean length 3.
DOCS = [["read_file", "(", "path", ")"], ["readLines", "file", "file"], ["write", "data"]]


def test_bm25_known_values_on_three_documents():
    idx = BM25Index.build(DOCS)
    idf_read = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))  # "read" and "file" are in 2 of 3 documents
    # d0: length 3 = mean, so norm = k1 = 1.2, and tf 1 gives 1 * 2.2 / 2.2 = 1 per term.
    # d1: norm = 1.2 * (0.25 + 0.75 * 4 / 3) = 1.5; read: 2.2 / 2.5, file (tf 2): 4.4 / 3.5.
    expected = [2 * idf_read, idf_read * (2.2 / 2.5 + 4.4 / 3.5), 0.0]
    np.testing.assert_allclose(idx.scores(["read", "the", "File"]), expected, rtol=1e-6)
    assert idx.scores(["read", "the", "File"]).dtype == np.float32 and len(idx) == 3
    idf_data = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))
    np.testing.assert_allclose(idx.scores(["data"]), [0, 0, idf_data * 2.2 / (1 + 1.2 * (0.25 + 0.75 * 2 / 3))], rtol=1e-6)
    assert not idx.scores(["unknown", "of"]).any()  # no indexed term: every row 0


def test_bm25_idf_from_a_reference_collection_and_pair_scores():
    ref = IDF.from_documents([["read_file"], ["read"], ["other"], ["x"]])  # N = 4: read df 2, file df 1
    w = ref.weights(["read", "file", "write"])
    np.testing.assert_allclose(w, [math.log(1 + 2.5 / 2.5), math.log(1 + 3.5 / 1.5), math.log(1 + 4)])  # unseen: log(1 + N)
    idx = BM25Index.build(DOCS, idf=ref, idf_source="ref")
    assert idx.scores(["write"])[2] == pytest.approx(math.log(5) * 2.2 / (1 + 1.2 * (0.25 + 0.75 * 2 / 3)), rel=1e-6)
    m = pair_scores([["read"], ["write", "data"]], DOCS, ref)
    assert m.shape == (2, 3)
    np.testing.assert_allclose(m[0], idx.scores(["read"]))
    assert m[1].argmax() == 2 and m[0, 2] == 0


def test_zscore_and_fuse():
    np.testing.assert_allclose(zscore(np.array([[1.0, 2.0, 3.0]])), [[-1.2247449, 0, 1.2247449]], rtol=1e-6)
    assert not zscore(np.array([[5.0, 5.0]])).any()  # a flat row (no BM25 match anywhere) adds nothing
    fused = fuse(np.array([[0.0, 1.0]]), np.array([[10.0, 0.0]]), 0.5)
    np.testing.assert_allclose(fused, [[-1 + 0.5, 1 - 0.5]], atol=1e-6)


def test_bm25_save_load_round_trip(tmp_path):
    idx = BM25Index.build(DOCS + [["ünïcode_name", "x"]])
    idx.save(tmp_path)
    back = BM25Index.load(tmp_path)
    assert back.terms == idx.terms and back.k1 == 1.2 and back.b == 0.75
    for q in (["read", "file"], ["unicode"], ["ünïcode"], ["data", "path"]):
        np.testing.assert_array_equal(back.scores(q), idx.scores(q))
    with np.load(tmp_path / "bm25.npz", allow_pickle=False) as z:
        assert z["doc_ids"].dtype == np.int32
    info = json.loads((tmp_path / "bm25.json").read_text())
    (tmp_path / "bm25.json").write_text(json.dumps({**info, "format_version": 9}))
    with pytest.raises(FnbodyError, match="format version"):
        BM25Index.load(tmp_path)
    (tmp_path / "bm25.npz").unlink()
    with pytest.raises(FnbodyError, match="bm25.npz"):
        BM25Index.load(tmp_path)


@pytest.fixture(scope="module")
def run_and_corpus(shared_run):
    """test_search's tiny NBoW run and the fixture corpus it was trained on."""
    return shared_run, shared_run.parent / "corpus"


ZEBRA = 'def fibonacci_zebra_stripes(n):\n    """Zebra."""\n    return n\n'


def test_hybrid_index_queries(run_and_corpus, tmp_path, capsys):
    from fnbody.corpus.io import read_split
    from fnbody.search.index import SearchIndex, build_index

    run, corpus = run_and_corpus
    records = read_split(corpus, "train") + [{"repo": "z/z", "path": "z.py", "func_name": "fibonacci_zebra_stripes", "code": ZEBRA}]
    info = build_index(run, records, tmp_path / "idx", bm25=True)
    assert info["bm25"] is True and (tmp_path / "idx" / "bm25.npz").exists()
    index = SearchIndex.load(tmp_path / "idx")
    assert len(index.bm25) == len(index) == 49
    text = "read a text file and return its lines"
    plain = index.query(text, k=10)
    assert index.query(text, k=10, hybrid=0.0) == plain  # w = 0 is the dense path, untouched
    hyb = index.query(text, k=10, hybrid=0.3)
    assert [h["rank"] for h in hyb] == list(range(1, 11))
    assert all(a["score"] >= b["score"] for a, b in zip(hyb, hyb[1:]))
    rows = {(r["func_name"], r["repo"], r["path"]): i for i, r in enumerate(index.records)}
    q = index.embedder.embed_queries([text])[0]
    dense = index.vectors @ q
    lex = index.bm25.scores(["read", "a", "text", "file", "and", "return", "its", "lines"])
    fused = fuse(dense, lex, 0.3)
    for h in hyb:  # each hit carries both raw scores, and `score` is their fusion
        i = rows[(h["func_name"], h["repo"], h["path"])]
        assert h["dense_score"] == pytest.approx(float(dense[i]), rel=1e-5, abs=1e-6)
        assert h["bm25_score"] == pytest.approx(float(lex[i]), rel=1e-5)
        assert h["score"] == pytest.approx(float(fused[i]), rel=1e-5, abs=1e-6)
    assert hyb[0]["score"] == pytest.approx(float(fused.max()), rel=1e-6)
    # Words found only in one function's identifiers put it first under hybrid.
    top = index.query("fibonacci zebra stripes", k=3, hybrid=1.0)[0]
    assert top["func_name"] == "fibonacci_zebra_stripes" and top["bm25_score"] > 0
    assert [len(h) for h in index.query_many(["zebra", "merge two dictionaries"], k=2, hybrid=0.3)] == [2, 2]
    with pytest.raises(FnbodyError, match="hybrid weight"):
        index.query("zebra", hybrid=-1)
    capsys.readouterr()
    assert main(["search", "query", str(tmp_path / "idx"), "fibonacci zebra", "-k", "1", "--hybrid", "1", "--json"]) == 0
    hit = json.loads(capsys.readouterr().out)[0]
    assert hit["func_name"] == "fibonacci_zebra_stripes" and {"dense_score", "bm25_score", "score"} <= set(hit)
    assert main(["search", "query", str(tmp_path / "idx"), "fibonacci zebra", "-k", "1", "--hybrid", "1"]) == 0
    assert "bm25" in capsys.readouterr().out


def test_hybrid_top_k_without_a_full_scan_equals_the_full_fusion():
    """search_hybrid scores only the dense top k and the BM25-matched rows; its top k must be the full fusion's."""
    from fnbody.search.index import SearchIndex

    rng = np.random.default_rng(0)
    n, dim = 3000, 24
    vectors = rng.normal(size=(n, dim)).astype(np.float32) + 0.3  # off-centre, as real embeddings are
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    words = [f"w{i}" for i in range(400)]
    docs = [list(rng.choice(words, size=rng.integers(3, 12))) for _ in range(n)]
    docs = [d + ["common"] if i % 3 else d for i, d in enumerate(docs)]  # "common": two rows in three (the full-product branch)
    index = SearchIndex(Path("mem"), {}, vectors, [{"i": i} for i in range(n)], None, BM25Index.build(docs))
    queries = [["w7"], ["w3", "w250"], ["common", "w9"], ["nowhere"], ["w1", "w2", "w3", "w4"]]
    q = rng.normal(size=(len(queries), dim)).astype(np.float32)
    index.prefilter_min_rows = 0  # the int8 path, from the second search on, as on a large served index
    for w in (0.3, 1.0, 5.0, 0.3):  # the first call scans every row in fp32; later ones bound by the int8 scores
        got = index.search_hybrid(q, queries, 10, w)
        for qi, toks, hits in zip(q, queries, got):
            full = fuse(vectors @ qi, index.bm25.scores(toks), w)  # every row, as the old scan ranked them
            want = np.argsort(-full, kind="stable")[:10]
            assert [i for i, _ in hits] == list(want), (toks, w)
            assert [h["score"] for _, h in hits] == pytest.approx(list(full[want]), rel=1e-5, abs=1e-6)
    from fnbody.search.index import _int8_kernels

    assert (index._moments is not None) == _int8_kernels()  # the moments exist only if the int8 path ran
    if _int8_kernels():  # approximate scores off by up to their stated bound must still give the exact answer
        pre = index.int8_prefilter()
        approx, bound = pre.approx, pre.bound
        noise = rng.uniform(-0.05, 0.05, size=n).astype(np.float32)
        pre.approx = lambda x: approx(x) + torch.from_numpy(noise)
        pre.bound = lambda x, batch=None: bound(x, batch) + 0.05
        for qi, toks, hits in zip(q, queries, index.search_hybrid(q, queries, 10, 1.0)):
            assert [i for i, _ in hits] == list(np.argsort(-fuse(vectors @ qi, index.bm25.scores(toks), 1.0), kind="stable")[:10])
    # warm() builds both up front (a server calls it), so even a first search takes the int8 path.
    cold = SearchIndex(Path("mem"), {}, vectors, [{"i": i} for i in range(n)], None, BM25Index.build(docs))
    cold.prefilter_min_rows = 0
    assert cold.warm() is cold and (cold._moments is not None) == (cold._int8 is not None) == _int8_kernels()
    if _int8_kernels():
        assert cold._prefilter(10) is cold._int8
    # A query BM25 matches nowhere is dense search (its z(BM25) is 0 everywhere).
    assert [i for i, _ in index.search_hybrid(q[3:4], [["nowhere"]], 5, 1.0)[0]] == [i for i, _ in index.search_vectors(q[3:4], 5)[0]]


def test_hybrid_needs_an_index_built_with_bm25(run_and_corpus, tmp_path, capsys):
    from fnbody.search.index import SearchIndex

    run, corpus = run_and_corpus
    idx = tmp_path / "idx"
    assert main(["search", "index", str(run), "--corpus", str(corpus), "--out", str(idx), "--splits", "test"]) == 0
    index = SearchIndex.load(idx)
    assert index.bm25 is None and json.loads((idx / "index.json").read_text())["bm25"] is False
    assert index.query("merge two dictionaries", k=2)  # the dense path still answers
    with pytest.raises(FnbodyError, match="--bm25"):
        index.query("merge two dictionaries", k=2, hybrid=0.3)
    capsys.readouterr()
    assert main(["search", "query", str(idx), "merge dictionaries", "--hybrid", "0.3"]) == 2
    assert "fnbody search index RUN" in capsys.readouterr().err
    assert main(["search", "index", str(run), "--corpus", str(corpus), "--out", str(idx), "--splits", "test", "--bm25"]) == 0
    assert "with BM25" in capsys.readouterr().out
    assert SearchIndex.load(idx).query("merge two dictionaries", k=2, hybrid=0.3)[0]["bm25_score"] > 0


def test_index_records_the_valid_fusion_weight_and_queries_default_to_it(run_and_corpus, tmp_path, capsys):
    from fnbody.corpus.io import read_split
    from fnbody.search.evaluate import choose_fusion_weight, embed_records
    from fnbody.search.index import SearchIndex
    from fnbody.search.lexical import IDF, pair_scores

    run, corpus = run_and_corpus
    idx = tmp_path / "idx"
    capsys.readouterr()
    assert main(["search", "index", str(run), "--corpus", str(corpus), "--out", str(idx), "--splits", "train",
                 "--hybrid-weight", "auto"]) == 2  # no BM25 channel to fuse with
    assert "--bm25" in capsys.readouterr().err and not idx.exists()
    assert main(["search", "index", str(run), "--corpus", str(corpus), "--out", str(idx), "--splits", "train",
                 "--bm25", "--hybrid-weight", "auto"]) == 0
    assert "fusion weight" in capsys.readouterr().out
    no_valid = tmp_path / "no_valid"
    shutil.copytree(corpus, no_valid)
    shutil.rmtree(no_valid / "valid")
    assert main(["search", "index", str(run), "--corpus", str(no_valid), "--out", str(tmp_path / "idx2"), "--splits", "train",
                 "--bm25", "--hybrid-weight", "auto"]) == 2
    assert "no 'valid' split" in capsys.readouterr().err and not (tmp_path / "idx2").exists()
    index = SearchIndex.load(idx)
    fw = index.info["fusion_weight"]
    # The same choice as eval search --hybrid auto, but with the index's own IDF (its rows: the train split here).
    train, valid = read_split(corpus, "train"), read_split(corpus, "valid")
    q, c = embed_records(index.embedder, valid)
    lex = pair_scores([r["docstring_tokens"] for r in valid], [r["code_tokens"] for r in valid],
                      IDF.from_documents(r["code_tokens"] for r in train))
    weight, grid = choose_fusion_weight(q @ c.T, lex)
    assert (fw["weight"], fw["n"], fw["protocol"]) == (weight, len(valid), "pool") and fw["corpus"] == str(corpus)
    assert fw["grid"] == {f"{w:g}": pytest.approx(m) for w, m in grid.items()}
    # Queries that name no weight use the recorded one; 0 is still dense only.
    recorded = fw["weight"]
    index.info["fusion_weight"] = {**fw, "weight": 0.7}  # a weight that is surely > 0, to tell the paths apart
    text = "merge two dictionaries"
    assert index.default_hybrid == 0.7
    assert index.query(text, k=3) == index.query(text, k=3, hybrid=0.7)
    assert "bm25_score" not in index.query(text, k=3, hybrid=0)[0]
    assert main(["search", "query", str(idx), text, "-k", "1"]) == 0
    out = capsys.readouterr().out  # the CLI loads the index as built: its recorded weight, named when it fuses
    assert (f"dense + {recorded:g} x BM25" in out) == (recorded > 0) and ("bm25" in out) == (recorded > 0)


def test_eval_search_hybrid_three_mrrs(run_and_corpus, tmp_path, capsys):
    from conftest import make_tiny_corpus

    run, corpus = run_and_corpus
    args = ["eval", "search", str(run), "--corpus", str(corpus), "--no-csn-sample", "--json"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert "bm25" not in plain and "fusion" not in plain
    assert main(args + ["--hybrid", "0.3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["test_pool"] == plain["test_pool"]  # the dense figure is unchanged by --hybrid
    assert out["bm25"]["n"] == out["fusion"]["n"] == 12 and out["bm25"]["protocol"] == "pool"
    assert 0 < out["bm25"]["mrr"] <= 1 and 0 < out["fusion"]["mrr"] <= 1
    assert "|lex:bm25-k1.2-b0.75|" in out["bm25"]["signature"] and "idf:corpus/train(48)" in out["bm25"]["signature"]
    assert out["fusion"]["signature"].startswith(out["test_pool"]["signature"]) and out["fusion"]["signature"].endswith("|fusion:z+w0.3")
    # The CSN protocol (1000-query batches) on a bigger test split, checked against a direct computation.
    big = make_tiny_corpus(tmp_path / "big", n_per_split=(48, 12, 1005))
    assert main(["eval", "search", str(run), "--corpus", str(big), "--no-csn-sample", "--hybrid", "0.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["csn_protocol"]["n"] == out["bm25"]["n"] == out["fusion"]["n"] == 1000
    from fnbody.corpus.io import read_split

    test, train = read_split(big, "test")[:1000], read_split(big, "train")
    lex = pair_scores([r["docstring_tokens"] for r in test], [r["code_tokens"] for r in test],
                      IDF.from_documents(r["code_tokens"] for r in train))
    assert out["bm25"]["mrr"] == pytest.approx(float(reciprocal_ranks(lex).mean()))
    assert main(["eval", "search", str(run), "--corpus", str(big), "--no-csn-sample", "--hybrid", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "BM25 alone" in text and "w=0.5" in text


def test_choose_fusion_weight_known_cases():
    from fnbody.search.evaluate import FUSION_GRID, choose_fusion_weight

    eye = np.eye(6)
    noise = np.random.default_rng(0).normal(size=(6, 6))
    # Dense already perfect, lexical noise: every weight that keeps dense's order ties at MRR 1; the smallest (0) wins.
    w, grid = choose_fusion_weight(eye * 10, noise)
    assert w == 0.0 and grid[0.0] == 1.0 and set(grid) == set(FUSION_GRID)
    # Dense useless (a constant row: no order), lexical perfect: any w > 0 ranks right; the smallest such weight wins.
    w, grid = choose_fusion_weight(np.ones((6, 6)), eye)
    assert w == 0.05 and grid[0.05] == 1.0 and grid[0.0] < 1.0
    # Blocks (CSN batches): the MRR is the mean over all their queries. Block 1 as the first case (dense perfect, MRR 1 at
    # every small w); block 2 has dense reversed (true code last of 6: 1/6) and lexical perfect, so only a weight past the
    # dense margin lifts it: in z-scores that takes w > 1 (at w = 1 the true code ties all others and ranks last).
    w, grid = choose_fusion_weight([eye * 10, -eye], [noise, eye])
    assert grid[0.0] == grid[1.0] == pytest.approx((6 * 1.0 + 6 * (1 / 6)) / 12)
    assert w == 1.5 and grid[1.5] > grid[2.0]  # past 1.5 the lexical noise starts to reorder block 1
    with pytest.raises(ValueError):
        choose_fusion_weight([eye, eye], [eye])


def test_eval_search_hybrid_auto_picks_the_weight_on_valid(run_and_corpus, capsys):
    run, corpus = run_and_corpus
    assert main(["eval", "search", str(run), "--corpus", str(corpus), "--no-csn-sample", "--hybrid", "auto", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    fw = out["fusion_weight"]
    assert fw["n"] == 12 and fw["protocol"] == "pool" and fw["weight"] == out["fusion"]["weight"]
    assert fw["grid"][f"{fw['weight']:g}"] == max(fw["grid"].values())
    assert out["fusion"]["signature"].endswith(f"|fusion:z+w{fw['weight']:g}(valid:pool:12)")
    assert main(["eval", "search", str(run), "--corpus", str(corpus), "--no-csn-sample", "--hybrid", "auto"]) == 0
    assert "chosen on 12 valid pairs" in capsys.readouterr().out
    assert main(["eval", "search", str(run), "--corpus", str(corpus), "--no-csn-sample", "--hybrid", "lots"]) == 2
    assert "'auto'" in capsys.readouterr().err
