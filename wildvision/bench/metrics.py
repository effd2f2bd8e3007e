"""Classification metrics in numpy, with sample weights so one code path gives both the point
estimate and vectorised bootstrap resamples.

Every ``*_w`` function takes a weight matrix ``W`` of shape ``(B, n)``: row ``b`` holds how many
times each of the ``n`` items appears in resample ``b`` (``np.ones((1, n))`` is the data itself).
It returns one value per row. :func:`bootstrap_weights` yields such matrices in chunks, so a
thousand resamples cost a few matrix operations instead of a thousand Python loops.

Conventions (they match scikit-learn's, with ``zero_division=np.nan``):

* precision ``tp / (tp + fp)`` is NaN when nothing is predicted positive;
* recall ``tp / (tp + fn)`` is NaN when there are no positives;
* F1 ``2 tp / (2 tp + fp + fn)`` is NaN only when both are empty (no positives, no predictions);
* average precision is NaN without positives; ROC-AUC is NaN unless both classes are present;
* ties in scores are one threshold (all tied items cross it together), as in scikit-learn.

NaN becomes ``null`` in ``metrics.json``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BinaryCurve",
    "Estimate",
    "accuracy_w",
    "average_precision",
    "balanced_accuracy",
    "bootstrap",
    "bootstrap_weights",
    "confusion_matrix",
    "confusion_w",
    "expected_calibration_error",
    "macro_f1",
    "precision_recall_curve",
    "precision_recall_f1",
    "prf_from_confusion",
    "recall_at_precision",
    "reliability_bins",
    "roc_auc",
    "roc_curve",
]

NDArray = np.ndarray


def _div(num: NDArray, den: NDArray) -> NDArray:
    """``num / den`` with NaN where ``den == 0`` (no warnings)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _ones(n: int) -> NDArray:
    return np.ones((1, n), dtype=np.float64)


def _weights(w: NDArray | None, n: int) -> NDArray:
    if w is None:
        return _ones(n)
    w = np.asarray(w, dtype=np.float64)
    if w.ndim == 1:
        w = w[None, :]
    if w.shape[1] != n:
        raise ValueError(f"weights have {w.shape[1]} columns for {n} items")
    return w


# -- counts, confusion matrices ---------------------------------------------------------------
def confusion_w(y_true: NDArray, y_pred: NDArray, n_classes: int, w: NDArray | None = None
                ) -> NDArray:
    """Weighted confusion matrices, shape ``(B, n_classes, n_classes)``; rows are true classes.

    Args:
        y_true, y_pred: integer class indices in ``[0, n_classes)``, shape ``(n,)``.
        n_classes: size of the class space.
        w: ``(B, n)`` weights (``None``: one row of ones).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    n = y_true.shape[0]
    W = _weights(w, n)
    B = W.shape[0]
    k2 = n_classes * n_classes
    pair = y_true * n_classes + y_pred
    flat = (np.arange(B, dtype=np.int64)[:, None] * k2 + pair[None, :]).ravel()
    cm = np.bincount(flat, weights=W.ravel(), minlength=B * k2)
    return cm.reshape(B, n_classes, n_classes)


def confusion_matrix(y_true: Sequence[int] | NDArray, y_pred: Sequence[int] | NDArray,
                     n_classes: int) -> NDArray:
    """Confusion matrix of integer labels (rows true, columns predicted), as int64."""
    cm: NDArray = confusion_w(np.asarray(y_true), np.asarray(y_pred), n_classes)[0]
    return cm.astype(np.int64)


def prf_from_confusion(cm: NDArray) -> dict[str, NDArray]:
    """Per-class precision, recall, F1, support and predicted count from confusion matrices.

    Args:
        cm: ``(K, K)`` or ``(B, K, K)``.

    Returns:
        Arrays of shape ``(K,)`` or ``(B, K)``, NaN where undefined (see module docstring).
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support = cm.sum(axis=-1)
    predicted = cm.sum(axis=-2)
    return {
        "precision": _div(tp, predicted),
        "recall": _div(tp, support),
        "f1": _div(2 * tp, support + predicted),
        "support": support,
        "predicted": predicted,
    }


def _nanmean(x: NDArray, axis: int = -1) -> NDArray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out: NDArray = np.asarray(np.nanmean(x, axis=axis))
    return out


