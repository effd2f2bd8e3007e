"""The open-set gate: is a photo like anything the model was trained on? Its score is the
photo's ``familiarity`` (numpy only).

A classifier trained on a closed set of labels must put every photo somewhere; a photo unlike
all training photos (a watch, a statue, a screenshot when no such thing was in training) can
land on ``ivory`` with a high calibrated probability. Measured on the reference data with
Caltech-101 held out of training, the fine-tuned model flagged 14% of the benign test photos,
most of them unseen object types called ivory.

The familiarity of a photo is the cosine similarity of its embedding to the most similar
training image (1-nearest neighbour, as in Sun et al. 2022, "Out-of-distribution detection with
deep nearest neighbors"), computed in a 256-dimensional projection of the embedding (the top
right-singular vectors of the training embeddings, uncentred) so that the reference set ships
in a few MB. Each flaggable group has its own threshold, chosen on validation: the ``quantile``
(default 1%) of the scores of the validation images the model correctly flags in that group
(one pooled threshold would be set by the group with the most similar training photos: live
big cats sit far closer to their neighbours than museum ivory does). A flag of a group on a
photo below that group's threshold becomes ``review``: a person still sees it, but it no
longer jumps the queue.

The package file ``familiarity.npz`` holds ``projection`` (d x D float32) and ``references``
(N x d float16, unit rows); the card's ``extra["familiarity"]`` holds the per-group
``thresholds`` and how they were chosen (edit them there to move the gate; ``-1`` switches a
group's gate off).
:mod:`wildvision.predict` applies it; ``wildvision export familiarity`` builds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import ConfigError, ModelIntegrityError
from .scores import unit_rows

__all__ = [
    "FAMILIARITY_FILE",
    "Familiarity",
    "OpenSetGate",
    "build_familiarity",
    "build_gate",
    "load_familiarity",
    "load_gate",
]

FAMILIARITY_FILE = "familiarity.npz"


_BLAS: Any = None


def _one_blas_thread() -> AbstractContextManager[Any]:
    """The gate's two small matmuls run on one BLAS thread. Left to itself OpenBLAS runs them
    on every core and its threads then spin-wait, taking the CPU from ONNX Runtime's model
    runs: measured on 2 cores, 66 images/s with the gate against 110 without it; with one
    BLAS thread 106 against 112 (benchmarks/open_set_cost.py)."""
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS = ThreadpoolController()
        except Exception:  # threadpoolctl missing or unable to inspect: run as is
            _BLAS = False
    if _BLAS is False:
        return nullcontext()
    return _BLAS.limit(limits=1, user_api="blas")  # type: ignore[no-any-return]


@dataclass(frozen=True)
class OpenSetGate:
    """The reference set and the threshold of the open-set gate."""

    projection: NDArray[np.float32]   # (d, D)
    references: NDArray[np.float16]   # (N, d), unit rows
    thresholds: Mapping[str, float]   # per flaggable group; a group not listed is not gated

    def __post_init__(self) -> None:
        # float32 copy once (7,330 x 256: 7.5 MB), not per batch
        object.__setattr__(self, "_refs32", np.ascontiguousarray(self.references,
                                                                 dtype=np.float32))

    def score(self, embeddings: NDArray[np.floating], chunk: int = 256) -> NDArray[np.float32]:
        """Cosine similarity of each embedding (rows, D wide) to its nearest reference,
        in [-1, 1]; higher is more familiar. The float16 references are unit vectors only to
        within their rounding, so a raw dot product can exceed 1 by ~1e-4: scores are clipped
        to [-1, 1], the range a cosine has."""
        e = np.atleast_2d(np.asarray(embeddings, dtype=np.float32))
        if e.shape[1] != self.projection.shape[1]:
            raise ConfigError(f"familiarity: embeddings are {e.shape[1]} wide, the reference "
                              f"set expects {self.projection.shape[1]}")
        refs: NDArray[np.float32] = self._refs32  # type: ignore[attr-defined]
        out = np.empty(len(e), dtype=np.float32)
        with _one_blas_thread():
            z = unit_rows(unit_rows(e) @ self.projection.T)
            for i in range(0, len(z), chunk):
                out[i:i + chunk] = (z[i:i + chunk] @ refs.T).max(axis=1)
        np.clip(out, -1.0, 1.0, out=out)
        return out

    def below(self, score: float, group: str) -> bool:
        """The gate's rule: ``score`` is under ``group``'s threshold (never, for an ungated
        group), so a flag of that group becomes review."""
        t = self.thresholds.get(group)
        return t is not None and score < t

    def is_familiar(self, embeddings: NDArray[np.floating], group: str) -> NDArray[np.bool_]:
        """Whether each embedding passes ``group``'s gate (always, for an ungated group)."""
        return np.array([not self.below(float(s), group) for s in self.score(embeddings)],
                        dtype=bool)

    def save(self, path: str | Path) -> None:
        """Write the arrays (the threshold lives in the card, where it can be read)."""
        with open(path, "wb") as f:
            np.savez(f, projection=self.projection.astype(np.float32),
                     references=self.references.astype(np.float16))


