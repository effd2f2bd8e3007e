"""Evaluation metrics of a training run (numpy only).

Definitions (also in ``docs/train.md``):

* ``macro_f1``: the mean F1 over the fine labels that have at least one true image in the
  evaluated split (top-1 predictions);
* ``accuracy``: top-1 fine-label accuracy; ``group_accuracy``: top-1 group accuracy (group
  probability = sum of its labels' probabilities);
* ``per_group``: for each flaggable group, precision/recall/F1 of ``group probability >= the
  group's flag threshold`` against the true group; ``review_*`` the same at the review
  threshold; for ``benign``, of the top-1 group being benign;
* ``ece``: expected calibration error of the top-1 fine-label probability (15 equal-width
  bins by default), ``nll``: mean negative log-likelihood; both reported before
  (``temperature = 1``) and after temperature scaling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..calibration import expected_calibration_error
from ..modelpack import Thresholds
from ..scores import group_matrix, log_softmax
from ..taxonomy import FLAGGABLE_GROUPS

__all__ = ["evaluate", "macro_f1", "prf"]


def prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Precision, recall and F1 from counts (0 where undefined)."""
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f}


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean F1 over the classes present in ``y_true``."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    f1s = []
    for c in range(n_classes):
        support = int((y_true == c).sum())
        if support == 0:
            continue
        tp = int(((y_pred == c) & (y_true == c)).sum())
        fp = int(((y_pred == c) & (y_true != c)).sum())
        f1s.append(prf(tp, fp, support - tp)["f1"])
    return float(np.mean(f1s)) if f1s else 0.0


def _r(x: float) -> float:
    return round(float(x), 6)


def evaluate(logits: np.ndarray, y: np.ndarray, labels: Sequence[str],
             label_groups: Mapping[str, str], *, temperature: float = 1.0,
             thresholds: Mapping[str, Thresholds] | None = None,
             ece_bins: int = 15) -> dict[str, Any]:
    """All metrics of one split.

    Args:
        logits: (N, C) raw logits.
        y: (N,) true label indices.
        labels: label names in column order.
        label_groups: group of each label.
        temperature: the fitted temperature (metrics "after" use it).
        thresholds: per-group thresholds for ``per_group`` (flaggable groups without one are
            reported with the top-1 rule only).
        ece_bins: ECE bins.

    Returns:
        A JSON-ready dict.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    n, c = z.shape
    lp_raw = log_softmax(z)
    lp_cal = log_softmax(z, temperature)
    p_raw, p_cal = np.exp(lp_raw), np.exp(lp_cal)
    pred = z.argmax(axis=1)
    groups = [g for g in dict.fromkeys(label_groups[lab] for lab in labels)]
    gp = p_cal @ group_matrix(labels, label_groups, groups)
    g_true = np.array([groups.index(label_groups[labels[k]]) for k in y], dtype=np.int64)
    g_pred = gp.argmax(axis=1)

    per_label: dict[str, Any] = {}
    for k, lab in enumerate(labels):
        support = int((y == k).sum())
        tp = int(((pred == k) & (y == k)).sum())
        fp = int(((pred == k) & (y != k)).sum())
        d = {m: _r(v) for m, v in prf(tp, fp, support - tp).items()}
        d["support"] = support
        per_label[lab] = d

    per_group: dict[str, Any] = {}
    for gi, g in enumerate(groups):
        truth = g_true == gi
        support = int(truth.sum())
        entry: dict[str, Any] = {"support": support}
        th = (thresholds or {}).get(g)
        if g in FLAGGABLE_GROUPS and th is not None:
            for name, t in (("", th.flag), ("review_", th.review)):
                predicted = gp[:, gi] >= t
                tp = int((predicted & truth).sum())
                fp = int((predicted & ~truth).sum())
                for m, v in prf(tp, fp, support - tp).items():
                    entry[name + m] = _r(v)
            entry["flag_threshold"] = th.flag
            entry["review_threshold"] = th.review
        else:
            predicted = g_pred == gi
            tp = int((predicted & truth).sum())
            fp = int((predicted & ~truth).sum())
            entry.update({m: _r(v) for m, v in prf(tp, fp, support - tp).items()})
            entry["rule"] = "top-1 group"
        per_group[g] = entry

    idx = np.arange(n)
    return {
        "n": int(n),
        "macro_f1": _r(macro_f1(y, pred, c)),
        "accuracy": _r((pred == y).mean()) if n else 0.0,
        "group_accuracy": _r((g_pred == g_true).mean()) if n else 0.0,
        "temperature": _r(temperature),
        "ece_before_temperature": _r(expected_calibration_error(p_raw, y, ece_bins)),
        "ece_after_temperature": _r(expected_calibration_error(p_cal, y, ece_bins)),
        "nll_before_temperature": _r(-lp_raw[idx, y].mean()),
        "nll_after_temperature": _r(-lp_cal[idx, y].mean()),
        "per_group": per_group,
        "per_label": per_label,
    }
