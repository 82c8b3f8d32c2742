"""A code-search index: function vectors, their metadata and a copy of the model that made them.

`build_index` embeds functions with a trained run; `SearchIndex.load(path).query(text, k)` returns
ranked records by exact top-k over one matrix-vector product. The index carries its own model copy
and fingerprint, so queries are always embedded by the model the vectors came from, and an index
made by another model (or an incompatible index format) is refused rather than silently mis-ranked.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from fnbody.errors import FnbodyError
from fnbody.io import read_json, write_json, write_jsonl
from fnbody.search.embed import WEIGHTS, Embedder, model_fingerprint, run_files, weights_path

INDEX_FORMAT_VERSION = 1
INDEX_INFO = "index.json"
VECTORS = "embeddings.npy"
RECORDS = "records.jsonl.gz"
MODEL_DIR = "model"
SNIPPET_LINES = 8
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


def read_index_info(index_dir: str | Path) -> dict:
    """index.json of an index folder, checked for format version; FnbodyError when it is not an index."""
    index_dir = Path(index_dir)
    if not (index_dir / INDEX_INFO).exists():
        raise FnbodyError(f"{index_dir}: not a search index (no {INDEX_INFO}); build one with `fnbody search index RUN --corpus DIR --out {index_dir}`")
    info = read_json(index_dir / INDEX_INFO)
    if info.get("format_version") != INDEX_FORMAT_VERSION:
        raise FnbodyError(f"{index_dir}: index format version {info.get('format_version')!r}, this fnbody reads version "
                          f"{INDEX_FORMAT_VERSION}; rebuild it with `fnbody search index`")
    return info


def build_index(model_dir: str | Path, records: Iterable[dict], out_dir: str | Path, *, overwrite: bool = False,
                source: str = "", device: str = "cpu", batch_size: int = 500) -> dict:
    """Embed `records` with the search run `model_dir` and write an index folder atomically; returns index.json."""
    from fnbody import __version__
    from fnbody.config import read_run_info, write_run_info
    from fnbody.io import replace_dir

    out_dir = Path(out_dir)
    emb = Embedder.load(model_dir, device)
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
    vectors = emb.embed_code_tokens([r.get("code_tokens") or _tokens_of(row["code"]) for r, row in zip(records, rows)],
                                    batch_size, desc="embed functions")
    seconds = time.perf_counter() - t0
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / MODEL_DIR).mkdir(parents=True)
    np.save(tmp / VECTORS, vectors)
    write_jsonl(tmp / RECORDS, rows)
    run_info = read_run_info(model_dir)
    write_run_info(tmp / MODEL_DIR, run_info["kind"], run_info["config"], run_info.get("argv"), source_run=str(model_dir))
    shutil.copyfile(weights_path(model_dir), tmp / MODEL_DIR / WEIGHTS)
    for name in run_files(run_info["config"]["model"]):
        shutil.copyfile(Path(model_dir) / name, tmp / MODEL_DIR / name)
    info = {
        "format_version": INDEX_FORMAT_VERSION, "fnbody_version": __version__, "run": str(model_dir),
        "model_fingerprint": emb.fingerprint, "encoder": emb.cfg.encoder, "loss": emb.cfg.loss,
        "normalized": emb.normalized, "dim": int(vectors.shape[1]), "count": len(rows), "source": source,
        "embed_seconds": round(seconds, 3), "functions_per_s": round(len(rows) / max(seconds, 1e-9), 1),
    }
    write_json(tmp / INDEX_INFO, info)
    replace_dir(tmp, out_dir)
    return info


def _tokens_of(code: str) -> list[str]:
    """Code tokens of a record that has none (e.g. hand-made); broken code falls back to its words."""
    from fnbody.tokens.code import code_tokens

    try:
        return code_tokens(code)
    except (SyntaxError, ValueError, Exception):  # tokenize.TokenError and IndentationError on broken code
        return code.split()


class SearchIndex:
    """A loaded index: `query(text, k)` embeds the text once and ranks every function by exact dot product."""

    def __init__(self, path: Path, info: dict, vectors: np.ndarray, records: list[dict], embedder: Embedder) -> None:
        self.path = path
        self.info = info
        self.vectors = vectors
        self.records = records
        self.embedder = embedder

    @classmethod
    def load(cls, path: str | Path, *, run: str | Path | None = None, device: str = "cpu") -> "SearchIndex":
        """Load an index (and its model); with `run`, refuse it unless it was built with that run's model."""
        from fnbody.io import read_jsonl

        path = Path(path)
        info = read_index_info(path)
        for name in (VECTORS, RECORDS, MODEL_DIR):
            if not (path / name).exists():
                raise FnbodyError(f"{path}: index is missing {name}; rebuild it with `fnbody search index`")
        emb = Embedder.load(path / MODEL_DIR, device)
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
        return cls(path, info, np.ascontiguousarray(vectors, dtype=np.float32), records, emb)

    def __len__(self) -> int:
        return len(self.records)

    def search_vectors(self, q: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """Exact top-k (row, score) per query vector in `q` (Nq, C), best first."""
        k = max(1, min(int(k), len(self.records)))
        scores = q @ self.vectors.T  # (Nq, N)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.tile(np.arange(scores.shape[1]), (len(q), 1))
        out = []
        for row, idx in zip(scores, top):
            idx = idx[np.argsort(-row[idx], kind="stable")]
            out.append([(int(i), float(row[i])) for i in idx])
        return out

    def query(self, text: str, k: int = 10) -> list[dict]:
        """The `k` best functions for `text`: dicts with rank, score, repo, path, func_name, url, docstring, code, snippet."""
        return self.query_many([text], k)[0]

    def query_many(self, texts: Sequence[str], k: int = 10) -> list[list[dict]]:
        """`query` for several texts in one product."""
        if k < 1:
            raise FnbodyError(f"k must be >= 1, got {k}")
        q = self.embedder.embed_queries(texts)
        return [[{"rank": rank, "score": score, **self.records[i], "snippet": snippet(self.records[i]["code"])}
                 for rank, (i, score) in enumerate(hits, 1)] for hits in self.search_vectors(q, k)]
