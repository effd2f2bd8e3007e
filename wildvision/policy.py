"""Threshold policy: flag and review thresholds from a review budget and a flag precision.

A platform staffs its review queue for a number of photos a day, not for a precision. So the
``review`` thresholds of a model follow from a **review budget**: the share of benign photos
that may be sent to a person (``review`` or a gated flag), and the ``flag`` thresholds from a
**flag precision** target on photos of the flaggable groups:

* ``flag`` of each flaggable group: the lowest threshold whose precision on the calibration
  photos reaches ``flag_precision`` (:func:`wildvision.calibration.threshold_for_precision`);
  a group with too few positives keeps the thresholds it had.
* ``review``: one tail share ``q`` for every flaggable group (each group's review threshold is
  its benign photos' ``1 - q`` quantile, never above its flag threshold); ``q`` is the largest
  for which the share of benign photos whose decision is ``review`` stays within the budget.
  The open-set gate (a flag on an unfamiliar photo becomes ``review``) spends from the same
  budget: its reviews are counted first.

Everything here is numpy on arrays of calibrated group probabilities, so a platform re-derives
thresholds for its own budget from its own labelled photos without retraining
(``wildvision calibrate``, :mod:`wildvision.calibrate`), and the decision rule is the one
:class:`wildvision.predict.Classifier` applies (:func:`decide`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .calibration import threshold_for_precision
from .errors import ConfigError
from .modelpack import Thresholds

__all__ = [
    "FLAG",
    "PASS",
    "REVIEW",
    "PolicyResult",
    "ReviewPolicy",
    "decide",
    "derive_thresholds",
    "tradeoff_curve",
]

PASS, REVIEW, FLAG = 0, 1, 2

DEFAULT_BUDGETS: tuple[float, ...] = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


@dataclass(frozen=True)
class ReviewPolicy:
    """What the thresholds must achieve (recorded in the card as ``policy``).

    Attributes:
        review_budget: share of benign photos that may go to ``review`` (0.02 = 2 %).
        flag_precision: precision a ``flag`` of each group must reach on the calibration data.
        min_positives: a group's flag threshold is only re-derived from at least this many
            photos of it; otherwise it keeps its current one.
        min_flag: floor of a derived flag threshold: a calibrated probability under it never
            flags, however clean the calibration photos are (0.5, as training uses).
    """

    review_budget: float = 0.02
    flag_precision: float = 0.95
    min_positives: int = 20
    min_flag: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.review_budget < 1.0:
            raise ConfigError(f"review budget must be in [0, 1), got {self.review_budget}")
        if not 0.0 < self.flag_precision <= 1.0:
            raise ConfigError(f"flag precision must be in (0, 1], got {self.flag_precision}")
        if self.min_positives < 1:
            raise ConfigError(f"min_positives must be >= 1, got {self.min_positives}")
        if not 0.0 <= self.min_flag <= 1.0:
            raise ConfigError(f"min_flag must be in [0, 1], got {self.min_flag}")

    def to_dict(self) -> dict[str, Any]:
        return {"review_budget": self.review_budget, "flag_precision": self.flag_precision,
                "min_positives": self.min_positives, "min_flag": self.min_flag}


@dataclass(frozen=True)
class PolicyResult:
    """Thresholds chosen for a policy, and what they do on the calibration data."""

    policy: ReviewPolicy
    thresholds: dict[str, Thresholds]
    benign: int
    benign_review_share: float
    benign_flag_share: float
    tail_share: float
    budget_met: bool
    flag_choice: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.policy.to_dict(),
            "thresholds": {g: t.to_dict() for g, t in self.thresholds.items()},
            "benign_photos": self.benign,
            "benign_review_share": round(self.benign_review_share, 6),
            "benign_flag_share": round(self.benign_flag_share, 6),
            "tail_share": round(self.tail_share, 6),
            "budget_met": self.budget_met,
            "flag_choice": self.flag_choice,
            "notes": list(self.notes),
        }


def _check(gp: NDArray[Any], groups: Sequence[str]) -> NDArray[np.float64]:
    arr = np.asarray(gp, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != len(groups):
        raise ConfigError(f"group probabilities of shape {arr.shape} do not match "
                          f"{len(groups)} groups")
    return arr


def decide(group_probabilities: NDArray[Any], groups: Sequence[str],
           thresholds: Mapping[str, Thresholds], *,
           gated: NDArray[np.bool_] | None = None) -> NDArray[np.int8]:
    """The decision of each row (``PASS``/``REVIEW``/``FLAG``), as the classifier makes it.

    Args:
        group_probabilities: (N, G) calibrated group probabilities, columns in ``groups`` order.
        groups: column names; only groups in ``thresholds`` can flag or review.
        thresholds: per flaggable group.
        gated: optional (N, G) bool, True where the open-set gate turns that group's flag
            into review (the photo is unfamiliar for that group).
    """
    gp = _check(group_probabilities, groups)
    out = np.zeros(len(gp), dtype=np.int8)
    for gi, g in enumerate(groups):
        th = thresholds.get(g)
        if th is None:
            continue
        col = gp[:, gi]
        flag = col >= th.flag
        review = (col >= th.review) & ~flag
        if gated is not None:
            review |= flag & gated[:, gi]
            flag &= ~gated[:, gi]
        d = np.where(flag, FLAG, np.where(review, REVIEW, PASS)).astype(np.int8)
        np.maximum(out, d, out=out)
    return out


def _review_at(gp: NDArray[np.float64], groups: Sequence[str], flags: Mapping[str, float],
               quantiles: Mapping[str, NDArray[np.float64]], q: float,
               gated: NDArray[np.bool_] | None) -> tuple[dict[str, Thresholds], float, float]:
    th = {}
    for g, f in flags.items():
        sorted_scores = quantiles[g]
        if q <= 0 or len(sorted_scores) == 0:
            r = f
        else:
            k = min(len(sorted_scores) - 1, int(np.floor((1.0 - q) * len(sorted_scores))))
            # above the k-th smallest benign score, on a 1e-6 grid (so that recomputing a
            # score in another order of float operations cannot move it across)
            r = (np.floor(float(sorted_scores[k]) * 1e6) + 1) / 1e6
        th[g] = Thresholds(flag=f, review=min(max(r, 0.0), f))
    d = decide(gp, groups, th, gated=gated)
    return th, float(np.mean(d == REVIEW)) if len(d) else 0.0, (
        float(np.mean(d == FLAG)) if len(d) else 0.0)


def derive_thresholds(
    group_probabilities: NDArray[Any],
    true_groups: Sequence[str] | NDArray[Any],
    groups: Sequence[str],
    current: Mapping[str, Thresholds],
    policy: ReviewPolicy,
    *,
    gated: NDArray[np.bool_] | None = None,
    benign_group: str = "benign",
) -> PolicyResult:
    """Thresholds of every group in ``current`` that meet ``policy`` on labelled photos.

    Args:
        group_probabilities: (N, G) calibrated group probabilities of the calibration photos.
        true_groups: each photo's true group.
        groups: the column names of ``group_probabilities``.
        current: the model's thresholds now (flaggable groups); flag thresholds of groups with
            fewer than ``policy.min_positives`` photos are kept.
        policy: the review budget and flag precision.
        gated: (N, G) True where the open-set gate would turn that group's flag into review.
        benign_group: the group whose photos the budget counts.

    Raises:
        ConfigError: no benign photos, or shapes that do not match.
    """
    gp = _check(group_probabilities, groups)
    truth = np.asarray(true_groups, dtype=object)
    if len(truth) != len(gp):
        raise ConfigError(f"{len(truth)} true groups for {len(gp)} rows")
    if gated is not None and np.asarray(gated).shape != gp.shape:
        raise ConfigError(f"gated has shape {np.asarray(gated).shape}, expected {gp.shape}")
    benign = truth == benign_group
    if not benign.any():
        raise ConfigError("the calibration photos hold no benign photo: a review budget is a "
                          "share of benign photos")
    notes: list[str] = []
    flags: dict[str, float] = {}
    choice: dict[str, dict[str, Any]] = {}
    for g, th in current.items():
        if g not in groups:
            flags[g] = th.flag
            continue
        gi = list(groups).index(g)
        pos = truth == g
        n_pos = int(pos.sum())
        c = threshold_for_precision(gp[:, gi], pos, policy.flag_precision) if (
            n_pos >= policy.min_positives) else None
        if c is None:
            flags[g] = th.flag
            why = (f"{n_pos} photos of this group (< {policy.min_positives})"
                   if n_pos < policy.min_positives else
                   f"precision {policy.flag_precision} not reached at any threshold")
            choice[g] = {"kept": th.flag, "why": why, "positives": n_pos}
        else:
            flags[g] = max(float(np.floor(c.threshold * 1e6) / 1e6), policy.min_flag)
            choice[g] = {"threshold": flags[g], "precision_at_lowest": round(c.precision, 6),
                         "lowest": round(c.threshold, 6), "recall_at_lowest": round(c.recall, 6),
                         "positives": n_pos, "floor": policy.min_flag}
    idx = [list(groups).index(g) if g in groups else -1 for g in flags]
    bgp = gp[benign]
    bgated = gated[benign] if gated is not None else None
    quantiles = {g: np.sort(bgp[:, i]) if i >= 0 else np.zeros(0)
                 for g, i in zip(flags, idx, strict=True)}
    chosen, share, fshare = _review_at(bgp, groups, flags, quantiles, 0.0, bgated)
    best = (chosen, share, fshare, 0.0)
    if share > policy.review_budget:
        notes.append(f"the open-set gate alone sends {share:.2%} of the benign photos to review, "
                     f"over the budget of {policy.review_budget:.2%}: review band left empty")
    else:
        lo, hi = 0.0, 1.0
        for _ in range(50):
            mid = (lo + hi) / 2
            th_m, s_m, f_m = _review_at(bgp, groups, flags, quantiles, mid, bgated)
            if s_m <= policy.review_budget:
                lo, best = mid, (th_m, s_m, f_m, mid)
            else:
                hi = mid
    chosen, share, fshare, q = best
    return PolicyResult(policy=policy, thresholds=chosen, benign=int(benign.sum()),
                        benign_review_share=share, benign_flag_share=fshare, tail_share=q,
                        budget_met=share <= policy.review_budget, flag_choice=choice,
                        notes=tuple(notes))


def tradeoff_curve(
    group_probabilities: NDArray[Any],
    true_groups: Sequence[str] | NDArray[Any],
    groups: Sequence[str],
    current: Mapping[str, Thresholds],
    *,
    flag_precision: float = 0.95,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    gated: NDArray[np.bool_] | None = None,
    evaluate: Sequence[tuple[str, NDArray[Any], Sequence[str] | NDArray[Any],
                             NDArray[np.bool_] | None]] = (),
) -> list[dict[str, Any]]:
    """Flag recall and review share against the review budget.

    For each budget, thresholds are derived on the calibration photos (as
    :func:`derive_thresholds`) and measured there and on each ``evaluate`` set
    ``(name, group_probabilities, true_groups, gated)``: the share of its benign photos sent to
    review and flagged, and of its photos of flaggable groups, the share flagged (flag recall)
    and the share flagged or reviewed (seen by a person).
    """
    rows = []
    sets = [("calibration", group_probabilities, true_groups, gated), *evaluate]
    for b in budgets:
        res = derive_thresholds(group_probabilities, true_groups, groups, current,
                                ReviewPolicy(review_budget=b, flag_precision=flag_precision),
                                gated=gated)
        row: dict[str, Any] = {"review_budget": b,
                               "thresholds": {g: t.to_dict() for g, t in res.thresholds.items()}}
        for name, gp, truth, gt in sets:
            row[name] = measure(gp, truth, groups, res.thresholds, gated=gt)
        rows.append(row)
    return rows


def measure(group_probabilities: NDArray[Any], true_groups: Sequence[str] | NDArray[Any],
            groups: Sequence[str], thresholds: Mapping[str, Thresholds], *,
            gated: NDArray[np.bool_] | None = None) -> dict[str, Any]:
    """Shares of benign photos reviewed / flagged and of flaggable photos flagged / seen."""
    gp = _check(group_probabilities, groups)
    truth = np.asarray(true_groups, dtype=object)
    d = decide(gp, groups, thresholds, gated=gated)
    benign = truth == "benign"
    positive = np.isin(truth, [g for g in thresholds])
    out: dict[str, Any] = {"benign": int(benign.sum()), "positives": int(positive.sum())}
    if benign.any():
        out["benign_review_share"] = round(float(np.mean(d[benign] == REVIEW)), 6)
        out["benign_flag_share"] = round(float(np.mean(d[benign] == FLAG)), 6)
    if positive.any():
        out["flag_recall"] = round(float(np.mean(d[positive] == FLAG)), 6)
        out["seen_recall"] = round(float(np.mean(d[positive] >= REVIEW)), 6)
    return out
