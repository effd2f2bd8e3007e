"""On-disk caches of a training run.

* :class:`EmbeddingCache` — pooled backbone embeddings keyed by image sha256, in a folder
  named after the backbone (arch + weights sha256), the preprocessing and the view
  (plain eval view, or augmented view N with its augmentation and seed). Append-only ``.npz``
  shards; a later ``--head-only`` run on the same images reuses them.
* :class:`TrunkCache` — the frozen trunk's output for each training image and augmented view,
  as one ``.npy`` memory map (read per batch, never all in RAM).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EmbeddingCache", "TrunkCache", "cache_key"]


def cache_key(**parts: Any) -> str:
    """A stable hex key of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


class EmbeddingCache:
    """Embeddings of one (backbone, preprocessing, view) key, by image sha256."""

    def __init__(self, root: Path, key: str, meta: dict[str, Any]) -> None:
        self.dir = Path(root) / "embeddings" / key[:24]
        self.dir.mkdir(parents=True, exist_ok=True)
        meta_path = self.dir / "key.json"
        if not meta_path.exists():
            meta_path.write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")
        self._data: dict[str, np.ndarray] = {}
        for shard in sorted(self.dir.glob("shard-*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as z:
                    for sha, vec in zip(z["sha256"].tolist(), z["emb"], strict=True):
                        self._data[str(sha)] = vec
            except (OSError, ValueError, KeyError):
                continue  # a shard cut by an interrupted run: recomputed

    def __contains__(self, sha: str) -> bool:
        return sha in self._data

    def __len__(self) -> int:
        return len(self._data)

    def get_many(self, shas: Sequence[str]) -> np.ndarray:
        return np.stack([self._data[s] for s in shas]).astype(np.float32)

    def put_many(self, shas: Sequence[str], embeddings: np.ndarray) -> None:
        if not len(shas):
            return
        emb = np.asarray(embeddings, dtype=np.float32)
        for s, v in zip(shas, emb, strict=True):
            self._data[s] = v
        tmp = self.dir / f".tmp-{uuid.uuid4().hex}.npz"
        np.savez(tmp, sha256=np.asarray(list(shas), dtype="U64"), emb=emb)
        os.replace(tmp, self.dir / f"shard-{uuid.uuid4().hex}.npz")


class TrunkCache:
    """``(images, views, C, H, W)`` trunk outputs in a ``.npy`` memory map."""

    def __init__(self, root: Path, key: str, shape: tuple[int, ...], dtype: str,
                 meta: dict[str, Any]) -> None:
        self.dir = Path(root) / "trunk" / key[:24]
        self.path = self.dir / "trunk.npy"
        self.done_path = self.dir / "complete.json"
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.meta = meta
        self.array: np.ndarray | None = None

    @property
    def complete(self) -> bool:
        return self.done_path.is_file() and self.path.is_file()

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def open_for_write(self) -> np.ndarray:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.done_path.exists():
            self.done_path.unlink()
        self.array = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype,
                                               shape=self.shape)
        return self.array

    def mark_complete(self) -> None:
        if self.array is not None and isinstance(self.array, np.memmap):
            self.array.flush()
        self.done_path.write_text(json.dumps(self.meta, indent=1, default=str),
                                  encoding="utf-8")
        self.open_for_read()

    def open_for_read(self) -> np.ndarray:
        arr: np.ndarray = np.load(self.path, mmap_mode="r")
        if tuple(arr.shape) != tuple(self.shape):
            raise ValueError(f"trunk cache {self.path} has shape {arr.shape}, expected "
                             f"{self.shape}")
        self.array = arr
        return arr


TRUNK_INDEX = "images.json"


def write_trunk_index(cache: TrunkCache, base_key: str, images: list[str]) -> None:
    """Record which images (in row order) a complete trunk cache holds, and its key without
    the image list, so a run on a subset of them can gather its rows (:func:`find_donor`)."""
    path = cache.dir / TRUNK_INDEX
    if path.is_file() or not cache.complete:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"base_key": base_key, "images": images}), encoding="utf-8")
    os.replace(tmp, path)


def find_donor(root: Path, base_key: str, images: list[str], shape: tuple[int, ...]
               ) -> tuple[np.ndarray, np.ndarray] | None:
    """A complete trunk cache under ``root`` with the same ``base_key`` (backbone, weights,
    preprocessing, augmentation, seed, views) whose images include all of ``images``:
    ``(its array, the row of each image)``, or ``None``."""
    for index in sorted((Path(root) / "trunk").glob(f"*/{TRUNK_INDEX}")):
        try:
            meta = json.loads(index.read_text(encoding="utf-8"))
            if meta.get("base_key") != base_key:
                continue
            row = {img: i for i, img in enumerate(meta["images"])}
            if not all(img in row for img in images):
                continue
            arr: np.ndarray = np.load(index.parent / "trunk.npy", mmap_mode="r")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if tuple(arr.shape[1:]) != tuple(shape[1:]) or not (index.parent / "complete.json"
                                                           ).is_file():
            continue
        return arr, np.array([row[img] for img in images], dtype=np.int64)
    return None
