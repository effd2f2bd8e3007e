"""The extension bank: a compact, labelled set of a model's training and validation embeddings
that travels in its package, so that the model can be extended with new labels later without
the training photos and without torch (:mod:`wildvision.extend`).

The package file ``bank.npz`` holds plain arrays (read with ``allow_pickle=False``):

* ``projection`` (d x D float32, orthonormal rows): the stored embeddings are ``projection @ e``.
  Its rows span the model's head (so the model's own logits are exactly reproducible from the
  stored rows) and, when the package has an open-set gate, the gate's projection (so the
  familiarity of every stored row can be recomputed), topped up with the leading directions of
  the training embeddings.
* ``embeddings`` (N x d float16): the projected embeddings.
* ``labels`` (N int16): index into ``label_names``; ``label_names`` (unicode): the fine labels.
* ``splits`` (N uint8): 0 training row, 1 validation row.
* ``head_weight`` (C x d float32), ``head_bias`` (C float32): the model's head on the projected
  embedding (logits = ``embeddings @ head_weight.T + head_bias``), in the order of the card's
  labels.

The card's ``extra["bank"]`` records how it was built (manifest, its sha256, counts, size).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .errors import ConfigError, ModelIntegrityError
from .modelpack import ModelPackage
from .scores import unit_rows

if TYPE_CHECKING:
    from .imaging import ImageSource
    from .predict import Classifier

__all__ = [
    "BANK_FILE",
    "Bank",
    "EmbeddedImages",
    "ImageFailure",
    "bank_projection",
    "build_bank",
    "embed_images",
    "label_counts",
    "load_bank",
    "package_bank",
]

BANK_FILE = "bank.npz"
TRAIN, VAL = 0, 1


@dataclass(frozen=True)
class ImageFailure:
    """An input that could not be embedded (kept, listed, never fatal for the batch)."""

    index: int
    source: str
    error_type: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "source": self.source, "error_type": self.error_type,
                "message": self.message}


@dataclass(frozen=True)
class EmbeddedImages:
    """The model outputs of the inputs that worked, and the inputs that did not.

    ``index[i]`` is the input position of row ``i`` of ``embeddings`` and ``logits``.
    """

    index: NDArray[np.int64]
    embeddings: NDArray[np.float32]
    logits: NDArray[np.float32]
    failures: tuple[ImageFailure, ...] = field(default=())


def embed_images(clf: Classifier, sources: Sequence[ImageSource], *, batch_size: int = 16,
                 progress: Callable[[int, int], None] | None = None) -> EmbeddedImages:
    """Run ``clf``'s model on every input and keep its ``embedding`` and ``logits`` outputs
    as arrays (the logits of a package with a numpy head are the head's).

    Decoding uses ``clf``'s decode threads and preprocessing; an unreadable input becomes an
    :class:`ImageFailure` and the rest go on.

    Raises:
        ConfigError: the model has no ``embedding`` output.
    """
    if "embedding" not in clf.backend.output_names:
        raise ConfigError(f"model {clf.card.name} has no 'embedding' output "
                          f"(outputs: {', '.join(clf.backend.output_names)})")
    n = len(sources)
    idx: list[int] = []
    embs: list[NDArray[np.float32]] = []
    logs: list[NDArray[np.float32]] = []
    fails: list[ImageFailure] = []
    with ThreadPoolExecutor(clf.decode_workers, thread_name_prefix="wv-embed") as pool:
        for start in range(0, n, batch_size):
            chunk = list(pool.map(lambda i: clf._prepare(i, sources[i]),
                                  range(start, min(n, start + batch_size))))
            ok = [p for p in chunk if p.error is None]
            for p in chunk:
                if p.error is not None:
                    fails.append(ImageFailure(p.index, p.source, type(p.error).__name__,
                                              str(p.error)))
            if ok:
                out = clf.predict_arrays(np.stack([p.tensor for p in ok]))  # type: ignore[misc]
                idx += [p.index for p in ok]
                embs.append(np.asarray(out["embedding"], dtype=np.float32))
                logs.append(np.asarray(out["logits"], dtype=np.float32))
            if progress is not None:
                progress(min(n, start + batch_size), n)
    width = int(embs[0].shape[1]) if embs else 0
    return EmbeddedImages(
        index=np.asarray(idx, dtype=np.int64),
        embeddings=np.concatenate(embs) if embs else np.zeros((0, width), np.float32),
        logits=np.concatenate(logs) if logs else np.zeros((0, len(clf.card.labels)),
                                                          np.float32),
        failures=tuple(fails),
    )


@dataclass(frozen=True)
class Bank:
    """The arrays of ``bank.npz`` (see the module docstring)."""

    projection: NDArray[np.float32]    # (d, D), orthonormal rows
    embeddings: NDArray[np.float16]    # (N, d)
    labels: NDArray[np.int16]          # (N,), into label_names
    label_names: tuple[str, ...]
    splits: NDArray[np.uint8]          # (N,), TRAIN or VAL
    train_counts: NDArray[np.int64]    # (L,), training rows per label before any subsampling
    head_weight: NDArray[np.float32]   # (C, d), the model's head on the projected embedding
    head_bias: NDArray[np.float32]     # (C,)

    def __post_init__(self) -> None:
        n, d = self.embeddings.shape if self.embeddings.ndim == 2 else (-1, -1)
        ok = (self.projection.ndim == 2 and self.projection.shape[0] == d
              and self.labels.shape == (n,) and self.splits.shape == (n,)
              and self.train_counts.shape == (len(self.label_names),)
              and self.head_weight.ndim == 2 and self.head_weight.shape[1] == d
              and self.head_bias.shape == (self.head_weight.shape[0],)
              and (n == 0 or (int(self.labels.min()) >= 0
                              and int(self.labels.max()) < len(self.label_names))))
        if not ok:
            raise ModelIntegrityError(
                f"bank: arrays do not fit together (projection {self.projection.shape}, "
                f"embeddings {self.embeddings.shape}, labels {self.labels.shape}, splits "
                f"{self.splits.shape}, {len(self.label_names)} label names, head "
                f"{self.head_weight.shape})")

    @property
    def dims(self) -> int:
        return int(self.projection.shape[0])

    @property
    def width(self) -> int:
        """Width of the model's embedding (``D``)."""
        return int(self.projection.shape[1])

    def project(self, embeddings: NDArray[np.floating]) -> NDArray[np.float32]:
        """Full-width embeddings (rows) -> the bank's projected space."""
        e = np.asarray(embeddings, dtype=np.float32)
        if e.ndim != 2 or e.shape[1] != self.width:
            raise ConfigError(f"bank: embeddings {e.shape} are not {self.width} wide")
        out: NDArray[np.float32] = e @ self.projection.T
        return out

    def rows(self, split: int) -> tuple[NDArray[np.float32], list[str]]:
        """The projected embeddings (float32) and fine labels of one split."""
        m = self.splits == split
        return (self.embeddings[m].astype(np.float32),
                [self.label_names[int(i)] for i in self.labels[m]])

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in (self.projection, self.embeddings, self.labels,
                                          self.splits, self.head_weight, self.head_bias)))

    def save(self, path: str | Path) -> None:
        """Write ``bank.npz`` (compressed plain arrays; no pickles)."""
        with open(path, "wb") as f:
            np.savez_compressed(
                f, projection=self.projection.astype(np.float32),
                embeddings=self.embeddings.astype(np.float16),
                labels=self.labels.astype(np.int16),
                label_names=np.array(self.label_names, dtype=str),
                splits=self.splits.astype(np.uint8),
                train_counts=self.train_counts.astype(np.int64),
                head_weight=self.head_weight.astype(np.float32),
                head_bias=self.head_bias.astype(np.float32))


