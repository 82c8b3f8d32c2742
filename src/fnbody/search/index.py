"""A code-search index: function vectors, their metadata and a copy of the model that made them.

`build_index` embeds functions with a trained run; `SearchIndex.load(path).query(text, k)` returns
ranked records by exact top-k over one matrix-vector product. Large indexes first rank an in-memory int8
copy of the vectors (4x less memory traffic than fp32, which bounds the scan), rescore the best candidates
in fp32 and keep that answer only when an error bound proves no other row could enter the top k; otherwise
they scan in fp32 as before, so results are always the exact fp32 top k. The int8 copy is built at the
second search of a loaded index (a served or reused one), so a one-shot query does not pay for it.

An index built with `bm25=True` (`fnbody search index --bm25`) also holds a BM25 channel (fnbody.search.lexical) over
the functions' code subtokens; `query(text, k, hybrid=w)` then ranks by z(dense) + w * z(BM25) over every row.
Built with `fusion_from=CORPUS` (`--hybrid-weight auto`), it also records the w that ranks that corpus's valid pairs best
(as `fnbody eval search --hybrid auto` chooses it), and queries that name no weight use it.

The index carries its own model copy and fingerprint, so queries are always embedded by the model the
vectors came from, and an index made by another model (or an incompatible index format) is refused
rather than silently mis-ranked.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from fnbody.errors import FnbodyError
from fnbody.io import check_format_version, read_json, write_json, write_jsonl
from fnbody.search.embed import WEIGHTS, Embedder, model_fingerprint, run_files, weights_path

if TYPE_CHECKING:
    from fnbody.search.lexical import BM25Index

INDEX_FORMAT_VERSION = 1
INDEX_INFO = "index.json"
VECTORS = "embeddings.npy"
RECORDS = "records.jsonl.gz"
MODEL_DIR = "model"
SNIPPET_LINES = 8
PREFILTER_MIN_ROWS = 50_000  # below this an fp32 scan takes ~3 ms or less and the int8 copy is not worth building
PREFILTER_CANDIDATES = 512  # rows the int8 pass hands to the fp32 rescoring (at least 8 k)
QUERY_CHUNK = 64  # queries scored per product: bounds the (queries x rows) score matrix
MOMENT_CHUNK = 16_384  # rows per product when hybrid search computes the rows' mean and covariance
RECORD_KEYS = ("repo", "path", "func_name", "url", "sha", "lineno", "docstring", "code")


def _index_record(r: dict) -> dict:
    """The metadata an index keeps per function."""
    from fnbody.tokens.code import first_paragraph

    out = {k: r.get(k) for k in RECORD_KEYS}
    out["docstring"] = first_paragraph(r.get("docstring") or "")
    out["code"] = r.get("code") or r.get("original_string") or ""
    return out


def snippet(code: str, lines: int = SNIPPET_LINES) -> str:
    """The first `lines` lines of a function, with an ellipsis line when cut."""
    rows = code.splitlines()
    return "\n".join(rows[:lines] + (["    ..."] if len(rows) > lines else []))


def check_hybrid(index, weight: float) -> None:
    """FnbodyError unless `weight` is a usable fusion weight and, when > 0, `index` has the BM25 channel hybrid ranking needs."""
    from fnbody.search.lexical import check_weight

    check_weight(weight)
    if weight > 0 and getattr(index, "bm25", None) is None:
        path = getattr(index, "path", "INDEX")
        raise FnbodyError(f"{path}: index has no BM25 channel for hybrid search; rebuild it with "
                          f"`fnbody search index RUN --corpus DIR --out {path} --bm25`")


def read_index_info(index_dir: str | Path) -> dict:
    """index.json of an index folder, checked for format version; FnbodyError when it is not an index."""
    index_dir = Path(index_dir)
    if not (index_dir / INDEX_INFO).exists():
        raise FnbodyError(f"{index_dir}: not a search index (no {INDEX_INFO}); build one with `fnbody search index RUN --corpus DIR --out {index_dir}`")
    return check_format_version(read_json(index_dir / INDEX_INFO), INDEX_FORMAT_VERSION, index_dir, "index",
                                "rebuild it with `fnbody search index`")


def build_index(model_dir: str | Path, records: Iterable[dict], out_dir: str | Path, *, overwrite: bool = False,
                source: str = "", device: str = "cpu", batch_size: int = 500, bm25: bool = False,
                fusion_from: str | Path | None = None, precision: str = "fp32") -> dict:
    """Embed `records` with the search run `model_dir` and write an index folder atomically; returns index.json.

    `precision` "bf16": embed under bf16 autocast (recorded in index.json; queries stay fp32 unless asked otherwise).

    `bm25`: also write a BM25 channel over the same functions' code subtokens (IDF from these rows) for hybrid queries.
    `fusion_from` (with `bm25`): a corpus folder whose valid split chooses the fusion weight that queries default to,
    scored with this model and the channel's IDF; recorded as index.json's `fusion_weight` (weight, pairs, every MRR).
    """
    from fnbody.io import fresh_dir_beside, replace_dir

    out_dir = Path(out_dir)
    if fusion_from is not None and not bm25:
        raise FnbodyError("choosing a fusion weight (--hybrid-weight auto) needs the BM25 channel: add --bm25")
    if fusion_from is not None:
        from fnbody.corpus.io import split_files

        split_files(fusion_from, "valid")  # no valid split: say so before the embedding, not after
    emb = Embedder.load(model_dir, device, precision=precision)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / INDEX_INFO).exists():
            raise FnbodyError(f"{out_dir}: exists and is not a search index; refusing to overwrite it")
        old = read_json(out_dir / INDEX_INFO)
        if old.get("model_fingerprint") != emb.fingerprint and not overwrite:
            raise FnbodyError(f"{out_dir}: existing index was built with another model ({old.get('run')}, fingerprint "
                              f"{str(old.get('model_fingerprint'))[:12]}); pass --overwrite to replace it")
    records = list(records)
    rows = [_index_record(r) for r in records]
    if not rows:
        raise FnbodyError("no functions to index")
    t0 = time.perf_counter()
    token_lists = [r.get("code_tokens") or _tokens_of(row["code"]) for r, row in zip(records, rows)]
    vectors = emb.embed_code_tokens(token_lists, batch_size, desc="embed functions")
    seconds = time.perf_counter() - t0
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_dir_beside(out_dir, "building")  # never a fixed name that could be someone's folder
    try:
        info = _write_index(tmp, emb, model_dir, vectors, rows, token_lists, seconds, source, bm25, fusion_from)
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def _write_index(tmp: Path, emb: Embedder, model_dir, vectors: np.ndarray, rows: list[dict], token_lists: list, seconds: float,
                 source: str, bm25: bool, fusion_from) -> dict:
    """Every file of an index into the empty folder `tmp`; returns index.json's contents."""
    from fnbody import __version__
    from fnbody.config import read_run_info, write_run_info

    (tmp / MODEL_DIR).mkdir(parents=True)
    np.save(tmp / VECTORS, vectors)
    write_jsonl(tmp / RECORDS, rows)
    run_info = read_run_info(model_dir)
    write_run_info(tmp / MODEL_DIR, run_info["kind"], run_info["config"], run_info.get("argv"), source_run=str(model_dir))
    shutil.copyfile(weights_path(model_dir), tmp / MODEL_DIR / WEIGHTS)
    for name in run_files(run_info["config"]["model"]):
        shutil.copyfile(Path(model_dir) / name, tmp / MODEL_DIR / name)
    chosen = None
    if bm25:
        from fnbody.search.lexical import IDF, BM25Index

        idf = IDF.from_documents(token_lists)
        BM25Index.build(token_lists, idf=idf, idf_source=f"indexed rows ({len(rows)})").save(tmp)
        if fusion_from is not None:
            from fnbody.search.evaluate import fusion_weight_on_valid

            chosen = {**fusion_weight_on_valid(emb, fusion_from, idf), "corpus": str(fusion_from)}
    info = {
        "format_version": INDEX_FORMAT_VERSION, "fnbody_version": __version__, "run": str(model_dir),
        "model_fingerprint": emb.fingerprint, "encoder": emb.cfg.encoder, "loss": emb.cfg.loss,
        "normalized": emb.normalized, "dim": int(vectors.shape[1]), "count": len(rows), "source": source,
        "embed_seconds": round(seconds, 3), "functions_per_s": round(len(rows) / max(seconds, 1e-9), 1),
        "bm25": bm25, "precision": emb.precision,
    }
    if chosen:
        info["fusion_weight"] = chosen
    info["files"] = {name: file_fingerprint(tmp / name) for name in _data_files(bm25)}
    write_json(tmp / INDEX_INFO, info)
    return info


