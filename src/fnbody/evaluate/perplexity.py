"""Cross-entropy and perplexity from summed negative log-likelihoods: shared by every model, torch-free."""

from __future__ import annotations

import math
from typing import Iterable

from fnbody.errors import FnbodyError


def cross_entropy(total_nll: float, num_tokens: int) -> float:
    """Mean negative log-likelihood per token, in nats."""
    if num_tokens <= 0:
        raise FnbodyError(f"cross-entropy over {num_tokens} tokens is undefined")
    return total_nll / num_tokens


def perplexity(total_nll: float, num_tokens: int) -> float:
    """exp(mean NLL per token); inf rather than an overflow error for a hopeless model."""
    ce = cross_entropy(total_nll, num_tokens)
    return math.exp(ce) if ce < 700 else math.inf


def bits_per_token(total_nll: float, num_tokens: int) -> float:
    """Cross-entropy in bits (bits per character for a character model)."""
    return cross_entropy(total_nll, num_tokens) / math.log(2)


def aggregate_nll(batches: Iterable[tuple[float, int]]) -> tuple[float, int]:
    """Sum (nll, tokens) pairs from batches; averaging batch means instead would weight short batches wrongly."""
    total, count = 0.0, 0
    for nll, n in batches:
        total += float(nll)
        count += int(n)
    return total, count


def perplexity_report(total_nll: float, num_tokens: int, unit: str = "token") -> dict:
    """Cross-entropy (nats and bits) and perplexity with a signature naming the unit and count."""
    return {
        "cross_entropy": cross_entropy(total_nll, num_tokens),
        f"bits_per_{unit}": bits_per_token(total_nll, num_tokens),
        "perplexity": perplexity(total_nll, num_tokens),
        "tokens": num_tokens,
        "signature": f"perplexity|unit:{unit}|log:e|tokens:{num_tokens}",
    }
