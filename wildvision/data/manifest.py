"""The manifest: one CSV row per image, the contract between ``wildvision data index``,
``data split``, ``data check``, ``wildvision train`` and ``wildvision bench``.

Columns (``MANIFEST_FIELDS``; extra columns are kept in ``ManifestRow.extra``):

``path``        path of the image, relative to the data root (POSIX separators)
``source``      where the image came from (e.g. ``met_ivory``); used for per-source metrics and
                leave-one-source-out splits
``label``       the dataset's own label (folder name)
``fine_label``  the taxonomy fine label (empty until mapped with a labels.yaml)
``group``       the taxonomy group of ``fine_label`` (empty until mapped)
``sha256``      sha256 of the file bytes
``width``, ``height``  stored image size (0 when unreadable)
``phash``       64-bit perceptual hash as 16 hex chars (empty when unreadable)
``split``       ``train`` / ``val`` / ``test`` (empty until split)
``error``       empty when readable, else ``ErrorType: message`` from the core loader

The data root: ``data_root`` argument, else ``$WILDVISION_DATA_ROOT``, else the folder of a
``dataset.json`` next to the manifest naming ``{"data_root": "<relative or absolute>"}``, else
the manifest's own folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import DataError

__all__ = [
    "MANIFEST_FIELDS",
    "SPLITS",
    "Manifest",
    "ManifestRow",
    "extra_fields_of",
    "read_manifest",
    "write_manifest",
]

MANIFEST_FIELDS = (
    "path", "source", "label", "fine_label", "group", "sha256", "width", "height", "phash",
    "split", "error",
)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ManifestRow:
    path: str
    source: str = ""
    label: str = ""
    fine_label: str = ""
    group: str = ""
    sha256: str = ""
    width: int = 0
    height: int = 0
    phash: str = ""
    split: str = ""
    error: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def readable(self) -> bool:
        return not self.error

    def to_row(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k) for k in MANIFEST_FIELDS}
        d.update(self.extra)
        return d

    def with_(self, **changes: Any) -> ManifestRow:
        return replace(self, **changes)


@dataclass(frozen=True)
class Manifest:
    """Rows plus the data root their paths are relative to."""

    rows: tuple[ManifestRow, ...]
    root: Path
    sha256: str = ""  # of the manifest file, when read from one

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[ManifestRow]:
        return iter(self.rows)

    def abs_path(self, row: ManifestRow) -> Path:
        p = Path(row.path)
        return p if p.is_absolute() else self.root / p

    def split(self, name: str) -> Manifest:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; splits: {', '.join(SPLITS)}")
        return replace(self, rows=tuple(r for r in self.rows if r.split == name))

    def filter(self, pred: Any) -> Manifest:
        return replace(self, rows=tuple(r for r in self.rows if pred(r)))


def _resolve_root(manifest_path: Path, data_root: str | os.PathLike[str] | None) -> Path:
    if data_root is not None:
        return Path(data_root)
    env = os.environ.get("WILDVISION_DATA_ROOT")
    if env:
        return Path(env)
    meta = manifest_path.parent / DATASET_META
    if meta.is_file():
        try:
            root = json.loads(meta.read_text(encoding="utf-8"))["data_root"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{meta}: expected a JSON object with 'data_root' ({e})") from e
        p = Path(root)
        return p if p.is_absolute() else (meta.parent / p)
    return manifest_path.parent


DATASET_META = "dataset.json"  # beside a manifest: {"data_root": ...}, relative to itself


def record_data_root(manifest_path: str | os.PathLike[str], data_root: str | os.PathLike[str],
                     *, check_only: bool = False) -> Path | None:
    """Make the manifest at ``manifest_path`` find its photos under ``data_root`` wherever it
    is written: nothing to do when that is the manifest's own folder (or the
    ``dataset.json`` beside it already points there); otherwise write ``dataset.json`` beside
    it, with ``data_root`` relative to that folder (what :func:`read_manifest` reads).

    Args:
        manifest_path: the manifest CSV (need not exist yet).
        data_root: the folder its relative paths start from.
        check_only: only raise on a conflict; write nothing.

    Returns:
        The ``dataset.json`` written, or None.

    Raises:
        DataError: a ``dataset.json`` beside it points at another folder (it serves every
            manifest there: write this one elsewhere, or edit that file).
    """
    folder = Path(manifest_path).resolve().parent
    root = Path(data_root).resolve()
    meta = folder / DATASET_META
    if meta.is_file():
        try:
            current = json.loads(meta.read_text(encoding="utf-8"))["data_root"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{meta}: expected a JSON object with 'data_root' ({e})") from e
        if (folder / current).resolve() == root:
            return None
        raise DataError(f"{meta} says the photos of the manifests in {folder} are under "
                        f"{(folder / current).resolve()}, not {root}: write this manifest in "
                        "another folder, or edit that file")
    if root == folder or check_only:
        return None
    tmp = meta.with_name(meta.name + ".tmp")
    tmp.write_text(json.dumps({"data_root": os.path.relpath(root, folder)}) + "\n",
                   encoding="utf-8")
    os.replace(tmp, meta)
    return meta


def read_manifest(path: str | os.PathLike[str],
                  data_root: str | os.PathLike[str] | None = None) -> Manifest:
    """Read a manifest CSV.

    Raises:
        DataError: missing file, missing ``path`` column, or bad integers.
    """
    mpath = Path(path)
    if not mpath.is_file():
        raise DataError(f"{mpath}: manifest not found")
    raw = mpath.read_bytes()
    text = raw.decode("utf-8-sig")
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or "path" not in reader.fieldnames:
        raise DataError(f"{mpath}: not a manifest (no 'path' column)")
    rows = []
    for lineno, r in enumerate(reader, start=2):
        try:
            known = {k: (r.get(k) or "") for k in MANIFEST_FIELDS}
            rows.append(ManifestRow(
                path=known["path"], source=known["source"], label=known["label"],
                fine_label=known["fine_label"], group=known["group"], sha256=known["sha256"],
                width=int(known["width"] or 0), height=int(known["height"] or 0),
                phash=known["phash"], split=known["split"], error=known["error"],
                extra={k: v for k, v in r.items() if k not in MANIFEST_FIELDS and k is not None},
            ))
        except ValueError as e:
            raise DataError(f"{mpath}:{lineno}: bad value ({e})") from e
    return Manifest(tuple(rows), _resolve_root(mpath, data_root), hashlib.sha256(raw).hexdigest())


def extra_fields_of(rows: Iterable[ManifestRow]) -> list[str]:
    """The extra column names used by ``rows``, in first-seen order."""
    seen: dict[str, None] = {}
    for r in rows:
        for k in r.extra:
            if k not in MANIFEST_FIELDS:
                seen.setdefault(k, None)
    return list(seen)


def write_manifest(path: str | os.PathLike[str], rows: Iterable[ManifestRow],
                   extra_fields: Sequence[str] | None = None) -> str:
    """Write rows as a manifest CSV (LF line ends, stable column order); returns its sha256.

    Args:
        path: the CSV to write (atomically: a temporary file is renamed over it).
        rows: the rows.
        extra_fields: extra columns to write after the standard ones; ``None`` (default)
            writes every extra column the rows carry, ``()`` none.
    """
    mpath = Path(path)
    mpath.parent.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    if extra_fields is None:
        extra_fields = extra_fields_of(rows)
    fields = list(MANIFEST_FIELDS) + [f for f in extra_fields if f not in MANIFEST_FIELDS]
    tmp = mpath.with_suffix(mpath.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow(row.to_row())
    os.replace(tmp, mpath)
    return hashlib.sha256(mpath.read_bytes()).hexdigest()
