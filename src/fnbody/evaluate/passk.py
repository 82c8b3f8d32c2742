"""The unbiased pass@k estimator (Chen et al. 2021), in its numerically stable product form."""

from __future__ import annotations

from typing import Sequence

from fnbody.errors import FnbodyError


def estimate_pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k) for n samples of which c pass, without huge binomials."""
    if not (0 <= c <= n) or k < 1 or k > n:
        raise FnbodyError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k(counts: Sequence[tuple[int, int]], ks: Sequence[int]) -> dict[str, float]:
    """Mean pass@k over tasks given (n, c) per task, for every k that all tasks have n >= k."""
    if not counts:
        raise FnbodyError("pass@k over zero tasks is undefined")
    out = {}
    for k in ks:
        if all(n >= k for n, _ in counts):
            out[f"pass@{k}"] = sum(estimate_pass_at_k(n, c, k) for n, c in counts) / len(counts)
    return out
