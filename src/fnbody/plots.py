"""PNG plots of training curves and histograms (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from fnbody.io import atomic_open


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_png: str | Path) -> Path:
    out_png = Path(out_png)
    with atomic_open(out_png, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    return out_png


def plot_curves(rows: Sequence[dict], out_png: str | Path, panels: Sequence[tuple[str, Sequence[str]]], x: str = "step", title: str = "") -> Path | None:
    """Plot metric rows (dicts from metrics.jsonl) as one panel per (title, keys); None if nothing to plot."""
    plt = _pyplot()
    panels = [(t, [k for k in keys if any(k in r and r[k] is not None for r in rows)]) for t, keys in panels]
    panels = [(t, keys) for t, keys in panels if keys]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (panel_title, keys) in zip(axes[0], panels):
        for k in keys:
            pts = [(r[x], r[k]) for r in rows if r.get(k) is not None and r.get(x) is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(pts) < 40 else None, ms=3, label=k)
        ax.set_title(panel_title)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    out = _save(fig, out_png)
    plt.close(fig)
    return out


def plot_histograms(series: dict[str, Sequence[float]], out_png: str | Path, bins: int = 50, xlabel: str = "", title: str = "", clip_quantile: float = 0.99) -> Path:
    """One histogram panel per named series, clipped at a high quantile so long tails stay readable."""
    import numpy as np

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.6), squeeze=False)
    for ax, (name, values) in zip(axes[0], series.items()):
        v = np.asarray(values, dtype=float)
        if v.size:
            hi = np.quantile(v, clip_quantile)
            ax.hist(np.clip(v, None, hi), bins=bins, color="#4477aa")
            ax.axvline(np.median(v), color="#cc3311", ls="--", label=f"median {np.median(v):.0f}")
            ax.legend(fontsize=8)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    out = _save(fig, out_png)
    plt.close(fig)
    return out