def macro_f1(cm: NDArray, classes: Sequence[int] | NDArray | None = None) -> NDArray:
    """Mean F1 over ``classes`` (default: classes with support in each matrix).

    Equals ``sklearn.metrics.f1_score(y, p, labels=classes, average="macro")``. A class whose F1
    is undefined in a resample (no support and no predictions) is left out of that mean.
    """
    f1 = prf_from_confusion(cm)["f1"]
    if classes is None:
        support = np.asarray(cm).sum(axis=-1)
        f1 = np.where(support > 0, f1, np.nan)
    else:
        f1 = f1[..., np.asarray(classes, dtype=np.int64)]
    return _nanmean(f1)


def balanced_accuracy(cm: NDArray, classes: Sequence[int] | NDArray | None = None) -> NDArray:
    """Mean recall over the classes present in the truth (``sklearn.metrics.
    balanced_accuracy_score``); restricted to ``classes`` when given."""
    recall = prf_from_confusion(cm)["recall"]
    if classes is not None:
        recall = recall[..., np.asarray(classes, dtype=np.int64)]
    return _nanmean(recall)


def accuracy_w(correct: NDArray, w: NDArray | None = None) -> NDArray:
    """Weighted share of ``correct`` (bool ``(n,)``) per weight row; NaN for an empty set."""
    correct = np.asarray(correct, dtype=np.float64)
    W = _weights(w, correct.shape[0])
    return _div(W @ correct, W.sum(axis=1))


def precision_recall_f1(y_true: NDArray, y_pred: NDArray, w: NDArray | None = None
                        ) -> dict[str, NDArray]:
    """Binary precision, recall, F1 (plus tp/fp/fn/tn) per weight row.

    Args:
        y_true, y_pred: booleans, shape ``(n,)``.
    """
    t = np.asarray(y_true, dtype=bool)
    p = np.asarray(y_pred, dtype=bool)
    W = _weights(w, t.shape[0])
    tp = W @ (t & p).astype(np.float64)
    fp = W @ (~t & p).astype(np.float64)
    fn = W @ (t & ~p).astype(np.float64)
    tn = W @ (~t & ~p).astype(np.float64)
    return {
        "precision": _div(tp, tp + fp),
        "recall": _div(tp, tp + fn),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }


