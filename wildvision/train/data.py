"""The training data: a manifest checked against a recipe, and torch datasets over it.

:func:`prepare_data` validates everything before any training starts and raises ONE
:class:`~wildvision.errors.DataError` listing every problem (missing files, unknown labels,
empty classes, rows without a label or split ...).

Images always go through the core path: :func:`wildvision.imaging.decode_image` with the
preprocessing's ``draft_size``, then either :func:`wildvision.preprocess.preprocess_image`
(validation, test, embeddings: byte-for-byte what inference does) or the albumentations
augmentation on the uint8 image followed by :func:`wildvision.preprocess.normalize`
(training).
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.manifest import Manifest, ManifestRow, read_manifest
from ..errors import DataError, WildvisionError
from ..imaging import decode_image
from ..modelpack import sha256_file
from ..preprocess import PreprocessConfig, normalize, resize_crop
from ..taxonomy import FINE_LABELS, GROUP_NAMES, FineLabel, fine_label, register_label
from .recipe import AugmentConfig, Recipe

__all__ = [
    "EvalDataset",
    "Sample",
    "TrainData",
    "TrainDataset",
    "build_augmentation",
    "file_sha256",
    "load_eval_array",
    "prepare_data",
]

_MAX_LISTED = 10


@dataclass(frozen=True)
class Sample:
    """One usable image."""

    path: Path
    label: int
    sha256: str
    source: str
    group: str
    row: ManifestRow  # the manifest row as used: fine_label and split after merges/auto split


@dataclass
class TrainData:
    """Checked data for a run.

    Attributes:
        labels: class names in model output order.
        label_groups: group of each label.
        new_labels: labels not in the built-in taxonomy, with their group.
        train, val, test: samples per split (test may be empty).
        manifest: the manifest read.
        notes: facts worth recording in the card (skipped rows, automatic split ...).
        auto_split: whether validation was carved out of train by :func:`prepare_data`.
    """

    labels: tuple[str, ...]
    label_groups: dict[str, str]
    new_labels: dict[str, str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    manifest: Manifest
    notes: list[str] = field(default_factory=list)
    auto_split: bool = False

    def counts(self, split: str) -> dict[str, int]:
        """Images per label in ``split`` (labels in output order, zeros included)."""
        c = Counter(self.labels[s.label] for s in getattr(self, split))
        return {lab: int(c.get(lab, 0)) for lab in self.labels}


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f" ... and {more} more" if more > 0 else "")


def _hash_unit(text: str) -> float:
    """A deterministic number in [0, 1) from ``text``."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:12], 16) / float(1 << 48)


