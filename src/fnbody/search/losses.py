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


def _hardest_negative(scores: torch.Tensor, not_negative: torch.Tensor | None = None) -> torch.Tensor:
    """Per row, the highest score over the row's negatives (off-diagonal, not marked in `not_negative`); -inf if none."""
    eye = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    if not_negative is not None:
        eye = eye | not_negative
    return scores.masked_fill(eye, float("-inf")).max(dim=1).values


def _without(scores: torch.Tensor, not_negative: torch.Tensor | None) -> torch.Tensor:
    """Scores with the off-diagonal entries marked in `not_negative` set to -inf (the diagonal is always kept)."""
    if not_negative is None:
        return scores
    eye = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    return scores.masked_fill(not_negative & ~eye, float("-inf"))


def softmax_loss(scores: torch.Tensor, not_negative: torch.Tensor | None = None, symmetric: bool = False) -> torch.Tensor:
    """Equation (1): -1/N sum_i log softmax_j(E_c(c_j) . E_q(d_i))[i], over the row's true code and its negatives.

    `symmetric` averages it with the same loss over columns (each code against the batch's queries), as CLIP and
    OpenAI's cpt embeddings train; `not_negative` is symmetric, so it masks both directions alike.
    """
    scores = _without(scores, not_negative)
    target = torch.arange(scores.shape[0], device=scores.device)
    loss = F.cross_entropy(scores, target)
    if symmetric:
        loss = (loss + F.cross_entropy(scores.T, target)) / 2
    return loss


def cosine_loss(scores: torch.Tensor, margin: float = 1.0, not_negative: torch.Tensor | None = None) -> torch.Tensor:
    """CSN's cosine loss: max(0, margin - cos(true) + max_{j!=i} relu(cos_j)); negative cosines are not penalised."""
    if scores.shape[0] == 1:
        return (margin - scores.diagonal()).clamp_min(0).mean()
    neg = _hardest_negative(scores, not_negative).clamp_min(0)
    return (margin - scores.diagonal() + neg).clamp_min(0).mean()


def max_margin_loss(scores: torch.Tensor, margin: float = 1.0, not_negative: torch.Tensor | None = None) -> torch.Tensor:
    """CSN's max-margin loss on log-probabilities: max(0, margin - logp(true) + max_{j!=i} logp_j)."""
    logp = F.log_softmax(_without(scores, not_negative), dim=1)
    if scores.shape[0] == 1:
        return (margin - logp.diagonal()).clamp_min(0).mean()
    return (margin - logp.diagonal() + _hardest_negative(logp, not_negative)).clamp_min(0).mean()


def same_group(groups: torch.Tensor | None) -> torch.Tensor | None:
    """(B, B) True where two pairs share a group (e.g. the same docstring), so neither code is the other's negative."""
    return None if groups is None else groups[:, None] == groups[None, :]


def retrieval_loss(q: torch.Tensor, c: torch.Tensor, loss: str = "softmax", margin: float = 1.0,
                   groups: torch.Tensor | None = None, scale: float = 1.0, symmetric: bool = False) -> torch.Tensor:
    """The chosen in-batch loss for query embeddings q (B, C) and code embeddings c (B, C).

    `groups` (B,) ids pairs whose queries are identical: 13% of the default corpus's training docstrings
    are repeated ("Initialize the weights" 116 times), and without it the loss would push a query away
    from a code that answers it as well as its own. `scale` multiplies the similarities inside the softmax loss
    (a temperature of 1/scale): unit vectors score within [-1, 1], too flat a softmax without it. `symmetric` (softmax
    only) also trains code-to-query ranking.
    """
    if symmetric and loss != "softmax":
        raise ValueError(f"symmetric applies to the softmax loss, not {loss!r}")
    scores = similarity(q, c, loss)  # (B, B)
    not_negative = same_group(groups)
    if loss == "softmax":
        return softmax_loss(scores * scale, not_negative, symmetric)
    if loss == "cosine":
        return cosine_loss(scores, margin, not_negative)
    if loss == "max-margin":
        return max_margin_loss(scores, margin, not_negative)
    raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
