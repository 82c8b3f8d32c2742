"""Query-latency paths of code search: torch.topk ranking, the certified int8 prefilter, int8 query encoding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fnbody.cli import main
from fnbody.errors import FnbodyError
from fnbody.search.embed import Embedder
from fnbody.search.index import QUERY_CHUNK, Int8Prefilter, SearchIndex, exact_top_k, top_k
from test_search_minilm import setup  # noqa: F401  (module fixture: tiny corpus, tiny BERT folder, frozen run)


def argpartition_ranking(scores: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """The ranking SearchIndex used before torch.topk: argpartition, then a stable sort of the k."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    return [[(int(i), float(row[i])) for i in idx[np.argsort(-row[idx], kind="stable")]] for row, idx in zip(scores, top)]


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Unit rows around 50 centres, so a query near a centre has a clear top 10 (as real code vectors have)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim))
    v = centres[rng.integers(0, 50, n)] + 0.7 * rng.normal(size=(n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def index_of(vectors: np.ndarray) -> SearchIndex:
    """A SearchIndex over `vectors` with placeholder records (ranking only touches vectors)."""
    return SearchIndex(None, {}, vectors, [{}] * len(vectors), None)


def test_top_k_matches_argpartition_including_ties_and_k_beyond_n():
    scores = np.array([[0.5, 0.9, 0.5, 0.1, 0.9, 0.3], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [-1, -2, -3, -4, -5, -6]], dtype=np.float32)
    for k in (1, 2, 3, 6):
        rows, vals = top_k(scores, k)
        old = argpartition_ranking(scores, k)
        assert [list(v) for v in vals] == [[s for _, s in r] for r in old]
        assert all(list(v) == sorted(v, reverse=True) for v in vals)
    rows, _ = top_k(scores, 4)
    assert list(rows[0]) == [1, 4, 0, 2] and list(rows[2]) == [0, 1, 2, 3]  # equal scores in row order (0.9 at 1, 4; 0.5 at 0, 2)
    rows, _ = top_k(scores, 3)
    assert list(rows[0][:2]) == [1, 4] and rows[0][2] in (0, 2)  # which of two equal scores takes the last place is arbitrary
    rows, _ = top_k(scores, 6)
    assert list(rows[1]) == [0, 1, 2, 3, 4, 5]
    v = clustered(300, 16)
    index = index_of(v)
    got = index.search_vectors(v[:3], 500)  # k > N is cut to N: every row, best first
    assert [len(h) for h in got] == [300] * 3 and sorted(r for r, _ in got[0]) == list(range(300))
    assert [s for _, s in got[0]] == pytest.approx([s for _, s in argpartition_ranking(v[:1] @ v.T, 300)[0]], abs=1e-6)


def test_int8_error_bound_holds_for_every_row():
    rng = np.random.default_rng(1)
    v = clustered(3000, 64)
    v[:10] *= 3.0  # rows of other lengths and one spiky row: the bound must not assume unit, spread-out rows
    v[10] = 0
    v[10, 5] = 1.0
    pf = Int8Prefilter(v)
    q = np.concatenate([v[:20] + 0.05 * rng.normal(size=(20, 64)), rng.normal(size=(5, 64)) * 4,
                        np.abs(rng.normal(size=(5, 64)))]).astype(np.float32)  # one-signed queries shift the uint8 zero point
    approx = pf.approx(q).numpy()
    exact = q @ v.T
    for a, e, qi in zip(approx, exact, q):  # one call, one input scale for all its queries: the bound takes the batch
        assert np.abs(a - e).max() <= pf.bound(qi, q)
        assert np.abs(a - e).max() > 0  # the int8 pass really is approximate, so the bound is doing work
    for qi in q[::5]:
        a = pf.approx(qi[None]).numpy()[0]
        assert np.abs(a - v @ qi).max() <= pf.bound(qi)
    assert pf.bound(q[0]) < pf.bound(q[0], q)  # the large queries of the batch coarsen the step for the small ones


def test_prefilter_answers_are_the_exact_fp32_top_k_and_ties_fall_back():
    v = clustered(5000, 64)
    rng = np.random.default_rng(2)
    q = (v[rng.integers(0, 5000, QUERY_CHUNK + 6)] + 0.1 * rng.normal(size=(QUERY_CHUNK + 6, 64))).astype(np.float32)
    index = index_of(v)
    index.prefilter_min_rows = 0
    index.search_vectors(q[:1], 10)
    assert index._int8 is None  # a one-shot query does not pay for the int8 copy; the second search builds it
    for k in (1, 10, 50):
        got = index.search_vectors(q, k)
        want = argpartition_ranking(q @ v.T, k)
        assert len(got) == len(q)  # more queries than one chunk
        for g, w in zip(got, want):
            assert [s for _, s in g] == pytest.approx([s for _, s in w], abs=1e-6) and {r for r, _ in g} == {r for r, _ in w}
    pf = index._int8
    assert pf.certified > 0.9 * 3 * len(q)  # the int8 pass answered nearly all; else this test measures only the fallback
    # A cluster of near-copies of the best row wider than the candidates: the bound cannot prove the top k, so the fp32 scan answers.
    dup = np.concatenate([np.repeat(v[:1], 700, 0) + 1e-4 * rng.normal(size=(700, 64)).astype(np.float32), v]).astype(np.float32)
    index = index_of(np.ascontiguousarray(dup))
    index.prefilter_min_rows = 0
    index.int8_prefilter()
    got = index.search_vectors(v[:1], 10)[0]
    assert index._int8.fallbacks == 1 and index._int8.certified == 0
    want = argpartition_ranking(v[:1] @ dup.T, 10)[0]
    assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-6) and {r for r, _ in got} == {r for r, _ in want}
    rows, vals = exact_top_k(dup, v[:1], 10)
    assert [r for r, _ in got] == list(rows[0]) and max(rows[0]) < 700  # the near-copies of the best row
    index.vectors = np.ascontiguousarray(dup[::-1])  # replacing the vectors rebuilds the int8 copy
    index.search_vectors(v[:1], 10)
    assert index._int8.source is index.vectors


@pytest.fixture(scope="module")
def minilm_index(setup, tmp_path_factory):
    """(frozen tiny-BERT minilm run, its index over the tiny corpus's splits, the corpus)."""
    corpus, _, run = setup
    idx = tmp_path_factory.mktemp("latency") / "idx"
    assert main(["search", "index", str(run), "--corpus", str(corpus), "--out", str(idx)]) == 0
    return run, idx, corpus


def test_int8_query_encoder_is_close_to_fp32_and_leaves_code_vectors_alone(minilm_index):
    from fnbody.corpus.io import read_split

    run, idx, corpus = minilm_index
    fp32, int8 = Embedder.load(run), Embedder.load(run, quantize=True)
    assert int8.quantized and not fp32.quantized
    assert int8.query_encoder is not int8.model.query_encoder  # a copy: the shared tower keeps its fp32 weights for code
    assert any("quantized" in type(m).__module__ for m in int8.query_encoder.modules())
    recs = read_split(corpus, "test")
    toks = [r["docstring_tokens"] for r in recs]
    qf, qi = fp32.embed_query_tokens(toks), int8.embed_query_tokens(toks)
    cos = (qf * qi).sum(1)  # both unit length
    assert cos.min() > 0.97 and not np.array_equal(qf, qi)
    one = int8.embed_queries(["merge two dictionaries"])  # the single-query path gives the batch path's vector
    assert np.allclose(one, int8.embed_query_tokens([["merge", "two", "dictionaries"]]), atol=1e-5)
    code = [r["code_tokens"] for r in recs]
    assert np.array_equal(int8.embed_code_tokens(code), fp32.embed_code_tokens(code))
    with pytest.raises(FnbodyError, match="CPU only"):
        Embedder(fp32.model, fp32.query_vocab, fp32.code_vocab, run, fp32.fingerprint, device="cuda", quantize=True)


def test_search_query_int8_flag_and_fingerprint_check(minilm_index, tmp_path, capsys):
    run, idx, _ = minilm_index
    assert main(["search", "query", str(idx), "merge two dictionaries", "-k", "3", "--json"]) == 0
    fp32 = json.loads(capsys.readouterr().out)
    assert main(["search", "query", str(idx), "merge two dictionaries", "-k", "3", "--json", "--int8", "--run", str(run)]) == 0
    int8 = json.loads(capsys.readouterr().out)
    assert len(int8) == 3 and [h["rank"] for h in int8] == [1, 2, 3]
    assert int8[0]["score"] == pytest.approx(fp32[0]["score"], abs=0.05)
    index = SearchIndex.load(idx, quantize=True)
    q = index.embedder.embed_queries(["merge two dictionaries"])[0]
    assert [h["score"] for h in index.query("merge two dictionaries", 3)] == pytest.approx(sorted(index.vectors @ q, reverse=True)[:3], abs=1e-5)
    other = tmp_path / "other"  # a model whose weights differ is still refused with --int8
    import shutil

    shutil.copytree(run, other)
    w = other / "checkpoints" / "best" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-4] + b"\x00\x00\x80\x3f")
    assert main(["search", "query", str(idx), "merge two dictionaries", "--int8", "--run", str(other)]) == 2
    assert "another model" in capsys.readouterr().err
