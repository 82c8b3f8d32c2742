"""Mean reciprocal rank, as CodeSearchNet computes it (pure functions over score matrices)."""

from __future__ import annotations

import numpy as np

CSN_EVAL_BATCH = 1000  # CSN ranks each query's true code against the 999 others of its batch


def reciprocal_ranks(scores: np.ndarray) -> np.ndarray:
    """1/rank of the diagonal entry in each row of a square score matrix; ties count against the true code (CSN)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be a square matrix, got shape {scores.shape}")
    correct = np.diagonal(scores)[:, None]
    ranks = (scores >= correct).sum(axis=1)  # (N,) the true code itself counts once
    return 1.0 / ranks


def mean_reciprocal_rank(scores: np.ndarray) -> float:
    """MRR of a square score matrix whose row i's correct answer is column i."""
    return float(reciprocal_ranks(scores).mean())


def batched_mrr(q: np.ndarray, c: np.ndarray, batch_size: int = CSN_EVAL_BATCH) -> tuple[float, int]:
    """CSN protocol: MRR over fixed consecutive batches of `batch_size` pairs, last partial batch dropped.

    `q` and `c` are (N, C) embeddings already in the model's similarity space (normalised for cosine).
    Returns (MRR averaged over queries, number of queries ranked); (nan, 0) when N < batch_size.
    """
    n_full = (len(q) // batch_size) * batch_size
    if n_full == 0:
        return float("nan"), 0
    rr = [reciprocal_ranks(q[i:i + batch_size] @ c[i:i + batch_size].T) for i in range(0, n_full, batch_size)]
    return float(np.concatenate(rr).mean()), n_full