def prepare_data(manifest: str | os.PathLike[str] | Manifest, recipe: Recipe, *,
                 data_root: str | os.PathLike[str] | None = None,
                 limit_per_class: int | None = None) -> TrainData:
    """Read and check the manifest for ``recipe``; every problem is reported at once.

    Rules (documented in ``docs/train.md``):

    * rows with a non-empty ``error`` column (unreadable when indexed) are skipped and counted;
    * the class is the recipe's ``labels.column`` (``fine_label`` by default), after
      ``labels.merge`` and ``labels.exclude``;
    * a class must be a taxonomy fine label, a label declared in ``labels.new`` (with its
      group), or carry a valid ``group`` in the manifest (then it is registered as new);
    * every class needs at least ``labels.min_train`` training images; a class found only in
      val/test, or listed in ``labels.include`` without images, is an empty class;
    * every file used must exist;
    * ``split`` must be train/val/test; when no row is ``val``, a stratified, deterministic
      (hash of sha256/path) ``auto_val_fraction`` of the training rows becomes validation;
    * ``limit_per_class`` keeps the first N rows (by sha256) per class in each split.

    Raises:
        DataError: the list of all problems found.
    """
    m = manifest if isinstance(manifest, Manifest) else read_manifest(manifest, data_root)
    lab_cfg = recipe.labels
    problems: list[str] = []
    notes: list[str] = []

    # new labels declared in the recipe
    new_labels: dict[str, str] = {}
    for name, group in lab_cfg.new.items():
        if group not in GROUP_NAMES:
            problems.append(f"labels.new: {name!r} has unknown group {group!r}; groups: "
                            f"{', '.join(GROUP_NAMES)}")
            continue
        if name in FINE_LABELS:
            if fine_label(name).group != group:
                problems.append(f"labels.new: {name!r} is already a taxonomy label of group "
                                f"{fine_label(name).group!r}, not {group!r}")
            continue
        new_labels[name] = group

    unreadable = [r for r in m.rows if r.error]
    if unreadable:
        notes.append(f"{len(unreadable)} manifest rows marked unreadable (error column) were "
                     "skipped")
    rows = [r for r in m.rows if not r.error]

    # labels, merges, exclusions
    no_label: list[str] = []
    bad_split: Counter[str] = Counter()
    labelled: list[tuple[ManifestRow, str]] = []
    for r in rows:
        lab = (r.fine_label if lab_cfg.column == "fine_label" else r.label).strip()
        if not lab:
            no_label.append(r.path)
            continue
        lab = lab_cfg.merge.get(lab, lab)
        if lab in lab_cfg.exclude:
            continue
        if r.split not in ("train", "val", "test", ""):
            bad_split[r.split] += 1
            continue
        labelled.append((r, lab))
    if no_label:
        problems.append(f"{len(no_label)} rows have an empty {lab_cfg.column!r} column (map "
                        f"dataset labels to fine labels first, e.g. with a labels.yaml): "
                        f"{_listing(no_label)}")
    if bad_split:
        problems.append("unknown split values (use train, val or test): "
                        + ", ".join(f"{k!r} ({n} rows)" for k, n in bad_split.items()))

    # groups: taxonomy, recipe, or the manifest's group column
    groups: dict[str, str] = {}
    unknown: Counter[str] = Counter()
    conflicts: set[str] = set()
    for r, lab in labelled:
        if lab in FINE_LABELS:
            g = fine_label(lab).group
            if r.group and r.group != g and lab_cfg.column == "fine_label" \
                    and r.fine_label == lab:
                conflicts.add(f"{lab!r} is in group {g!r}, the manifest says {r.group!r}")
        elif lab in new_labels:
            g = new_labels[lab]
        elif r.group in GROUP_NAMES and lab_cfg.column == "fine_label" and r.fine_label == lab:
            g = r.group
        else:
            unknown[lab] += 1
            continue
        groups.setdefault(lab, g)
    for lab, n in sorted(unknown.items()):
        close = difflib.get_close_matches(lab, list(FINE_LABELS) + list(new_labels), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"unknown label {lab!r} ({n} rows){hint}: not a taxonomy fine label; "
                        "declare it in the recipe as labels.new: {" + lab + ": GROUP} or give "
                        "its group in the manifest's group column")
    problems += sorted(conflicts)

    # the label set
    if lab_cfg.include:
        label_set = set(lab_cfg.include)
        for lab in lab_cfg.include:
            if lab not in FINE_LABELS and lab not in new_labels and lab not in groups:
                problems.append(f"labels.include: unknown label {lab!r}")
    else:
        # every label seen: one found only in val/test is reported as an empty class
        label_set = set(groups)
    label_set -= set(unknown)
    labelled = [(r, lab) for r, lab in labelled if lab in label_set]

    # splits (automatic validation split when there is none)
    has_split = [r for r, _ in labelled if r.split]
    if has_split and len(has_split) != len(labelled):
        missing = [r.path for r, _ in labelled if not r.split]
        problems.append(f"{len(missing)} rows have no split while others do (run `wildvision "
                        f"data split`): {_listing(missing)}")
    split_of: dict[int, str] = {}
    auto = not any(r.split == "val" for r, _ in labelled)
    by_label: dict[str, list[int]] = {}
    for i, (r, lab) in enumerate(labelled):
        split_of[i] = r.split or "train"
        if split_of[i] == "train":
            by_label.setdefault(lab, []).append(i)
    if auto:
        moved = 0
        for idx in by_label.values():
            if len(idx) < 2:
                continue
            key = sorted(idx, key=lambda i: _hash_unit(
                (labelled[i][0].sha256 or labelled[i][0].path) + "|val"))
            n_val = max(1, round(len(idx) * recipe.auto_val_fraction))
            n_val = min(n_val, len(idx) - 1)
            for i in key[:n_val]:
                split_of[i] = "val"
                moved += 1
        if moved:
            notes.append(f"no validation split in the manifest: {moved} training images "
                         f"({recipe.auto_val_fraction:.0%} per class, deterministic by "
                         "sha256) were used for validation")

    # limit per class and split
    per: dict[tuple[str, str], list[int]] = {}
    for i, (_r, lab) in enumerate(labelled):
        per.setdefault((split_of[i], lab), []).append(i)
    keep: set[int] = set()
    for _key, idx in per.items():
        idx = sorted(idx, key=lambda i: labelled[i][0].sha256 or labelled[i][0].path)
        keep.update(idx[:limit_per_class] if limit_per_class else idx)
    if limit_per_class:
        notes.append(f"limit_per_class={limit_per_class}: at most that many images per class "
                     "in each split")

    # class sizes
    train_counts = Counter(labelled[i][1] for i in keep if split_of[i] == "train")
    other_counts = Counter(labelled[i][1] for i in keep if split_of[i] != "train")
    empty = []
    for lab in sorted(label_set - set(unknown)):
        n = train_counts.get(lab, 0)
        if n < lab_cfg.min_train:
            where = f" ({other_counts[lab]} val/test images)" if other_counts.get(lab) else ""
            empty.append(f"{lab!r} has {n} training images{where}")
    if empty:
        problems.append(f"empty classes (need at least {lab_cfg.min_train} training image"
                        f"{'s' if lab_cfg.min_train != 1 else ''}): " + "; ".join(empty))
    if not label_set - set(unknown):
        problems.append("no usable labelled rows")
    elif len(label_set - set(unknown)) < 2:
        problems.append("need at least 2 classes to train a classifier, got "
                        f"{sorted(label_set - set(unknown))}")

    # files
    missing_files = [str(m.abs_path(labelled[i][0])) for i in sorted(keep)
                     if not m.abs_path(labelled[i][0]).is_file()]
    if missing_files:
        problems.append(f"{len(missing_files)} image files not found (data root {m.root}): "
                        f"{_listing(missing_files)}")
    if problems:
        raise DataError(f"the training data has {len(problems)} problem"
                        f"{'s' if len(problems) != 1 else ''}; nothing was trained:\n  - "
                        + "\n  - ".join(problems))

    for name, group in new_labels.items():
        register_label(FineLabel(name, group, "added by a training recipe"))
    for lab, g in groups.items():
        if lab not in FINE_LABELS and lab not in new_labels:
            register_label(FineLabel(lab, g, "added by a training manifest"))
            new_labels[lab] = g
    order = [lab for lab in FINE_LABELS if lab in label_set]
    order += sorted(lab for lab in label_set if lab not in FINE_LABELS)
    index = {lab: i for i, lab in enumerate(order)}
    splits: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for i in sorted(keep, key=lambda i: labelled[i][0].path):
        r, lab = labelled[i]
        used = r.with_(fine_label=lab, group=groups[lab], split=split_of[i])
        splits[split_of[i]].append(
            Sample(m.abs_path(r), index[lab], r.sha256, r.source, groups[lab], used))
    used_new = {lab: g for lab, g in new_labels.items() if lab in index}
    return TrainData(
        labels=tuple(order), label_groups={lab: groups[lab] for lab in order},
        new_labels=used_new, train=splits["train"], val=splits["val"], test=splits["test"],
        manifest=m, notes=notes, auto_split=auto,
    )


