"""In-batch retrieval losses over a (B, B) query-by-code similarity matrix whose diagonal holds the true pairs.

These follow CodeSearchNet's `loss` options: "softmax" is the report's equation (1),
"cosine" and "max-margin" are CSN's margin losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("softmax", "cosine", "max-margin")


def similarity(q: torch.Tensor, c: torch.Tensor, loss: str) -> torch.Tensor:
    """Scores (Bq, Bc) the loss (and retrieval) uses: cosine for the cosine loss, dot product otherwise."""
    if loss == "cosine":
        q, c = F.normalize(q, dim=-1), F.normalize(c, dim=-1)
    return q @ c.T


def _hardest_negative(scores: torch.Tensor) -> torch.Tensor:
    """Per row, the highest off-diagonal score."""
    eye = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    return scores.masked_fill(eye, float("-inf")).max(dim=1).values


def softmax_loss(scores: torch.Tensor) -> torch.Tensor:
    """Equation (1): -1/N sum_i log softmax_j(E_c(c_j) . E_q(d_i))[i]."""
    return F.cross_entropy(scores, torch.arange(scores.shape[0], device=scores.device))


def cosine_loss(scores: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """CSN's cosine loss: max(0, margin - cos(true) + max_{j!=i} relu(cos_j)); negative cosines are not penalised."""
    if scores.shape[0] == 1:
        return (margin - scores.diagonal()).clamp_min(0).mean()
    neg = _hardest_negative(scores).clamp_min(0)
    return (margin - scores.diagonal() + neg).clamp_min(0).mean()


def max_margin_loss(scores: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """CSN's max-margin loss on log-probabilities: max(0, margin - logp(true) + max_{j!=i} logp_j)."""
    logp = F.log_softmax(scores, dim=1)
    if scores.shape[0] == 1:
        return (margin - logp.diagonal()).clamp_min(0).mean()
    return (margin - logp.diagonal() + _hardest_negative(logp)).clamp_min(0).mean()


def retrieval_loss(q: torch.Tensor, c: torch.Tensor, loss: str = "softmax", margin: float = 1.0) -> torch.Tensor:
    """The chosen in-batch loss for query embeddings q (B, C) and code embeddings c (B, C)."""
    scores = similarity(q, c, loss)  # (B, B)
    if loss == "softmax":
        return softmax_loss(scores)
    if loss == "cosine":
        return cosine_loss(scores, margin)
    if loss == "max-margin":
        return max_margin_loss(scores, margin)
    raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
