"""A torch ``Dataset`` over a manifest split (the ``[train]`` extra).

Each item is decoded exactly as at inference — :func:`wildvision.imaging.decode_image` with
``draft_size=cfg.draft_size`` — then either

* ``transform(uint8 HxWx3 array) -> uint8 HxWx3 array`` (training augmentation, e.g. an
  albumentations pipeline that ends at ``cfg.input_size``), then
  :func:`wildvision.preprocess.normalize`; or, without a transform,
* :func:`wildvision.preprocess.preprocess_image` (the evaluation path, identical to
  inference).

torch is imported only in this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import DataError, MissingExtraError, WildvisionError
from ..imaging import decode_image
from ..preprocess import PreprocessConfig, normalize, preprocess_image
from .manifest import Manifest, ManifestRow

try:
    import torch
    from torch.utils.data import Dataset
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise MissingExtraError("torch", "train", "wildvision.data.torch_dataset") from e

__all__ = ["ManifestDataset"]

Transform = Callable[[np.ndarray], np.ndarray]


class ManifestDataset(Dataset[tuple[Any, int]]):
    """Images of a manifest (optionally one split) as ``(float32 CxHxW tensor, label index)``.

    Args:
        manifest: the manifest; rows with an ``error`` (known unreadable) are left out and
            counted in :attr:`skipped_unreadable`.
        labels: the label list; a row's index is ``labels.index(row.<label_field>)``.
        cfg: the model's preprocessing config.
        split: keep only this split (``train``/``val``/``test``), or ``None`` for all rows.
        transform: optional augmentation on the uint8 RGB array (see the module docstring).
        label_field: ``fine_label`` (default) or ``group``.

    Raises:
        DataError: a row's label is not in ``labels`` (all listed), or no rows remain.

    Example:
        >>> ds = ManifestDataset(read_manifest("manifest.csv"), card.labels, cfg,
        ...                      split="train", transform=augment)  # doctest: +SKIP
    """

    def __init__(self, manifest: Manifest, labels: Sequence[str], cfg: PreprocessConfig,
                 split: str | None = None, transform: Transform | None = None,
                 label_field: str = "fine_label") -> None:
        if label_field not in ("fine_label", "group", "label"):
            raise DataError(f"label_field must be fine_label, group or label, not "
                            f"{label_field!r}")
        m = manifest.split(split) if split is not None else manifest
        self.manifest = m
        self.labels = tuple(labels)
        self.cfg = cfg
        self.transform = transform
        self.label_field = label_field
        index = {lab: k for k, lab in enumerate(self.labels)}
        rows = [r for r in m.rows if r.readable]
        self.skipped_unreadable = len(m.rows) - len(rows)
        unknown = sorted({getattr(r, label_field) for r in rows} - set(index))
        if unknown:
            raise DataError(f"{len(unknown)} {label_field}(s) of the manifest are not in the "
                            f"label list: {', '.join(repr(u) for u in unknown)}")
        if not rows:
            raise DataError(f"no readable rows{f' in split {split!r}' if split else ''}")
        self.rows: tuple[ManifestRow, ...] = tuple(rows)
        self.targets: list[int] = [index[getattr(r, label_field)] for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def load_array(self, i: int) -> np.ndarray:
        """The float32 CxHxW model input of item ``i`` (no torch).

        Raises:
            DataError: the file cannot be read or decoded, or the transform fails; the message
                names the file.
        """
        row = self.rows[i]
        path = self.manifest.abs_path(row)
        try:
            img = decode_image(path, draft_size=self.cfg.draft_size).image
        except WildvisionError as e:
            raise DataError(f"{path}: cannot load training image: {e}") from e
        if self.transform is None:
            return preprocess_image(img, self.cfg)
        try:
            arr = self.transform(np.asarray(img))
            return normalize(np.ascontiguousarray(arr), self.cfg)
        except Exception as e:
            raise DataError(f"{path}: transform failed: {type(e).__name__}: {e}") from e

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return torch.from_numpy(self.load_array(i)), self.targets[i]

    def class_counts(self) -> list[int]:
        """Images per label index (e.g. for class-balanced sampling or loss weights)."""
        counts = [0] * len(self.labels)
        for t in self.targets:
            counts[t] += 1
        return counts