# sha256 of a file's bytes (the cache key of an image): the core helper.
file_sha256 = sha256_file


def _decode(path: Path, cfg: PreprocessConfig) -> Any:
    try:
        return decode_image(path, draft_size=cfg.draft_size).image
    except WildvisionError as e:
        raise DataError(f"{e} (run `wildvision data check` to find unreadable files)") from e


def load_eval_array(path: Path, cfg: PreprocessConfig) -> np.ndarray:
    """The uint8 HxWx3 eval crop of an image: ``normalize`` of it is exactly
    :func:`wildvision.preprocess.preprocess_image` of the decoded image (what inference does)."""
    return np.asarray(resize_crop(_decode(path, cfg), cfg))


_CV2_INTERP = {"nearest": 0, "bilinear": 1, "bicubic": 2, "lanczos": 4, "box": 3}


def build_augmentation(aug: AugmentConfig, cfg: PreprocessConfig, seed: int) -> Any:
    """The albumentations pipeline of a recipe: uint8 image in, uint8 ``input_size`` square
    out (then :func:`wildvision.preprocess.normalize`)."""
    try:
        import albumentations as A
        import cv2
    except ImportError as e:
        from ..errors import MissingExtraError

        raise MissingExtraError("albumentations", "train", "training augmentation") from e
    size = cfg.input_size
    interp = _CV2_INTERP.get(cfg.interpolation, 2)
    steps: list[Any] = []
    if aug.rotate > 0 and aug.rotate_p > 0:
        steps.append(A.Rotate(limit=(-aug.rotate, aug.rotate), interpolation=1,
                              border_mode=cv2.BORDER_REFLECT_101, p=aug.rotate_p))
    steps.append(A.RandomResizedCrop(size=(size, size), scale=tuple(aug.scale),
                                     ratio=tuple(aug.ratio), interpolation=interp, p=1.0))
    if aug.hflip > 0:
        steps.append(A.HorizontalFlip(p=aug.hflip))
    if (aug.color_jitter > 0 or aug.hue > 0) and aug.color_p > 0:
        cj = aug.color_jitter
        steps.append(A.ColorJitter(brightness=(1 - cj, 1 + cj), contrast=(1 - cj, 1 + cj),
                                   saturation=(1 - cj, 1 + cj), hue=(-aug.hue, aug.hue),
                                   p=aug.color_p))
    if aug.to_gray > 0:
        steps.append(A.ToGray(p=aug.to_gray))
    if aug.jpeg_p > 0:
        steps.append(A.ImageCompression(quality_range=tuple(aug.jpeg_quality), p=aug.jpeg_p))
    return A.Compose(steps, seed=seed)