def _data_files(bm25: bool) -> tuple[str, ...]:
    from fnbody.search.lexical import BM25_ARRAYS

    return (VECTORS, RECORDS, BM25_ARRAYS) if bm25 else (VECTORS, RECORDS)


def file_fingerprint(path: Path, window: int = 1 << 20) -> str:
    """sha256 of a file's size, first and last `window` bytes: cheap at every load, and different for the files of another
    build (other vectors or another record order change the first bytes already)."""
    import hashlib

    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(window))
        if size > window:
            f.seek(max(window, size - window))
            h.update(f.read(window))
    return h.hexdigest()[:16]


def check_index_files(path: Path, info: dict) -> None:
    """Refuse an index whose vectors, records or BM25 arrays are not the files index.json was written with
    (indexes from before these fingerprints are read as they are)."""
    for name, fp in info.get("files", {}).items():
        if (path / name).exists() and file_fingerprint(path / name) != fp:
            raise FnbodyError(f"{path}: {name} is not the file this index was built with (another build's, or changed); "
                              "rebuild it with `fnbody search index`")


def _tokens_of(code: str) -> list[str]:
    """Code tokens of a record that has none (e.g. hand-made); broken code falls back to its words."""
    from fnbody.tokens.code import code_tokens

    try:
        return code_tokens(code)
    except (SyntaxError, ValueError, Exception):  # tokenize.TokenError and IndentationError on broken code
        return code.split()


