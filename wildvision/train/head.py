"""A linear head on fixed embeddings: multinomial logistic regression fitted with L-BFGS
(torch, float64, full batch), the ``--head-only`` fast path.

Embeddings are standardised for the fit (mean/std of the training set) and the
standardisation is folded back into the weights, so the result is a plain ``Linear`` layer on
the raw embedding — the model's own head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..scores import log_softmax
from .metrics import macro_f1

__all__ = ["HeadFit", "class_weights", "fit_linear_head"]


@dataclass
class HeadFit:
    """The fitted head and how it was chosen.

    Attributes:
        weight: (C, D) float32, for ``logits = emb @ weight.T + bias``.
        bias: (C,) float32.
        l2: the chosen L2 strength.
        trials: per tried L2: validation macro-F1 and NLL.
    """

    weight: np.ndarray
    bias: np.ndarray
    l2: float
    trials: list[dict[str, float]] = field(default_factory=list)


def class_weights(y: np.ndarray, n_classes: int, power: float = 1.0) -> np.ndarray:
    """Per-class loss weights ``count ** -power``, scaled so the mean weight per sample is 1."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, np.maximum(counts, 1.0) ** -power, 0.0)
    w *= len(y) / max(float((w[y]).sum()), 1e-12)
    out: np.ndarray = w
    return out


def _fit_one(z: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float,
             weights: torch.Tensor | None, max_iter: int,
             init: tuple[torch.Tensor, torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    d = z.shape[1]
    if init is None:
        w = torch.zeros(n_classes, d, dtype=z.dtype, requires_grad=True)
        b = torch.zeros(n_classes, dtype=z.dtype, requires_grad=True)
    else:  # warm start from the previous (stronger-L2) solution
        w = init[0].clone().requires_grad_(True)
        b = init[1].clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-7,
                            tolerance_change=1e-10, history_size=20,
                            line_search_fn="strong_wolfe")
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss: torch.Tensor = loss_fn(z @ w.T + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    return w.detach(), b.detach()


def fit_linear_head(x_train: np.ndarray, y_train: np.ndarray, n_classes: int,
                    x_val: np.ndarray | None, y_val: np.ndarray | None, *,
                    l2_grid: Sequence[float] = (1e-3, 1e-2, 1e-1),
                    max_iter: int = 100, balance: str = "loss") -> HeadFit:
    """Fit ``softmax(emb @ W.T + b)`` with L2 on standardised embeddings.

    With validation data, every L2 in ``l2_grid`` is fitted (strongest first, each warm-starting
    the next) and the best validation macro-F1 wins (ties: lower NLL); without, the middle of
    the grid is used.

    Args:
        x_train, y_train: training embeddings (N, D) and labels (N,).
        n_classes: number of classes.
        x_val, y_val: validation embeddings and labels, or ``None``.
        l2_grid: L2 strengths to try.
        max_iter: L-BFGS iterations.
        balance: ``loss`` weights classes by inverse frequency; ``none`` does not.

    Returns:
        The head, in raw-embedding space.
    """
    x = np.asarray(x_train, dtype=np.float64)
    mu = x.mean(axis=0)
    sd = x.std(axis=0) + 1e-6
    # float32 for large problems (the fit is matmul-bound); float64 otherwise
    dtype = np.float32 if x.size > 2_000_000 else np.float64
    z = torch.from_numpy(((x - mu) / sd).astype(dtype))
    y = torch.from_numpy(np.asarray(y_train, dtype=np.int64))
    cw = (torch.from_numpy(class_weights(np.asarray(y_train), n_classes).astype(dtype))
          if balance == "loss" else None)
    has_val = x_val is not None and y_val is not None and len(y_val) > 0
    # strongest L2 first: each fit warm-starts the next, weaker one
    grid = sorted(l2_grid, reverse=True) if has_val else [sorted(l2_grid)[len(l2_grid) // 2]]
    best: tuple[float, float] | None = None
    chosen: tuple[torch.Tensor, torch.Tensor, float] | None = None
    trials: list[dict[str, Any]] = []
    prev: tuple[torch.Tensor, torch.Tensor] | None = None
    for l2 in grid:
        w, b = _fit_one(z, y, n_classes, float(l2), cw, max_iter, prev)
        prev = (w, b)
        if has_val:
            zv = (np.asarray(x_val, dtype=np.float64) - mu) / sd
            logits = zv @ w.double().numpy().T + b.double().numpy()
            yv = np.asarray(y_val, dtype=np.int64)
            f1 = macro_f1(yv, logits.argmax(axis=1), n_classes)
            nll = float(-log_softmax(logits)[np.arange(len(yv)), yv].mean())
            trials.append({"l2": float(l2), "val_macro_f1": round(f1, 6),
                           "val_nll": round(nll, 6)})
            score = (f1, -nll)
            if best is None or score > best:
                best, chosen = score, (w, b, float(l2))
        else:
            chosen = (w, b, float(l2))
    assert chosen is not None
    w, b, l2 = chosen
    weight = w.double().numpy() / sd  # fold the standardisation back in
    bias = b.double().numpy() - weight @ mu
    return HeadFit(weight.astype(np.float32), bias.astype(np.float32), l2, trials)