def load_bank(path: str | Path) -> Bank:
    """Read ``bank.npz`` (plain arrays only: ``allow_pickle=False``).

    Raises:
        ModelIntegrityError: not a bank file, or arrays that do not fit together.
    """
    try:
        with np.load(path, allow_pickle=False) as d:
            return Bank(
                projection=np.asarray(d["projection"], np.float32),
                embeddings=np.asarray(d["embeddings"], np.float16),
                labels=np.asarray(d["labels"], np.int16),
                label_names=tuple(str(s) for s in d["label_names"]),
                splits=np.asarray(d["splits"], np.uint8),
                train_counts=np.asarray(d["train_counts"], np.int64),
                head_weight=np.asarray(d["head_weight"], np.float32),
                head_bias=np.asarray(d["head_bias"], np.float32))
    except (OSError, KeyError, ValueError) as e:
        raise ModelIntegrityError(f"{path}: not a bank file ({e})") from e


def package_bank(package: ModelPackage) -> Bank | None:
    """The extension bank of ``package``, ``None`` when it has none."""
    if BANK_FILE not in package.card.files:
        return None
    return load_bank(package.file(BANK_FILE))


def bank_projection(train_embeddings: NDArray[np.floating], head_weight: NDArray[np.floating],
                    *, dims: int = 256, keep: NDArray[np.floating] | None = None
                    ) -> NDArray[np.float32]:
    """Orthonormal rows spanning ``keep`` (e.g. the open-set gate's projection, which already
    holds the leading directions of the training embeddings) or else the ``dims`` leading
    right-singular vectors of the unit training embeddings, plus the head's rows."""
    x = np.asarray(train_embeddings, dtype=np.float64)
    if keep is not None:
        basis = np.asarray(keep, dtype=np.float64)
    else:
        u = unit_rows(x).astype(np.float64)
        _u, _s, vt = np.linalg.svd(u, full_matrices=False)
        basis = vt[: min(dims, len(vt))]
    q, _r = np.linalg.qr(basis.T)  # orthonormalise what was given (no-op for SVD rows)
    basis = q.T
    w = np.asarray(head_weight, dtype=np.float64)
    resid = w - (w @ basis.T) @ basis
    _u2, s2, vt2 = np.linalg.svd(resid, full_matrices=False)
    extra = vt2[s2 > 1e-6 * max(float(s2.max(initial=0.0)), 1e-12)]
    out = np.vstack([basis, extra]) if len(extra) else basis
    return np.ascontiguousarray(out, dtype=np.float32)


