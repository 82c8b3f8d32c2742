"""Deterministic train/valid/test assignment by repo, so no repo spans two splits."""

from __future__ import annotations

import hashlib

from fnbody.corpus.io import SPLITS


def repo_fraction(repo: str, seed: int) -> float:
    """A stable number in [0, 1) for a repo name under a seed (SHA-256, independent of PYTHONHASHSEED)."""
    h = hashlib.sha256(f"{seed}:{repo}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_of(repo: str, seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """The split ('train', 'valid' or 'test') a repo belongs to under `seed` and `fractions`."""
    x = repo_fraction(repo, seed) * sum(fractions)
    edge = 0.0
    for name, frac in zip(SPLITS, fractions):
        edge += frac
        if x < edge:
            return name
    return SPLITS[-1]