def exact_top_k(vectors: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows (Nq, k), scores (Nq, k)) of the k best rows of `vectors` (N, C) per query in `q` (Nq, C) by an fp32 scan."""
    return top_k(dense_scores(vectors, q), k)


def dense_scores(vectors: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(Nq, N) dot products of the queries `q` with every row of `vectors`, by torch's BLAS.

    Not numpy's: after a numpy product, OpenBLAS threads spinning for more work slowed the next query's torch
    encoder ~2x on 2 cores (end-to-end MiniLM query over 3.7k rows: p50 24.0 ms with numpy, 11.7 ms with torch).
    """
    import torch

    q = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32))
    return (q @ torch.from_numpy(vectors).T).numpy()


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(columns, values) of the k largest scores of each row of (Nq, N), best first, equal scores by lower column."""
    import torch

    # torch.topk is ~6x faster than np.argpartition over 100k scores; its pick among ties at the k-th place is arbitrary.
    val, idx = (t.numpy() for t in torch.topk(torch.from_numpy(scores), k, dim=1, sorted=False))
    order = np.lexsort((idx, -val), axis=-1)
    return np.take_along_axis(idx, order, -1), np.take_along_axis(val, order, -1)


def _int8_kernels() -> bool:
    """Whether this torch build has the x86 int8 kernels (fbgemm) the prefilter uses; without them every search scans in fp32."""
    import torch

    return "fbgemm" in torch.backends.quantized.supported_engines


class Int8Prefilter:
    """An int8 copy of index vectors (one scale per row) for a fast candidate pass whose answer is checked by a bound.

    The approximate score a_i is fbgemm's int8 product of row i (w_i = v_i rounded to its own scale) and the query,
    quantized per call to 7 bits (reduce_range, so no int16 sum saturates on CPUs without VNNI) with one scale for all
    the call's queries: step = range / 127, so no query element moves by more than D = range / 254. Hence
        |q.v_i - a_i| <= |q| |v_i - w_i| + D |w_i|_1.
    Every row outside the candidates has a_j <= the last candidate's a, so if that plus the bound is below the
    k-th best fp32 score among the candidates, no other row can be in the exact top k.
    """

    def __init__(self, vectors: np.ndarray) -> None:
        import warnings

        import torch

        v = torch.from_numpy(vectors)
        scale = (v.abs().amax(1) / 127).clamp_min(1e-12).double()
        with warnings.catch_warnings():  # quantized tensors are deprecated in favour of torchao; fbgemm's kernel is still the fastest here
            warnings.simplefilter("ignore")
            w = torch.quantize_per_channel(v, scale, torch.zeros(len(v), dtype=torch.long), 0, torch.qint8)
        deq = w.dequantize()
        self.row_error = float((v - deq).norm(dim=1).max())  # max_i |v_i - w_i|
        self.row_l1 = float(deq.abs().sum(1).max())  # max_i |w_i|_1
        self.row_norm = float(v.norm(dim=1).max())
        self.packed = torch.ops.quantized.linear_prepack(w, None)
        self.source = vectors
        self.certified = self.fallbacks = 0  # queries answered by the candidates / sent to the fp32 scan

    def bound(self, q: np.ndarray, batch: np.ndarray | None = None) -> float:
        """Upper bound of |exact - approximate| score of query `q` on any row (plus fp32 rounding of either).

        fbgemm quantizes the whole input of one call with one scale, so the step comes from the `batch` `q` was scored in.
        """
        batch = q if batch is None else batch
        qn = float(np.linalg.norm(q))
        step = (max(float(batch.max()), 0.0) - min(float(batch.min()), 0.0)) / 254
        return qn * self.row_error + step * self.row_l1 + 1e-4 * qn * self.row_norm

    def approx(self, q: np.ndarray):
        """(Nq, N) torch tensor of approximate scores of the queries `q` (Nq, C) in one int8 call."""
        import torch

        return torch.ops.quantized.linear_dynamic(torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32)), self.packed, True)

    def search(self, q: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Per query in `q` (Nq, C): (rows, scores) of the exact top k, or None when the bound cannot prove it."""
        import torch

        m = min(max(PREFILTER_CANDIDATES, 8 * k), len(self.source))
        approx = self.approx(q)
        cut, cand = (t.numpy() for t in torch.topk(approx, m, dim=1))  # sorted: cut[:, -1] is the m-th best
        out = []
        source = torch.from_numpy(self.source)
        for qi, rows, last in zip(q, cand, cut[:, -1]):
            rows = np.sort(rows)  # row order, so that top_k breaks ties by row as the full scan does
            # torch, not numpy: OpenBLAS threads spin after a call and would slow the next query's torch encoder
            idx, val = top_k((source[torch.from_numpy(rows)] @ torch.from_numpy(qi)).numpy()[None], k)
            if last + self.bound(qi, q) < val[0, -1]:
                out.append((rows[idx[0]], val[0]))
                self.certified += 1
            else:
                out.append(None)
                self.fallbacks += 1
        return out