def load_gate(path: str | Path, thresholds: Mapping[str, float]) -> OpenSetGate:
    """Read ``familiarity.npz`` (plain arrays only: loaded with ``allow_pickle=False``)."""
    try:
        with np.load(path, allow_pickle=False) as d:
            proj = np.asarray(d["projection"], dtype=np.float32)
            refs = np.asarray(d["references"], dtype=np.float16)
    except (OSError, KeyError, ValueError) as e:
        raise ModelIntegrityError(f"{path}: not a familiarity file ({e})") from e
    if proj.ndim != 2 or refs.ndim != 2 or refs.shape[1] != proj.shape[0] or not len(refs):
        raise ModelIntegrityError(f"{path}: projection {proj.shape} and references "
                                  f"{refs.shape} do not fit together")
    return OpenSetGate(proj, refs, dict(thresholds))


def build_gate(train_embeddings: NDArray[np.floating],
               positives: Mapping[str, NDArray[np.floating]], *, dims: int = 256,
               quantile: float = 0.01) -> tuple[OpenSetGate, dict[str, object]]:
    """Build the gate from the training images' embeddings and, per flaggable group, the
    embeddings of the validation images the model correctly flags in it (``positives``; a
    group without any is not gated).

    Returns the gate and a record (thresholds, quantile, dims, counts) for the card.
    """
    x = unit_rows(train_embeddings)
    if x.ndim != 2 or len(x) < 2:
        raise ConfigError("familiarity: need at least 2 training embeddings")
    if not any(len(v) for v in positives.values()):
        raise ConfigError("familiarity: no correctly flagged validation image to set a "
                          "threshold on")
    if not 0.0 <= quantile < 1.0:
        raise ConfigError(f"familiarity: quantile must be in [0, 1), got {quantile}")
    d = int(min(dims, x.shape[0], x.shape[1]))
    # uncentred: cosine geometry around the origin is what the similarity uses
    _u, _s, vt = np.linalg.svd(x, full_matrices=False)
    proj = np.ascontiguousarray(vt[:d], dtype=np.float32)
    refs = unit_rows(x @ proj.T).astype(np.float16)
    gate = OpenSetGate(proj, refs, {})
    thresholds = {g: round(float(np.quantile(gate.score(v), quantile)), 6)
                  for g, v in positives.items() if len(v)}
    record: dict[str, object] = {
        "thresholds": thresholds, "quantile": quantile, "dims": d, "references": len(refs),
        "validation_positives": {g: len(v) for g, v in positives.items()}}
    return OpenSetGate(proj, refs, thresholds), record


# The names these had before the concept got one name (the open-set gate; ``familiarity`` is
# its score): kept so that existing code keeps working.
Familiarity = OpenSetGate
load_familiarity = load_gate
build_familiarity = build_gate
