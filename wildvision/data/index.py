"""Index an image folder into a manifest: one row per file, unreadable files included.

Layouts (decided for the whole root):

* ``ROOT/<source>/<label>/<file>`` when any top-level folder has sub-folders (files deeper
  than the label folder belong to that label);
* ``ROOT/<label>/<file>`` otherwise; the source is then ``source`` (default: the root
  folder's name).

Hidden files and folders (``.name``) are ignored, and so are files lying directly in ROOT
(a README, an existing manifest): both are reported in :class:`IndexResult`. Every other file
gets a row, whatever its extension: a file the core loader cannot read gets its reason in the
``error`` column (and still its sha256, when the bytes can be read) — never dropped.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..imaging import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, decode_image
from .manifest import ManifestRow
from .phash import PHASH_DRAFT_SIZE, phash_hex

__all__ = ["IndexEntry", "IndexResult", "index_file", "index_folder", "walk_images"]


@dataclass(frozen=True)
class IndexEntry:
    """A file found by :func:`walk_images`."""

    path: str  # relative to the root, POSIX separators
    source: str
    label: str


@dataclass(frozen=True)
class IndexResult:
    """The rows of an indexing run and what it measured.

    Attributes:
        rows: one row per file, sorted by path.
        ignored: files seen but not indexed (directly in the root), relative paths.
        seconds: wall-clock time of the read/decode/hash stage.
        workers: threads used.
    """

    rows: tuple[ManifestRow, ...]
    ignored: tuple[str, ...] = ()
    seconds: float = 0.0
    workers: int = 1
    walk_seconds: float = 0.0

    @property
    def unreadable(self) -> tuple[ManifestRow, ...]:
        return tuple(r for r in self.rows if r.error)

    def stats(self) -> dict[str, object]:
        """A JSON-ready summary (what ``--stats-out`` writes)."""
        return {
            "images": len(self.rows),
            "unreadable": len(self.unreadable),
            "ignored_files": list(self.ignored),
            "seconds": round(self.seconds + self.walk_seconds, 2),
            "images_per_second": round(len(self.rows) / max(self.seconds, 1e-9), 1),
            "workers": self.workers,
            "cpu_count": os.cpu_count(),
        }


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _files_under(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith("."):
                yield Path(dirpath) / f


def walk_images(root: str | os.PathLike[str],
                source: str | None = None) -> tuple[list[IndexEntry], list[str]]:
    """Find the files of a dataset folder (see the module docstring for the layouts).

    Args:
        root: the dataset root.
        source: the source name for the ``ROOT/<label>/<file>`` layout (default: the root
            folder's name); not allowed with the ``<source>/<label>`` layout.

    Returns:
        ``(entries sorted by path, ignored files)``.

    Raises:
        DataError: the root is not a folder, holds no label folders, or a source folder
            mixes files with label sub-folders.
    """
    rootp = Path(root)
    if not rootp.is_dir():
        raise DataError(f"{rootp}: not a folder")
    top = sorted(p for p in rootp.iterdir() if _visible(p))
    dirs = [p for p in top if p.is_dir()]
    ignored = [p.name for p in top if not p.is_dir()]
    if not dirs:
        raise DataError(f"{rootp}: no label folders found (expected ROOT/<label>/<file> or "
                        "ROOT/<source>/<label>/<file>)")
    nested = any(any(c.is_dir() for c in d.iterdir() if _visible(c)) for d in dirs)
    entries: list[IndexEntry] = []
    if nested:
        if source is not None:
            raise DataError(f"{rootp}: has <source>/<label> folders; --source applies only to "
                            "the ROOT/<label>/<file> layout")
        stray: list[str] = []
        for d in dirs:
            for child in sorted(c for c in d.iterdir() if _visible(c)):
                if child.is_dir():
                    for f in _files_under(child):
                        rel = f.relative_to(rootp).as_posix()
                        entries.append(IndexEntry(rel, d.name, child.name))
                else:
                    stray.append(child.relative_to(rootp).as_posix())
        if stray:
            shown = ", ".join(stray[:10]) + (f" and {len(stray) - 10} more" if len(stray) > 10
                                             else "")
            raise DataError(
                f"{rootp}: {len(stray)} file(s) directly in a source folder, outside any label "
                f"folder: {shown}. Move them into <source>/<label>/."
            )
    else:
        src = source if source is not None else rootp.resolve().name
        for d in dirs:
            for f in _files_under(d):
                entries.append(IndexEntry(f.relative_to(rootp).as_posix(), src, d.name))
    entries.sort(key=lambda e: e.path)
    return entries, ignored


class _NamedBytes(io.BytesIO):
    """Bytes with a name, so the core loader's messages name the file."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name


def _error_text(e: BaseException, name: str) -> str:
    msg = str(e)
    if msg.startswith(f"{name}: "):
        msg = msg[len(name) + 2:]
    return f"{type(e).__name__}: {msg}".replace("\n", " ")


def index_file(root: str | os.PathLike[str], entry: IndexEntry, *,
               max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int = DEFAULT_MAX_BYTES) -> ManifestRow:
    """Read, hash and decode one file into a manifest row (errors go into the row).

    The image is decoded with the core loader (:func:`wildvision.imaging.decode_image`), JPEGs
    in draft mode (the perceptual hash needs only a thumbnail); ``width``/``height`` are the
    stored size.
    """
    base = ManifestRow(path=entry.path, source=entry.source, label=entry.label)
    path = Path(root) / entry.path
    try:
        size = path.stat().st_size
        if size > max_bytes:
            # Hash it anyway (streamed) so duplicates of refused files are still found.
            hasher = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    hasher.update(chunk)
            return base.with_(sha256=hasher.hexdigest(), error=(
                f"ImageTooLargeError: file is {size:,} bytes, over the limit of "
                f"{max_bytes:,} bytes"))
        data = path.read_bytes()
    except OSError as e:
        return base.with_(error=f"InvalidImageError: cannot read file ({e.strerror or e})")
    digest = hashlib.sha256(data).hexdigest()
    try:
        decoded = decode_image(_NamedBytes(data, entry.path), max_pixels=max_pixels,
                               max_bytes=max_bytes, draft_size=PHASH_DRAFT_SIZE)
        ph = phash_hex(decoded.image)
    except Exception as e:  # typed loader errors, and any decoder bug: the row is kept
        return base.with_(sha256=digest, error=_error_text(e, entry.path))
    w, h = decoded.original_size
    return base.with_(sha256=digest, width=w, height=h, phash=ph)


def index_folder(
    root: str | os.PathLike[str],
    *,
    source: str | None = None,
    workers: int | None = None,
    on_row: Callable[[ManifestRow], None] | None = None,
    entries: list[IndexEntry] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> IndexResult:
    """Index every file under ``root`` (see the module docstring).

    Args:
        root: the dataset folder.
        source: source name for the ``ROOT/<label>/<file>`` layout.
        workers: decoding threads (default: the CPU count, at most 8). Pillow decodes and
            resizes without holding the GIL, so threads scale without pickling costs.
        on_row: called with each row as it is done (in path order), e.g. a progress bar.
        entries: the files to index, if already walked (:func:`walk_images`).
        max_pixels, max_bytes: the core loader's limits.

    Returns:
        An :class:`IndexResult`; unreadable files are rows with ``error`` set.

    Raises:
        DataError: see :func:`walk_images`.
    """
    t0 = time.perf_counter()
    ignored: list[str] = []
    if entries is None:
        entries, ignored = walk_images(root, source)
    t1 = time.perf_counter()
    n_workers = max(1, workers if workers is not None else min(8, os.cpu_count() or 1))
    rows: list[ManifestRow] = []

    def one(e: IndexEntry) -> ManifestRow:
        return index_file(root, e, max_pixels=max_pixels, max_bytes=max_bytes)

    if n_workers == 1:
        it: Iterator[ManifestRow] = map(one, entries)
        for row in it:
            rows.append(row)
            if on_row:
                on_row(row)
    else:
        window = n_workers * 64  # bounded: a million files are not all queued at once
        with ThreadPoolExecutor(n_workers, thread_name_prefix="wv-index") as pool:
            for start in range(0, len(entries), window):
                for row in pool.map(one, entries[start:start + window]):
                    rows.append(row)
                    if on_row:
                        on_row(row)
    t2 = time.perf_counter()
    return IndexResult(tuple(rows), tuple(ignored), t2 - t1, n_workers, t1 - t0)
