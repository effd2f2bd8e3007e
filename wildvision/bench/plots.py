"""PNG plots of a bench report (matplotlib, Agg backend, imported only here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingExtraError
from ..taxonomy import FLAGGABLE_GROUPS
from . import metrics as M
from .evaluate import EvalData

__all__ = ["plot_confusion", "plot_pr_compare", "plot_pr_curves", "plot_reliability"]


def _plt() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MissingExtraError("matplotlib", "bench", "bench plots (or use --no-plots)") from e
    return plt


def _curves(d: EvalData) -> list[tuple[str, np.ndarray, np.ndarray, float, int]]:
    """(name, recall, precision, AP, support) for each covered group with positives, plus
    'any flaggable'."""
    out = []
    for i, g in enumerate(d.groups):
        pos = d.true_g == i
        if g not in d.model_groups or not pos.any():
            continue
        c = M.BinaryCurve(pos, d.gprob[:, i])
        p, r, _ = c.pr_curve()
        out.append((g, r, p, float(c.average_precision()[0]), int(pos.sum())))
    if "benign" in d.groups:
        bi = d.groups.index("benign")
        pos = d.true_g != bi
        if pos.any() and (~pos).any():
            cols = [i for i, g in enumerate(d.groups) if g in FLAGGABLE_GROUPS]
            c = M.BinaryCurve(pos, d.gprob[:, cols].sum(axis=1))
            p, r, _ = c.pr_curve()
            out.append(("any flaggable", r, p, float(c.average_precision()[0]), int(pos.sum())))
    return out


def _step(ax: Any, r: np.ndarray, p: np.ndarray, **kw: Any) -> None:
    # the step curve that average precision integrates, starting at recall 0
    ax.step(np.r_[0.0, r], np.r_[p[0] if p.size else 1.0, p], where="pre", **kw)


def plot_pr_curves(d: EvalData, path: str | Path, title: str) -> Path:
    """Precision-recall curve of each group (one-vs-rest on the group probability)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for name, r, p, ap, n in _curves(d):
        _step(ax, r, p, lw=1.8 if name != "any flaggable" else 2.4,
              ls="--" if name == "any flaggable" else "-",
              label=f"{name} (AP {ap:.3f}, n={n})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_pr_compare(models: Sequence[tuple[str, EvalData]], path: str | Path) -> Path:
    """Overlaid PR curves of several models, one panel per group."""
    plt = _plt()
    panels: dict[str, list[tuple[str, np.ndarray, np.ndarray, float]]] = {}
    for key, d in models:
        for name, r, p, ap, _n in _curves(d):
            panels.setdefault(name, []).append((key, r, p, ap))
    names = sorted(panels, key=lambda s: (s == "any flaggable", s))
    if not names:
        names = ["(no curves)"]
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.8 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names, strict=False):
        for key, r, p, ap in panels.get(name, []):
            _step(ax, r, p, lw=1.6, label=f"{key} (AP {ap:.3f})")
        ax.set_title(name, fontsize=10)
        ax.set_xlim(0, 1.01)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.grid(alpha=0.3)
        if panels.get(name):
            ax.legend(fontsize=6, loc="lower left")
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_confusion(labels_true: Sequence[str], labels_pred: Sequence[str],
                   matrix: Sequence[Sequence[int]], path: str | Path, title: str) -> Path:
    """Row-normalised confusion matrix (rows: truth), counts written in the cells."""
    plt = _plt()
    cm = np.asarray(matrix, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k_t, k_p = cm.shape
    size = max(4.5, 0.42 * max(k_t, k_p) + 2.5)
    fig, ax = plt.subplots(figsize=(size * 1.1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k_p))
    ax.set_xticklabels(labels_pred, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(k_t))
    ax.set_yticklabels(labels_true, fontsize=7)
    ax.set_xlabel("predicted (argmax)")
    ax.set_ylabel("true")
    if k_t * k_p <= 900:
        for i in range(k_t):
            for j in range(k_p):
                if cm[i, j]:
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true row")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_reliability(calibration: Mapping[str, Any], path: str | Path, title: str) -> Path:
    """Reliability diagram of the top-label (and top-group) confidence, with a histogram."""
    plt = _plt()
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True,
                                 gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="perfect calibration")
    for key, color in (("top_label", "C0"), ("top_group", "C1")):
        block = calibration.get(key)
        if not block:
            continue
        bins = [b for b in block["bins"] if b["count"]]
        ece = block["ece"]["value"] if isinstance(block["ece"], Mapping) else block["ece"]
        ece_s = f"{ece:.3f}" if ece is not None else "n/a"
        ax.plot([b["mean_confidence"] for b in bins], [b["accuracy"] for b in bins], "o-",
                color=color, label=f"{key.replace('_', ' ')} (ECE {ece_s})")
        centers = [(b["lo"] + b["hi"]) / 2 for b in block["bins"]]
        width = block["bins"][0]["hi"] - block["bins"][0]["lo"]
        hx.bar(centers, [b["count"] for b in block["bins"]], width=width * 0.9, alpha=0.5,
               color=color)
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title, fontsize=10)
    hx.set_xlabel(f"confidence ({calibration.get('n_bins', 15)} bins)")
    hx.set_ylabel("images")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