class SearchIndex:
    """A loaded index: `query(text, k)` embeds the text once and ranks every function by exact dot product."""

    prefilter_min_rows = PREFILTER_MIN_ROWS

    def __init__(self, path: Path, info: dict, vectors: np.ndarray, records: list[dict], embedder: Embedder,
                 bm25: "BM25Index | None" = None) -> None:
        self.path = path
        self.bm25 = bm25  # the lexical channel of hybrid queries, when the index was built with --bm25
        self.info = info
        self.vectors = vectors
        self.records = records
        self.embedder = embedder
        self._int8: Int8Prefilter | None = None
        self._searches = 0
        self._moments: tuple | None = None  # (the vectors they were computed from, mean, covariance): see _dense_moments

    @classmethod
    def load(cls, path: str | Path, *, run: str | Path | None = None, device: str = "cpu", quantize: bool = False) -> "SearchIndex":
        """Load an index (and its model); with `run`, refuse it unless it was built with that run's model; `quantize`: int8 query encoder (CPU)."""
        from fnbody.io import read_jsonl

        path = Path(path)
        info = read_index_info(path)
        for name in (VECTORS, RECORDS, MODEL_DIR):
            if not (path / name).exists():
                raise FnbodyError(f"{path}: index is missing {name}; rebuild it with `fnbody search index`")
        check_index_files(path, info)
        emb = Embedder.load(path / MODEL_DIR, device, quantize=quantize)
        if emb.fingerprint != info.get("model_fingerprint"):
            raise FnbodyError(f"{path}: the model copy in the index does not match the one its vectors were built with; rebuild the index")
        if run is not None and model_fingerprint(run) != info["model_fingerprint"]:
            raise FnbodyError(f"{path}: index was built with another model ({info.get('run')}), not {run}; "
                              f"rebuild it with `fnbody search index {run} --corpus DIR --out {path} --overwrite`")
        try:
            vectors = np.load(path / VECTORS, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise FnbodyError(f"{path / VECTORS}: cannot read embeddings ({e})") from None
        records = read_jsonl(path / RECORDS)
        if vectors.shape != (info["count"], info["dim"]) or len(records) != info["count"] or info["dim"] != emb.dim:
            raise FnbodyError(f"{path}: index files disagree ({vectors.shape} vectors, {len(records)} records, index.json says "
                              f"{info['count']} x {info['dim']}); rebuild it")
        bm25 = None
        if info.get("bm25"):
            from fnbody.search.lexical import BM25Index

            bm25 = BM25Index.load(path)
            if len(bm25) != info["count"]:
                raise FnbodyError(f"{path}: BM25 channel has {len(bm25)} rows, the index {info['count']}; rebuild it")
        return cls(path, info, np.ascontiguousarray(vectors, dtype=np.float32), records, emb, bm25)

    def __len__(self) -> int:
        return len(self.records)

    def search_vectors(self, q: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """Exact top-k (row, score) per query vector in `q` (Nq, C), best first; equal scores in row order."""
        k = max(1, min(int(k), len(self.records)))
        q = np.ascontiguousarray(q, dtype=np.float32)
        prefilter = self._prefilter(k)
        self._searches += 1
        out = []
        for s in range(0, len(q), QUERY_CHUNK):
            chunk = q[s:s + QUERY_CHUNK]
            hits = prefilter.search(chunk, k) if prefilter is not None else [None] * len(chunk)
            if any(h is None for h in hits):  # no prefilter, or its answer could not be proven exact
                todo = [i for i, h in enumerate(hits) if h is None]
                for i, h in zip(todo, zip(*exact_top_k(self.vectors, chunk[todo], k))):
                    hits[i] = h
            out += [[(int(i), float(v)) for i, v in zip(idx, val)] for idx, val in hits]
        return out

    def _prefilter(self, k: int) -> "Int8Prefilter | None":
        """The int8 copy of the vectors for this search, or None: index too small, or the first search (see below)."""
        if len(self.vectors) < max(self.prefilter_min_rows, 2 * max(PREFILTER_CANDIDATES, 8 * k)) or not _int8_kernels():
            return None
        if (self._int8 is None or self._int8.source is not self.vectors) and self._searches == 0:
            return None  # building takes ~1 s per 100k rows: a one-shot `fnbody search query` would never earn it back
        return self.int8_prefilter()

    def warm(self) -> "SearchIndex":
        """Build now what a large index's searches would otherwise build at their second call (the int8 copy, and for
        hybrid search the rows' moments), so that no request of a server pays for it; returns the index."""
        if len(self.vectors) >= self.prefilter_min_rows and _int8_kernels():
            self.int8_prefilter()
            if self.bm25 is not None:
                self._dense_moments()
        return self

    def int8_prefilter(self) -> "Int8Prefilter":
        """The int8 copy of the current vectors, built now if missing or if `vectors` was replaced (searches build it themselves)."""
        if self._int8 is None or self._int8.source is not self.vectors:
            self._int8 = Int8Prefilter(self.vectors)
        return self._int8

    @property
    def default_hybrid(self) -> float:
        """The fusion weight chosen on valid when the index was built (`--hybrid-weight auto`), else 0: dense only."""
        chosen = self.info.get("fusion_weight")
        return float(chosen["weight"]) if chosen and self.bm25 is not None else 0.0

    def query(self, text: str, k: int = 10, *, hybrid: float | None = None) -> list[dict]:
        """The `k` best functions for `text`: dicts with rank, score, repo, path, func_name, url, docstring, code, snippet.

        `hybrid` w > 0 ranks by z(dense) + w * z(BM25) over all rows (index built with --bm25); hits then also carry
        `dense_score` and `bm25_score`, and `score` is the fused one. None: `default_hybrid`; 0: dense only.
        """
        return self.query_many([text], k, hybrid=hybrid)[0]

    def query_many(self, texts: Sequence[str], k: int = 10, *, hybrid: float | None = None) -> list[list[dict]]:
        """`query` for several texts in one product."""
        if k < 1:
            raise FnbodyError(f"k must be >= 1, got {k}")
        if hybrid is None:
            hybrid = self.default_hybrid
        check_hybrid(self, hybrid)
        q = self.embedder.embed_queries(texts)
        if hybrid > 0:
            from fnbody.search.data import query_tokens

            return [self._hits(hits) for hits in self.search_hybrid(q, [query_tokens(t) for t in texts], k, hybrid)]
        return [self._hits([(i, {"score": score}) for i, score in hits]) for hits in self.search_vectors(q, k)]

    def _hits(self, hits: list[tuple[int, dict]]) -> list[dict]:
        """Result dicts for ranked (row, scores) pairs."""
        return [{"rank": rank, **scores, **self.records[i], "snippet": snippet(self.records[i]["code"])}
                for rank, (i, scores) in enumerate(hits, 1)]

    def search_hybrid(self, q: np.ndarray, query_tokens: Sequence[Sequence[str]], k: int, weight: float) -> list[list[tuple[int, dict]]]:
        """Top-k (row, {score, dense_score, bm25_score}) per query by z(dense) + weight * z(BM25) over every row, exactly.

        The z-scores are over all rows, as `fuse` takes them. A small index, or the first search of a large one, scores
        every row in fp32. A warm large index does not: a query's mean dense score is q . mean(rows) and its variance
        q' cov(rows) q (moments computed once), and the int8 prefilter's approximate scores, within their proven error
        bound e, give every row's fused score to within a e / std: only rows whose upper bound reaches the k-th best
        lower bound can be in the top k, and only those are rescored in fp32 (the same exact answer, without reading
        every fp32 row).
        """
        from fnbody.search.lexical import fuse, zscore

        k = max(1, min(int(k), len(self.records)))
        q = np.ascontiguousarray(q, dtype=np.float32)
        prefilter = self._prefilter(k)
        self._searches += 1
        out = []
        for s in range(0, len(q), QUERY_CHUNK):  # one product per chunk of queries, as search_vectors does
            chunk = q[s:s + QUERY_CHUNK]
            lex = np.stack([self.bm25.scores(t) for t in query_tokens[s:s + QUERY_CHUNK]])
            if prefilter is None:  # every row in fp32
                dense = dense_scores(self.vectors, chunk)
                rows, vals = top_k(fuse(dense, lex, weight), k)
                out += [[(int(i), {"score": float(v), "dense_score": float(d[i]), "bm25_score": float(b[i])}) for i, v in zip(r, val)]
                        for r, val, d, b in zip(rows, vals, dense, lex)]
            else:
                approx = prefilter.approx(chunk).numpy()
                out += [self._hybrid_bounded(qi, a, weight * zscore(b), b, k, prefilter.bound(qi, chunk))
                        for qi, a, b in zip(chunk, approx, lex)]
        return out

    def _hybrid_bounded(self, q: np.ndarray, approx: np.ndarray, lex_z: np.ndarray, lex: np.ndarray, k: int,
                        bound: float) -> list[tuple[int, dict]]:
        """search_hybrid's top k for one query from its int8 scores `approx` (each within `bound` of the exact one) and its
        weighted BM25 z-scores: the rows whose fused upper bound reaches the k-th best lower bound, rescored in fp32."""
        mean, cov = self._dense_moments()
        q64 = q.astype(np.float64)
        mu, sd = float(q64 @ mean), float(np.sqrt(max(float(q64 @ cov @ q64), 0.0))) + 1e-9  # z-scores as `zscore` takes them
        base = (approx - mu) / sd + lex_z
        slack = bound / sd + 1e-6  # the fused-score error of the int8 scores, plus rounding
        cand = np.flatnonzero(base + slack >= np.partition(base, len(base) - k)[len(base) - k] - slack)
        dense = dense_scores(self.vectors[cand], q[None])[0].astype(np.float64)
        cols, vals = top_k(((dense - mu) / sd + lex_z[cand])[None], k)
        return [(int(cand[c]), {"score": float(v), "dense_score": float(dense[c]), "bm25_score": float(lex[cand[c]])})
                for c, v in zip(cols[0], vals[0])]

    def _dense_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean row, covariance of the rows), float64, for hybrid search's dense z-scores; computed once per `vectors`."""
        if self._moments is None or self._moments[0] is not self.vectors:
            import torch

            n, dim = self.vectors.shape
            mean = sum(self.vectors[s:s + MOMENT_CHUNK].sum(0, dtype=np.float64) for s in range(0, n, MOMENT_CHUNK)) / n
            center = torch.from_numpy(mean.astype(np.float32))
            cov = torch.zeros(dim, dim, dtype=torch.float64)
            for s in range(0, n, MOMENT_CHUNK):  # torch's BLAS, not numpy's (see dense_scores)
                x = torch.from_numpy(self.vectors[s:s + MOMENT_CHUNK]) - center
                cov += (x.T @ x).double()
            self._moments = (self.vectors, mean, (cov / n).numpy())
        return self._moments[1], self._moments[2]