def _cap_rows(labels: NDArray[np.int64], splits: NDArray[np.uint8], budget_rows: int,
              seed: int) -> NDArray[np.int64]:
    """Indices kept when the rows must fit ``budget_rows``: every validation row, and per
    label at most ``m`` training rows, ``m`` the largest cap that fits (a deterministic
    random subset of each larger label)."""
    n = len(labels)
    if n <= budget_rows:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    val = np.nonzero(splits == VAL)[0]
    room = budget_rows - len(val)
    if room <= 0:
        raise ConfigError(f"bank: the {len(val)} validation rows alone exceed the size budget")
    by_label: dict[int, NDArray[np.int64]] = {}
    for lab in np.unique(labels[splits == TRAIN]):
        idx = np.nonzero((labels == lab) & (splits == TRAIN))[0]
        by_label[int(lab)] = rng.permutation(idx)
    lo, hi = 0, max(len(v) for v in by_label.values())
    while lo < hi:  # largest cap m with sum(min(len, m)) <= room
        mid = (lo + hi + 1) // 2
        if sum(min(len(v), mid) for v in by_label.values()) <= room:
            lo = mid
        else:
            hi = mid - 1
    train = [v[:lo] for v in by_label.values()]
    return np.sort(np.concatenate([val, *train]))


