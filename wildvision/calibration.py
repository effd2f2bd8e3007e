"""Calibration and decision thresholds, in numpy only (core-safe: no torch, no scipy).

Used after training (``wildvision train``) and by the benchmark:

* :func:`fit_temperature` — temperature scaling (Guo et al., 2017): the single ``T > 0``
  minimising the negative log-likelihood of ``softmax(logits / T)`` on validation data. The NLL
  is convex in ``1/T``, so a golden-section search over ``log(1/T)`` finds the global minimum.
* :func:`expected_calibration_error` and :func:`reliability_bins` — equal-width confidence
  bins of the top-1 probability.
* :func:`threshold_for_precision` — the lowest score threshold whose precision on validation
  reaches a target (the highest recall at that precision).
* :func:`choose_group_thresholds` — ``flag`` and ``review`` thresholds per flaggable group,
  with a documented fallback for groups that have no validation positives or whose target
  precision cannot be reached.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError
from .modelpack import Thresholds
from .scores import log_softmax as log_softmax
from .scores import softmax as softmax

__all__ = [
    "DEFAULT_FLAG_PRECISION",
    "DEFAULT_REVIEW_PRECISION",
    "FALLBACK_THRESHOLDS",
    "GroupThresholdReport",
    "ThresholdChoice",
    "choose_group_thresholds",
    "expected_calibration_error",
    "fit_temperature",
    "log_softmax",
    "nll",
    "reliability_bins",
    "softmax",
    "threshold_for_precision",
    "thresholds_from_reports",
]

DEFAULT_FLAG_PRECISION = 0.95
DEFAULT_REVIEW_PRECISION = 0.80
# Used for a group with no validation positives, or whose target precision is out of reach
# on validation. Matches ModelCard.threshold()'s default for flaggable groups.
FALLBACK_THRESHOLDS = Thresholds(flag=0.5, review=0.3)

_T_MIN, _T_MAX = 0.05, 20.0


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or y.ndim != 1 or len(z) != len(y):
        raise ConfigError(
            f"expected logits (N, C) and labels (N,), got {z.shape} and {y.shape}"
        )
    if len(y) == 0:
        raise ConfigError("no samples to calibrate on")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= z.shape[1]:
        raise ConfigError(f"labels must be integers in [0, {z.shape[1]})")
    if not np.isfinite(z).all():
        raise ConfigError("logits contain NaN or infinity")
    return z, y.astype(np.int64)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    z, y = _check(logits, labels)
    lp = log_softmax(z, temperature)
    return float(-lp[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, tol: float = 1e-6) -> float:
    """Fit the temperature ``T`` minimising the validation NLL of ``softmax(logits / T)``.

    Golden-section search over ``u = log(1/T)`` in ``[log(1/20), log(1/0.05)]``; the NLL is
    convex in ``1/T`` and hence unimodal in ``u``, so the search finds the global minimum
    (clipped to ``T`` in [0.05, 20]).

    Args:
        logits: float array (N, C) of uncalibrated logits.
        labels: int array (N,) of true class indices.
        tol: stop when the bracket in ``u`` is narrower than this.

    Returns:
        The temperature (``> 0``); divide logits by it before the softmax.

    Raises:
        ConfigError: mismatched shapes, no samples, labels out of range, non-finite logits.

    Example:
        >>> import numpy as np
        >>> z = np.array([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
        >>> round(fit_temperature(z, np.array([0, 1, 1, 0])), 2) > 1.0
        True
    """
    z, y = _check(logits, labels)
    idx = np.arange(len(y))

    def f(u: float) -> float:
        lp = log_softmax(z * math.exp(u))
        return float(-lp[idx, y].mean())

    a, b = math.log(1.0 / _T_MAX), math.log(1.0 / _T_MIN)
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = f(d)
    u = (a + b) / 2.0
    return float(1.0 / math.exp(u))


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 15
                     ) -> list[dict[str, float]]:
    """Equal-width bins of the top-1 probability (confidence).

    Returns:
        One dict per bin: ``lo``, ``hi``, ``count``, ``confidence`` (mean top-1 probability)
        and ``accuracy`` (fraction whose top-1 label is right); empty bins have count 0 and
        NaN means.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or len(p) != len(y):
        raise ConfigError(f"expected probabilities (N, C) and labels (N,), got {p.shape}, "
                          f"{y.shape}")
    if n_bins < 1:
        raise ConfigError(f"n_bins must be >= 1, got {n_bins}")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin i holds (edges[i], edges[i+1]]; confidence 0 cannot occur for a softmax
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    out = []
    for i in range(n_bins):
        m = which == i
        n = int(m.sum())
        out.append({
            "lo": float(edges[i]), "hi": float(edges[i + 1]), "count": n,
            "confidence": float(conf[m].mean()) if n else float("nan"),
            "accuracy": float(correct[m].mean()) if n else float("nan"),
        })
    return out


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               n_bins: int = 15) -> float:
    """ECE: the count-weighted mean of ``|accuracy - confidence|`` over equal-width bins of
    the top-1 probability (Guo et al., 2017)."""
    bins = reliability_bins(probabilities, labels, n_bins)
    total = sum(b["count"] for b in bins)
    if total == 0:
        raise ConfigError("no samples for the ECE")
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"])
                     for b in bins if b["count"]) / total)


