"""Deduplication: exact (normalised code) and near-duplicate (token-set Jaccard >= threshold).

Records arrive in a deterministic order; the first of each group is kept. Near duplicates are
found with MinHash LSH (datasketch) as candidates, then confirmed with the exact token-set Jaccard,
so the threshold means exactly what it says and LSH only makes it fast.
"""

from __future__ import annotations

import numpy as np

from fnbody.progress import progress


def jaccard(a: set, b: set) -> float:
    """Jaccard similarity of two sets (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def dedup_exact(records: list[dict], keep_first: int = 0) -> tuple[list[dict], int]:
    """Keep the first record of each exact-duplicate group (same `_exact` key); return (kept, removed).

    The first `keep_first` records are kept whatever they duplicate (a base corpus being extended).
    """
    seen: set[bytes] = set()
    kept = []
    for i, r in enumerate(records):
        if i < keep_first or r["_exact"] not in seen:
            seen.add(r["_exact"])
            kept.append(r)
    return kept, len(records) - len(kept)


def dedup_near(records: list[dict], threshold: float = 0.8, num_perm: int = 64, keep_first: int = 0) -> tuple[list[dict], int]:
    """Keep the first record of each near-duplicate group (token-set Jaccard >= threshold); return (kept, removed).

    The first `keep_first` records are kept unchecked; later ones are still checked against them.
    """
    from datasketch import LeanMinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    kept: list[dict] = []
    token_sets: dict[int, set] = {}
    removed = 0
    for i, r in enumerate(progress(records, desc="near-dup", unit="fn")):
        hv = np.frombuffer(r["_minhash"], dtype=np.uint32).astype(np.uint64)
        mh = LeanMinHash(seed=1, hashvalues=hv, scheme="affine32")
        toks = set(r["code_tokens"])
        if i >= keep_first and any(jaccard(toks, token_sets[k]) >= threshold for k in lsh.query(mh)):
            removed += 1
            continue
        key = len(kept)
        token_sets[key] = toks
        lsh.insert(key, mh, check_duplication=False)
        kept.append(r)
    return kept, removed