def build_bank(embeddings: NDArray[np.floating], labels: Sequence[str], splits: Sequence[str],
               card_labels: Sequence[str], head: tuple[NDArray[np.floating],
                                                       NDArray[np.floating]],
               *, keep: NDArray[np.floating] | None = None, dims: int = 256,
               max_bytes: int = 10_000_000, seed: int = 0) -> tuple[Bank, dict[str, Any]]:
    """Build the bank from full-width embeddings of training and validation images.

    Args:
        embeddings: (N, D) embeddings from the model's ``embedding`` output.
        labels: the fine label of each row (any names: labels the model does not have are
            kept too, e.g. a platform's negatives).
        splits: ``"train"`` or ``"val"`` per row.
        card_labels: the model's labels, in logit order.
        head: the model's head on the full embedding (``W`` (C, D), ``b`` (C,)).
        keep: directions the projection must span (the open-set gate's projection).
        dims: leading directions when ``keep`` is not given.
        max_bytes: size budget of the arrays; training rows of the largest labels are
            subsampled (deterministically) to fit, validation rows are all kept.

    Returns:
        The bank and a record for the card.
    """
    e = np.asarray(embeddings, dtype=np.float32)
    if e.ndim != 2 or len(e) != len(labels) or len(e) != len(splits):
        raise ConfigError(f"bank: {e.shape} embeddings for {len(labels)} labels and "
                          f"{len(splits)} splits")
    bad = sorted({s for s in splits if s not in ("train", "val")})
    if bad:
        raise ConfigError(f"bank: splits must be 'train' or 'val', got {bad}")
    split_arr = np.array([TRAIN if s == "train" else VAL for s in splits], dtype=np.uint8)
    if not (split_arr == TRAIN).any() or not (split_arr == VAL).any():
        raise ConfigError("bank: needs training and validation rows")
    w, b = (np.asarray(head[0], np.float32), np.asarray(head[1], np.float32))
    if w.shape != (len(card_labels), e.shape[1]) or b.shape != (len(card_labels),):
        raise ConfigError(f"bank: head {w.shape} does not fit {len(card_labels)} labels on "
                          f"{e.shape[1]}-wide embeddings")
    names = tuple(dict.fromkeys([*card_labels, *labels]))
    lab_idx = np.array([names.index(x) for x in labels], dtype=np.int64)
    train_counts = np.bincount(lab_idx[split_arr == TRAIN], minlength=len(names))
    proj = bank_projection(e[split_arr == TRAIN], w, dims=dims, keep=keep)
    per_row = proj.shape[0] * 2 + 2 + 1
    fixed = proj.nbytes + w.shape[0] * proj.shape[0] * 4 + b.nbytes
    budget_rows = max(0, (max_bytes - fixed) // per_row)
    kept = _cap_rows(lab_idx, split_arr, int(budget_rows), seed)
    bank = Bank(
        projection=proj,
        embeddings=(e[kept] @ proj.T).astype(np.float16),
        labels=lab_idx[kept].astype(np.int16),
        label_names=names,
        splits=split_arr[kept],
        train_counts=train_counts.astype(np.int64),
        head_weight=np.ascontiguousarray(w @ proj.T, dtype=np.float32),
        head_bias=b,
    )
    # the head on the projected rows reproduces the model's logits (up to float16 storage)
    full = e[kept] @ w.T + b
    approx = bank.embeddings.astype(np.float32) @ bank.head_weight.T + bank.head_bias
    record: dict[str, Any] = {
        "file": BANK_FILE,
        "dims": bank.dims,
        "width": bank.width,
        "rows": {"train": int((bank.splits == TRAIN).sum()),
                 "val": int((bank.splits == VAL).sum())},
        "images": {"train": int((split_arr == TRAIN).sum()), "val": int((split_arr == VAL).sum())},
        "subsampled": bool(len(kept) < len(e)),
        "labels": len(names),
        "max_bytes": int(max_bytes),
        "array_bytes": bank.nbytes(),
        "head_max_abs_diff": round(float(np.abs(full - approx).max()), 6) if len(kept) else 0.0,
        "projection": ("the open-set gate's projection plus the head's rows"
                       if keep is not None else
                       f"the {dims} leading directions of the training embeddings plus the "
                       "head's rows"),
    }
    return bank, record


def label_counts(bank: Bank, split: int) -> Mapping[str, int]:
    """Rows per fine label in one split of the bank."""
    m = bank.splits == split
    counts = np.bincount(bank.labels[m].astype(np.int64), minlength=len(bank.label_names))
    return {n: int(c) for n, c in zip(bank.label_names, counts, strict=True) if c}