@dataclass(frozen=True)
class ThresholdChoice:
    """A threshold reaching a target precision on the data it was chosen on.

    Attributes:
        threshold: predict positive when ``score >= threshold``.
        precision, recall: measured at that threshold.
        true_positives, false_positives, positives: counts at that threshold.
    """

    threshold: float
    precision: float
    recall: float
    true_positives: int
    false_positives: int
    positives: int


def threshold_for_precision(scores: np.ndarray, positive: np.ndarray, target: float
                            ) -> ThresholdChoice | None:
    """The lowest threshold (the highest recall) whose precision reaches ``target``.

    Candidate thresholds are the distinct scores; ``score >= t`` counts as predicted positive,
    so tied scores are always on the same side.

    Args:
        scores: float array (N,), e.g. a group's calibrated probability.
        positive: bool array (N,), the ground truth.
        target: the precision to reach, in (0, 1].

    Returns:
        The choice, or ``None`` when there are no positives or no threshold reaches ``target``.
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    if s.shape != pos.shape or s.ndim != 1:
        raise ConfigError(f"scores and positive must be 1-D of one length, got {s.shape}, "
                          f"{pos.shape}")
    if not 0.0 < target <= 1.0:
        raise ConfigError(f"target precision must be in (0, 1], got {target}")
    n_pos = int(pos.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-s, kind="stable")
    s_sorted, pos_sorted = s[order], pos[order]
    tp = np.cumsum(pos_sorted)
    fp = np.cumsum(~pos_sorted)
    # keep only the last index of each run of equal scores (ties go together)
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    tp, fp, thr = tp[last], fp[last], s_sorted[last]
    precision = tp / (tp + fp)
    ok = np.nonzero(precision >= target - 1e-12)[0]
    if len(ok) == 0:
        return None
    i = int(ok[-1])  # thresholds decrease along the array: the last ok one is the lowest
    return ThresholdChoice(
        threshold=float(thr[i]), precision=float(precision[i]),
        recall=float(tp[i] / n_pos), true_positives=int(tp[i]), false_positives=int(fp[i]),
        positives=n_pos,
    )


@dataclass(frozen=True)
class GroupThresholdReport:
    """How one group's thresholds were chosen (recorded in the model card)."""

    group: str
    thresholds: Thresholds
    positives: int
    flag: dict[str, Any]
    review: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, **self.thresholds.to_dict(), "positives": self.positives,
                "flag_choice": self.flag, "review_choice": self.review}


def _at(scores: np.ndarray, positive: np.ndarray, t: float) -> dict[str, Any]:
    predicted = scores >= t
    tp = int((predicted & positive).sum())
    fp = int((predicted & ~positive).sum())
    n_pos = int(positive.sum())
    return {"precision": round(tp / (tp + fp), 6) if tp + fp else None,
            "recall": round(tp / n_pos, 6) if n_pos else None,
            "true_positives": tp, "false_positives": fp}