# -- ranking metrics ---------------------------------------------------------------------------
class BinaryCurve:
    """A score ranking of binary labels, sorted once; weighted PR/ROC statistics from it.

    Args:
        y_true: booleans ``(n,)`` (positive class).
        score: higher means more positive ``(n,)``; must be finite.
    """

    def __init__(self, y_true: NDArray, score: NDArray) -> None:
        y = np.asarray(y_true, dtype=bool)
        s = np.asarray(score, dtype=np.float64)
        if y.shape != s.shape or y.ndim != 1:
            raise ValueError(f"y_true and score must be 1-D of the same length, got {y.shape} "
                             f"and {s.shape}")
        if not np.all(np.isfinite(s)):
            raise ValueError("scores must be finite")
        order = np.argsort(-s, kind="mergesort")
        self.n = y.shape[0]
        self._order = order
        self._y = y[order].astype(np.float64)
        s_sorted = s[order]
        # the last index of each run of tied scores: a threshold takes a whole tie at once
        self._ends = np.r_[np.flatnonzero(np.diff(s_sorted)), self.n - 1] if self.n else \
            np.zeros(0, dtype=np.int64)
        self.thresholds = s_sorted[self._ends]

    def counts(self, w: NDArray | None = None) -> tuple[NDArray, NDArray]:
        """Weighted true- and false-positive counts at each distinct threshold (descending),
        each ``(B, T)``."""
        W = _weights(w, self.n)[:, self._order]
        tps = np.cumsum(W * self._y, axis=1)[:, self._ends]
        fps = np.cumsum(W * (1.0 - self._y), axis=1)[:, self._ends]
        return tps, fps

    def ap_auc(self, w: NDArray | None = None) -> tuple[NDArray, NDArray]:
        """:meth:`average_precision` and :meth:`roc_auc` from one pass over the weights."""
        c = self.counts(w)
        return self.average_precision(counts=c), self.roc_auc(counts=c)

    def average_precision(self, w: NDArray | None = None,
                          counts: tuple[NDArray, NDArray] | None = None) -> NDArray:
        """Average precision ``sum_k (R_k - R_{k-1}) P_k`` (scikit-learn's, no interpolation)."""
        tps, fps = counts if counts is not None else self.counts(w)
        if tps.shape[1] == 0:
            return np.full(tps.shape[0], np.nan)
        pos = tps[:, -1:]
        precision = np.nan_to_num(_div(tps, tps + fps))  # 0/0 only where the recall step is 0
        recall = _div(tps, pos)
        steps = np.diff(recall, axis=1, prepend=0.0)
        ap = np.sum(steps * precision, axis=1)
        ap[pos[:, 0] == 0] = np.nan
        return np.asarray(ap)

    def roc_auc(self, w: NDArray | None = None,
                counts: tuple[NDArray, NDArray] | None = None) -> NDArray:
        """Area under the ROC curve (trapezoids; ties count half); NaN unless both classes."""
        tps, fps = counts if counts is not None else self.counts(w)
        if tps.shape[1] == 0:
            return np.full(tps.shape[0], np.nan)
        tpr = np.concatenate([np.zeros((tps.shape[0], 1)), _div(tps, tps[:, -1:])], axis=1)
        fpr = np.concatenate([np.zeros((fps.shape[0], 1)), _div(fps, fps[:, -1:])], axis=1)
        auc = np.sum(np.diff(fpr, axis=1) * (tpr[:, 1:] + tpr[:, :-1]) / 2.0, axis=1)
        return np.asarray(auc)  # NaN rows stay NaN (a class missing)

    def recall_at_precision(self, target: float, w: NDArray | None = None
                            ) -> tuple[NDArray, NDArray]:
        """Highest recall over thresholds whose precision is ``>= target``, and that threshold.

        Returns:
            ``(recall, threshold)``, each ``(B,)``: recall 0 and threshold NaN when no
            threshold reaches the precision; both NaN without positives.
        """
        tps, fps = self.counts(w)
        B = tps.shape[0]
        if tps.shape[1] == 0:
            return np.full(B, np.nan), np.full(B, np.nan)
        precision = _div(tps, tps + fps)
        recall = _div(tps, tps[:, -1:])
        ok = np.nan_to_num(precision, nan=-1.0) >= target
        cand = np.where(ok, np.nan_to_num(recall, nan=-1.0), -1.0)
        # highest recall; among equal recalls the highest threshold (first index) is kept
        best = np.argmax(cand, axis=1)
        rec = cand[np.arange(B), best]
        thr = np.where(rec >= 0, self.thresholds[best], np.nan)
        rec = np.where(rec >= 0, rec, 0.0)
        no_pos = tps[:, -1] == 0
        rec[no_pos] = np.nan
        thr[no_pos] = np.nan
        return rec, thr

    def pr_curve(self) -> tuple[NDArray, NDArray, NDArray]:
        """Precision, recall and thresholds at each distinct threshold, highest threshold first
        (scikit-learn's ``precision_recall_curve`` reversed, without its final (1, 0) point)."""
        tps, fps = self.counts()
        precision = np.nan_to_num(_div(tps[0], tps[0] + fps[0]))
        recall = _div(tps[0], tps[0, -1]) if tps.shape[1] else np.zeros(0)
        return precision, recall, self.thresholds.copy()

    def roc(self) -> tuple[NDArray, NDArray, NDArray]:
        """False- and true-positive rates at each distinct threshold, highest threshold first."""
        tps, fps = self.counts()
        return _div(fps[0], fps[0, -1]), _div(tps[0], tps[0, -1]), self.thresholds.copy()


def average_precision(y_true: NDArray, score: NDArray) -> float:
    """Average precision (area under the step PR curve); NaN without positives."""
    return float(BinaryCurve(y_true, score).average_precision()[0])


def roc_auc(y_true: NDArray, score: NDArray) -> float:
    """ROC-AUC; NaN unless both classes are present."""
    return float(BinaryCurve(y_true, score).roc_auc()[0])


def precision_recall_curve(y_true: NDArray, score: NDArray) -> tuple[NDArray, NDArray, NDArray]:
    """See :meth:`BinaryCurve.pr_curve`."""
    return BinaryCurve(y_true, score).pr_curve()


def roc_curve(y_true: NDArray, score: NDArray) -> tuple[NDArray, NDArray, NDArray]:
    """See :meth:`BinaryCurve.roc`."""
    return BinaryCurve(y_true, score).roc()


def recall_at_precision(y_true: NDArray, score: NDArray, target: float
                        ) -> tuple[float, float]:
    """Highest recall with precision ``>= target`` and its score threshold (see
    :meth:`BinaryCurve.recall_at_precision`)."""
    r, t = BinaryCurve(y_true, score).recall_at_precision(target)
    return float(r[0]), float(t[0])


# -- calibration -------------------------------------------------------------------------------
def _bin_index(confidence: NDArray, n_bins: int) -> NDArray:
    # bins (k/n, (k+1)/n], 0 in the first: the same edges as sklearn's calibration_curve
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], np.asarray(confidence, dtype=np.float64))


