"""Multinomial logistic regression in numpy (no torch, no scipy): the extended head.

The objective, for rows ``x_i`` with labels ``y_i`` and sample weights ``s_i``::

    sum_i s_i * CE(W x_i + b, y_i) / sum_i s_i  +  l2 / 2 * ||W - W0||^2

``W0`` is the warm start: the base model's head for its own labels and zero for new labels.
Only some rows of ``W`` may move (``trainable``: in an extension, the new labels and the base
labels that got new photos); the others keep the base model's weights, and every label's bias
moves. A strong ``l2`` keeps the moving rows near ``W0``, a weak one lets the new data move
them. Minimised with L-BFGS (two-loop recursion, backtracking line search).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from ..errors import ConfigError
from ..scores import log_softmax

__all__ = ["HeadFit", "balanced_weights", "fit_head", "fit_softmax", "weighted_nll"]


def balanced_weights(y: NDArray[np.integer], counts: NDArray[np.floating],
                     power: float = 0.5) -> NDArray[np.float64]:
    """Sample weights giving label ``c`` a total weight proportional to ``counts[c] ** (1 -
    power)`` (``power`` 0: natural frequencies, 1: every label equal), where ``counts`` are
    the label's true training counts (a subsampled label's rows weigh more). Mean weight 1."""
    y = np.asarray(y, dtype=np.int64)
    present = np.bincount(y, minlength=len(counts)).astype(np.float64)
    c = np.maximum(np.asarray(counts, dtype=np.float64), present)
    per_row = np.where(present > 0, c ** (1.0 - power) / np.maximum(present, 1.0), 0.0)
    w = per_row[y]
    out: NDArray[np.float64] = w * (len(w) / max(float(w.sum()), 1e-12))
    return out


def weighted_nll(logits: NDArray[np.floating], y: NDArray[np.integer],
                 weights: NDArray[np.floating] | None = None) -> float:
    lp = log_softmax(np.asarray(logits, dtype=np.float64))
    nll = -lp[np.arange(len(y)), np.asarray(y, dtype=np.int64)]
    if weights is None:
        return float(nll.mean())
    w = np.asarray(weights, dtype=np.float64)
    return float((w * nll).sum() / max(float(w.sum()), 1e-12))


def fit_softmax(x: NDArray[np.floating], y: NDArray[np.integer], weights: NDArray[np.floating],
                w0: NDArray[np.floating], b0: NDArray[np.floating], l2: float, *,
                trainable: Sequence[int] | None = None,
                init: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None,
                max_iter: int = 300, tol: float = 1e-6, memory: int = 10
                ) -> tuple[NDArray[np.float64], NDArray[np.float64], int]:
    """Minimise the objective of the module docstring; returns ``W``, ``b`` and the
    iterations used. Only the rows ``trainable`` of ``W`` move (default: all), every bias
    does; the other rows stay at ``w0``, so their logits are computed once. ``init``
    (default ``(w0, b0)``) is the starting point."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    s = np.asarray(weights, dtype=np.float64)
    s = s / s.sum()
    w0 = np.asarray(w0, dtype=np.float64)
    c, d = w0.shape
    rows = np.arange(c) if trainable is None else np.asarray(sorted(set(trainable)), np.int64)
    if len(rows) == 0:
        raise ConfigError("fit_softmax: no trainable rows")
    fixed = np.setdiff1d(np.arange(c), rows)
    start_w = np.asarray(init[0] if init is not None else w0, dtype=np.float64)
    z = np.empty((len(x), c))
    if len(fixed):
        z[:, fixed] = x @ start_w[fixed].T
    w0_rows = w0[rows]
    k = len(rows)
    onehot = np.zeros((len(y), c))
    onehot[np.arange(len(y)), y] = 1.0

    def f_g(theta: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        w = theta[: k * d].reshape(k, d)
        b = theta[k * d:]
        z[:, rows] = x @ w.T
        lp = log_softmax(z + b)
        loss = float(-(s * (lp * onehot).sum(axis=1)).sum())
        dw = w - w0_rows
        loss += 0.5 * l2 * float((dw * dw).sum())
        g = (np.exp(lp) - onehot) * s[:, None]
        gw = g[:, rows].T @ x + l2 * dw
        gb = g.sum(axis=0)
        return loss, np.concatenate([gw.ravel(), gb])

    start_b = np.asarray(init[1] if init is not None else b0, dtype=np.float64)
    theta = np.concatenate([start_w[rows].ravel(), start_b])
    loss, g = f_g(theta)
    s_hist: list[NDArray[np.float64]] = []
    y_hist: list[NDArray[np.float64]] = []
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
        # two-loop recursion: direction = -H g
        q = g.copy()
        alphas = []
        for sv, yv in zip(reversed(s_hist), reversed(y_hist), strict=True):
            a = float(sv @ q) / float(yv @ sv)
            alphas.append(a)
            q -= a * yv
        if s_hist:
            q *= float(s_hist[-1] @ y_hist[-1]) / float(y_hist[-1] @ y_hist[-1])
        else:
            q *= 1.0 / max(float(np.abs(g).max()), 1e-12)
        for (sv, yv), a in zip(zip(s_hist, y_hist, strict=True), reversed(alphas),
                               strict=True):
            bcoef = float(yv @ q) / float(yv @ sv)
            q += (a - bcoef) * sv
        direction = -q
        slope = float(g @ direction)
        if slope >= 0:  # not a descent direction: restart from the gradient
            s_hist.clear()
            y_hist.clear()
            direction = -g / max(float(np.abs(g).max()), 1e-12)
            slope = float(g @ direction)
        step = 1.0
        while True:
            new = theta + step * direction
            new_loss, new_g = f_g(new)
            if new_loss <= loss + 1e-4 * step * slope or step < 1e-10:
                break
            step *= 0.5
        sv, yv = new - theta, new_g - g
        if float(sv @ yv) > 1e-12:
            s_hist.append(sv)
            y_hist.append(yv)
            if len(s_hist) > memory:
                s_hist.pop(0)
                y_hist.pop(0)
        done = abs(loss - new_loss) <= tol * max(1.0, abs(loss)) or step < 1e-10
        theta, loss, g = new, new_loss, new_g
        if done or float(np.abs(g).max()) < tol:
            break
    w_out = start_w.copy()
    w_out[rows] = theta[: k * d].reshape(k, d)
    return w_out, theta[k * d:], it


@dataclass
class HeadFit:
    """The chosen head and how it was chosen.

    Attributes:
        weight, bias: the head (``logits = x @ weight.T + bias``), float64.
        l2: the chosen strength.
        trials: per tried strength: validation NLL (weighted as in training) and iterations.
    """

    weight: NDArray[np.float64]
    bias: NDArray[np.float64]
    l2: float
    trials: list[dict[str, float]] = field(default_factory=list)


def fit_head(x_train: NDArray[np.floating], y_train: NDArray[np.integer],
             w_train: NDArray[np.floating], x_val: NDArray[np.floating],
             y_val: NDArray[np.integer], w_val: NDArray[np.floating],
             w0: NDArray[np.floating], b0: NDArray[np.floating], *,
             trainable: Sequence[int] | None = None,
             l2_grid: Sequence[float] = (1.0, 0.1, 0.01, 0.001), max_iter: int = 300
             ) -> HeadFit:
    """Fit one head per ``l2`` (strongest first, each warm-started from the one before) and
    keep the one with the lowest weighted validation NLL. ``trainable``: the rows that move
    (default all; see :func:`fit_softmax`)."""
    if not l2_grid or any(v < 0 for v in l2_grid):
        raise ConfigError(f"l2 strengths must be >= 0, got {list(l2_grid)}")
    best: HeadFit | None = None
    best_nll = np.inf
    trials: list[dict[str, float]] = []
    init = None
    for l2 in sorted(l2_grid, reverse=True):
        w, b, iters = fit_softmax(x_train, y_train, w_train, w0, b0, l2, init=init,
                                  trainable=trainable, max_iter=max_iter)
        init = (w, b)
        nll = weighted_nll(np.asarray(x_val, np.float64) @ w.T + b, y_val, w_val)
        trials.append({"l2": float(l2), "val_nll": round(nll, 6), "iterations": iters})
        if nll < best_nll:
            best_nll, best = nll, HeadFit(w, b, float(l2))
    assert best is not None
    best.trials = trials
    return best