def _describe(choice: ThresholdChoice | None, target: float, value: float, floor: float,
              reason_none: str, scores: np.ndarray, positive: np.ndarray) -> dict[str, Any]:
    """Where a threshold came from, with precision/recall measured at its final value."""
    d: dict[str, Any] = {"target_precision": target, "threshold": value}
    if choice is None:
        d.update(source="fallback", reason=reason_none)
    else:
        d["source"] = "validation"
        chosen = _round_down(choice.threshold)
        if value > chosen:
            d["note"] = f"raised from {chosen:.6f} to the floor {floor}"
        elif value < chosen:
            d["note"] = f"lowered from {chosen:.6f} to the flag threshold"
    d.update(_at(scores, positive, value))
    return d


def _round_down(t: float) -> float:
    """Round a threshold down to 6 decimals, so the scores it was chosen at stay above it."""
    return math.floor(t * 1e6) / 1e6


def choose_group_thresholds(
    group_probabilities: np.ndarray,
    true_groups: Sequence[str] | np.ndarray,
    groups: Sequence[str],
    *,
    flaggable: Sequence[str],
    flag_precision: float = DEFAULT_FLAG_PRECISION,
    review_precision: float = DEFAULT_REVIEW_PRECISION,
    fallback: Thresholds = FALLBACK_THRESHOLDS,
    min_flag: float = 0.0,
    min_review: float = 0.0,
) -> dict[str, GroupThresholdReport]:
    """``flag`` and ``review`` thresholds for each flaggable group, from validation data.

    For each flaggable group ``g`` in ``groups``, its probability column is scored against
    ``true_groups == g``. ``flag`` is the lowest threshold reaching ``flag_precision``,
    ``review`` the lowest reaching ``review_precision``, each raised to at least ``min_flag`` /
    ``min_review``. When a group has no validation positives, or a target cannot be reached,
    that threshold falls back to ``fallback`` (the report says which and why). ``review`` is
    finally capped at ``flag``.

    Args:
        group_probabilities: (N, G) calibrated group probabilities, columns in ``groups`` order.
        true_groups: the true group name of each row.
        groups: the column names.
        flaggable: which groups get thresholds (others are never flagged).
        flag_precision, review_precision: the target precisions.
        fallback: thresholds used where validation cannot choose.
        min_flag, min_review: floors for chosen thresholds.

    Returns:
        ``{group: GroupThresholdReport}`` for the flaggable groups in ``groups``.
    """
    gp = np.asarray(group_probabilities, dtype=np.float64)
    truth = np.asarray(true_groups, dtype=object)
    if gp.ndim != 2 or gp.shape[1] != len(groups) or len(truth) != len(gp):
        raise ConfigError(f"group_probabilities {gp.shape} does not match {len(groups)} groups "
                          f"and {len(truth)} rows")
    if not 0 < review_precision <= flag_precision <= 1:
        raise ConfigError("need 0 < review_precision <= flag_precision <= 1, got "
                          f"{review_precision}, {flag_precision}")
    out: dict[str, GroupThresholdReport] = {}
    for gi, g in enumerate(groups):
        if g not in flaggable:
            continue
        positive = truth == g
        n_pos = int(positive.sum())
        why = ("no validation images of this group" if n_pos == 0 else
               "target precision not reached at any threshold on validation")
        fc = threshold_for_precision(gp[:, gi], positive, flag_precision)
        rc = threshold_for_precision(gp[:, gi], positive, review_precision)
        flag = max(_round_down(fc.threshold), min_flag) if fc else fallback.flag
        review = max(_round_down(rc.threshold), min_review) if rc else fallback.review
        review = min(review, flag)
        th = Thresholds(flag=float(flag), review=float(review))
        col = gp[:, gi]
        out[g] = GroupThresholdReport(
            group=g, thresholds=th, positives=n_pos,
            flag=_describe(fc, flag_precision, th.flag, min_flag, why, col, positive),
            review=_describe(rc, review_precision, th.review, min_review, why, col, positive),
        )
    return out


def thresholds_from_reports(reports: Mapping[str, GroupThresholdReport]
                            ) -> dict[str, Thresholds]:
    """``{group: Thresholds}`` from :func:`choose_group_thresholds`'s reports."""
    return {g: r.thresholds for g, r in reports.items()}
