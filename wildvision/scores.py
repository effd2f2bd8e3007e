"""The arithmetic every path shares on model outputs, written once: softmax (calibrated
probabilities), the label -> group matrix (group probabilities) and the L2 normalisation of
embeddings (cosine similarities). numpy only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["group_matrix", "log_softmax", "softmax", "unit_rows"]


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``log(softmax(logits / temperature))`` in float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    out: np.ndarray = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return out


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(logits / temperature)`` in float64."""
    out: np.ndarray = np.exp(log_softmax(logits, temperature))
    return out


def group_matrix(labels: Sequence[str], label_groups: Mapping[str, str],
                 groups: Sequence[str] | None = None) -> NDArray[np.float64]:
    """The ``(len(labels), len(groups))`` 0/1 matrix of which group each fine label is in:
    ``probabilities @ group_matrix(...)`` sums each group's fine-label probabilities, and
    ``group_matrix(...).argmax(1)`` maps a label index to its group index.

    Args:
        labels: the fine labels, in the model's output order.
        label_groups: label -> group.
        groups: the groups, in the order of the matrix's columns (default: the order in which
            ``labels`` first reach them).

    Raises:
        KeyError: a label without a group, or a group not in ``groups``.
    """
    if groups is None:
        groups = list(dict.fromkeys(label_groups[lab] for lab in labels))
    col = {g: j for j, g in enumerate(groups)}
    m = np.zeros((len(labels), len(groups)), dtype=np.float64)
    for i, lab in enumerate(labels):
        m[i, col[label_groups[lab]]] = 1.0
    return m


def unit_rows(x: NDArray[Any]) -> NDArray[np.float32]:
    """Rows scaled to unit L2 norm, in float32 (a 1-D vector becomes one row); zero rows stay
    zero."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    out: NDArray[np.float32] = x / np.maximum(n, np.float32(1e-12))
    return out