def expected_calibration_error(confidence: NDArray, correct: NDArray, n_bins: int = 15,
                               w: NDArray | None = None) -> NDArray:
    """Expected calibration error: ``sum_b (n_b / n) |accuracy_b - confidence_b|`` over
    ``n_bins`` equal-width bins of the confidence.

    Args:
        confidence: probabilities in [0, 1], ``(n,)``.
        correct: booleans (or 0/1 outcomes), ``(n,)``.
        n_bins: number of bins (15 by default, as in Guo et al. 2017).
        w: ``(B, n)`` weights.

    Returns:
        ``(B,)`` ECE values, NaN for an empty set.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    corr = np.asarray(correct, dtype=np.float64)
    W = _weights(w, conf.shape[0])
    onehot = np.zeros((conf.shape[0], n_bins))
    onehot[np.arange(conf.shape[0]), _bin_index(conf, n_bins)] = 1.0
    gap = W @ (onehot * (corr - conf)[:, None])
    return _div(np.abs(gap).sum(axis=1), W.sum(axis=1))


def reliability_bins(confidence: NDArray, correct: NDArray, n_bins: int = 15
                     ) -> list[dict[str, float | int | None]]:
    """Per-bin count, mean confidence and accuracy (``None`` for empty bins): the data of a
    reliability diagram."""
    conf = np.asarray(confidence, dtype=np.float64)
    corr = np.asarray(correct, dtype=np.float64)
    idx = _bin_index(conf, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    count = np.bincount(idx, minlength=n_bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_corr = np.bincount(idx, weights=corr, minlength=n_bins)
    out: list[dict[str, float | int | None]] = []
    for b in range(n_bins):
        c = int(count[b])
        out.append({
            "lo": float(edges[b]),
            "hi": float(edges[b + 1]),
            "count": c,
            "mean_confidence": float(sum_conf[b] / c) if c else None,
            "accuracy": float(sum_corr[b] / c) if c else None,
        })
    return out


# -- bootstrap ---------------------------------------------------------------------------------
def bootstrap_weights(n: int, n_resamples: int, seed: int, max_cells: int = 2_000_000
                      ) -> Iterator[NDArray]:
    """Yield ``(b, n)`` count matrices of resampling ``n`` items with replacement, ``n_resamples``
    rows in all, in chunks of at most ``max_cells`` cells. Deterministic for (n, n_resamples,
    seed)."""
    if n <= 0 or n_resamples <= 0:
        return
    rng = np.random.default_rng(seed)
    chunk = max(1, max_cells // n)
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        idx = rng.integers(0, n, size=(b, n))
        flat = (np.arange(b, dtype=np.int64)[:, None] * n + idx).ravel()
        yield np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)
        done += b


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap percentile interval (NaN when undefined)."""

    value: float
    lo: float
    hi: float
    valid_resamples: int

    def to_dict(self) -> dict[str, float | list[float | None] | None]:
        return {"value": _num(self.value), "ci95": [_num(self.lo), _num(self.hi)]}


def _num(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def bootstrap(stat: Callable[[NDArray], Mapping[str, NDArray]], n: int, *,
              n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
              ) -> dict[str, Estimate]:
    """Point estimates and percentile bootstrap intervals of several statistics at once.

    Args:
        stat: maps a ``(B, n)`` weight matrix to ``{name: (B,) array}``.
        n: number of items.
        n_resamples: bootstrap resamples (0: intervals are NaN).
        seed: random seed (results are reproducible for the same data and seed).
        confidence: interval level.

    Returns:
        ``{name: Estimate}``; a resample where a statistic is undefined (NaN) is left out of its
        interval, and the interval is NaN if fewer than half the resamples define it.
    """
    point = {k: np.asarray(v, dtype=np.float64) for k, v in stat(_ones(n)).items()}
    samples: dict[str, list[NDArray]] = {k: [] for k in point}
    for W in bootstrap_weights(n, n_resamples, seed):
        for k, v in stat(W).items():
            samples[k].append(np.asarray(v, dtype=np.float64))
    alpha = (1.0 - confidence) / 2.0
    out: dict[str, Estimate] = {}
    for k, p in point.items():
        value = float(p.reshape(-1)[0])
        if samples[k]:
            s = np.concatenate(samples[k])
            s = s[np.isfinite(s)]
        else:
            s = np.zeros(0)
        if s.size and s.size >= n_resamples / 2:
            lo, hi = np.quantile(s, [alpha, 1.0 - alpha])
        else:
            lo = hi = np.nan
        out[k] = Estimate(value, float(lo), float(hi), int(s.size))
    return out