class EvalDataset:
    """Samples through the exact inference preprocessing; items are ``(tensor, label)``.

    ``normalize(load_eval_array(...))`` is :func:`wildvision.preprocess.preprocess_image` split
    in two, so that the uint8 crops of the validation set can be kept between epochs (4x
    smaller than float tensors); the values are identical to inference.

    Args:
        samples: the images.
        cfg: the preprocessing.
        cache: keep the uint8 crops in memory after the first pass (validation each epoch).
    """

    def __init__(self, samples: Sequence[Sample], cfg: PreprocessConfig,
                 cache: bool = False) -> None:
        self.samples = list(samples)
        self.cfg = cfg
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def array(self, i: int) -> np.ndarray:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        arr = load_eval_array(self.samples[i].path, self.cfg)
        if self._cache is not None:
            self._cache[i] = arr
        return arr

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import torch

        return torch.from_numpy(normalize(self.array(i), self.cfg)), self.samples[i].label


class TrainDataset:
    """Training samples through :class:`wildvision.data.torch_dataset.ManifestDataset` (decode
    exactly as inference, then our albumentations pipeline on the uint8 image, then
    ``normalize``).

    ``reseed(n)`` makes the augmentation of the coming epoch reproducible (workers reseed
    from torch's per-worker seed, see :func:`worker_init`).
    """

    def __init__(self, samples: Sequence[Sample], cfg: PreprocessConfig, aug: AugmentConfig,
                 seed: int, labels: Sequence[str], root: Path) -> None:
        from ..data.torch_dataset import ManifestDataset

        self.samples = list(samples)
        self.cfg = cfg
        self.aug = build_augmentation(aug, cfg, seed)
        manifest = Manifest(tuple(s.row for s in self.samples), root)
        self.ds = ManifestDataset(manifest, labels, cfg, transform=self._augment,
                                  label_field="fine_label")
        if [self.ds.targets[i] for i in range(len(self.samples))] != [
                s.label for s in self.samples]:  # pragma: no cover - a contract check
            raise DataError("internal: ManifestDataset reordered the training rows")

    def _augment(self, image: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.aug(image=image)["image"]
        return out

    def __len__(self) -> int:
        return len(self.samples)

    def reseed(self, seed: int) -> None:
        self.aug.set_random_seed(seed % (2**32))

    def __getitem__(self, i: int) -> tuple[Any, int]:
        item: tuple[Any, int] = self.ds[i]
        return item


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: reseed the augmentation from torch's worker seed."""
    import torch

    info = torch.utils.data.get_worker_info()
    if info is not None and isinstance(info.dataset, TrainDataset):
        info.dataset.reseed(torch.initial_seed())
