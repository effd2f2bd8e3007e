"""Reading index files: the ``.npz`` format (:mod:`wildvision.match.index` describes its arrays
and writes them) and plain PDQ hash lists (python-threatexchange ``pdq <hex>`` lines and the
reference ``pdq-photo-hasher`` ``hash,quality,name`` layout)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MatchIndexError
from .index import INDEX_FORMAT, INDEX_FORMAT_VERSION, LOCAL_ARRAYS, VIEW_ARRAYS, MatchIndex
from .pdq import HASH_BYTES, from_hex

__all__ = ["load_index", "read_pdq_list"]


_REQUIRED = ("header", "references", "labels", "groups", "hashes", "quality", "embeddings")


def load_index(path: str | os.PathLike[str], **settings: Any) -> MatchIndex:
    """Load an index file (``.npz``) or a PDQ hash list (``.txt``/``.csv``, hash-only).

    Args:
        path: the file.
        **settings: :class:`MatchIndex` settings overriding the file's policy
            (``hash_threshold``, ``similarity_threshold``, ``mode``, ``decision``, ``top_k``,
            ``engine``, ``nprobe``, ``min_inliers``, ``verify``).

    Raises:
        MatchIndexError: unreadable, corrupt or not an index; inconsistent arrays; duplicate
            references.
    """
    p = Path(path)
    if p.suffix.lower() in (".txt", ".csv", ".pdq"):
        return read_pdq_list(p, **settings)
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in _REQUIRED if k not in z.files]
            if missing:
                raise MatchIndexError(f"{p}: not a wildvision match index (no {missing})")
            data = {k: z[k] for k in _REQUIRED}
            views = {k: z[k] for k in VIEW_ARRAYS if k in z.files}
            if views and len(views) != len(VIEW_ARRAYS):
                raise MatchIndexError(f"{p}: incomplete view arrays ({sorted(views)})")
            local = {k: z[k] for k in LOCAL_ARRAYS if k in z.files}
            if local and len(local) != len(LOCAL_ARRAYS):
                raise MatchIndexError(f"{p}: incomplete local feature arrays ({sorted(local)})")
    except MatchIndexError:
        raise
    except FileNotFoundError:
        raise MatchIndexError(f"{p}: no such index file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise MatchIndexError(f"{p}: unreadable or corrupt index file ({e})") from e
    try:
        head = json.loads(data["header"].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MatchIndexError(f"{p}: corrupt index header ({e})") from e
    if not isinstance(head, dict) or head.get("format") != INDEX_FORMAT:
        raise MatchIndexError(f"{p}: not a wildvision match index (header format "
                              f"{head.get('format') if isinstance(head, dict) else None!r})")
    if int(head.get("format_version", 0)) > INDEX_FORMAT_VERSION:
        raise MatchIndexError(f"{p}: index format {head.get('format_version')} is newer than "
                              f"this wildvision reads ({INDEX_FORMAT_VERSION}); upgrade")
    for k, kind in (("hashes", "u"), ("quality", "u"), ("embeddings", "f"),
                    ("references", "U"), ("labels", "U"), ("groups", "U")):
        if data[k].dtype.kind != kind:
            raise MatchIndexError(f"{p}: array {k} has dtype {data[k].dtype}")
    if len(data["embeddings"]) and data["embeddings"].ndim != 2:
        raise MatchIndexError(f"{p}: embeddings must be 2-D")
    for k, kind in (("view_owner", "i"), ("view_hashes", "u"), ("view_quality", "u"),
                    ("view_embeddings", "f")):
        if k in views and views[k].dtype.kind != kind:
            raise MatchIndexError(f"{p}: array {k} has dtype {views[k].dtype}")
    if views and views["view_embeddings"].ndim != 2:
        raise MatchIndexError(f"{p}: view_embeddings must be 2-D")
    for k in LOCAL_ARRAYS:
        if k in local and local[k].dtype.kind != "u":
            raise MatchIndexError(f"{p}: array {k} has dtype {local[k].dtype}")
    if local and local["local_points"].ndim != 3:
        raise MatchIndexError(f"{p}: local_points must be 3-D")
    if local:
        head["local_keypoints"] = int(local["local_points"].shape[1])
    else:
        head["local_keypoints"] = 0
    try:
        return MatchIndex(head, references=data["references"].tolist(),
                          labels=data["labels"].tolist(), groups=data["groups"].tolist(),
                          hashes=data["hashes"], quality=data["quality"],
                          embeddings=data["embeddings"].reshape(len(data["references"]), -1)
                          if data["embeddings"].size or len(data["references"]) else
                          data["embeddings"], views=views or None, local=local or None,
                          **settings)
    except MatchIndexError as e:
        raise MatchIndexError(f"{p}: {e}") from e
    except ValueError as e:
        raise MatchIndexError(f"{p}: inconsistent index arrays ({e})") from e


def read_pdq_list(path: str | os.PathLike[str], **settings: Any) -> MatchIndex:
    """Read a plain PDQ hash list into a hash-only index.

    Reads both forms :meth:`MatchIndex.write_pdq_list` writes: ``pdq <hex>`` lines
    (python-threatexchange local files) and ``<hex>,<quality>,<name>`` lines (the reference
    ``pdq-photo-hasher`` output); blank lines and ``#`` comments are skipped. Each entry's
    reference is ``<file name>:<line number>``; its label and group are the name column
    (``unknown`` when absent).

    Raises:
        MatchIndexError: a line that is neither form, or an invalid hash (with its line number).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MatchIndexError(f"{p}: no such hash list") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MatchIndexError(f"{p}: unreadable hash list ({e})") from e
    refs, groups, hashes, quality = [], [], [], []
    for no, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        try:
            if "," in s:
                parts = s.split(",", 2)
                h = from_hex(parts[0])
                q = int(parts[1]) if len(parts) > 1 else 100
                name = parts[2].strip() if len(parts) > 2 else "unknown"
            else:
                kind, _, rest = s.partition(" ")
                if kind.lower() != "pdq":
                    raise MatchIndexError(f"signal type {kind!r} is not pdq")
                h, q, name = from_hex(rest), 100, "unknown"
            if not 0 <= q <= 100:
                raise MatchIndexError(f"quality {q} is not in 0..100")
        except (MatchIndexError, ValueError) as e:
            raise MatchIndexError(f"{p}, line {no}: {e}") from None
        refs.append(f"{p.name}:{no}")
        groups.append(name or "unknown")
        hashes.append(np.frombuffer(h, np.uint8))
        quality.append(q)
    head = {"embedding_dim": 0, "shared": True, "imported_from": p.name}
    return MatchIndex(head, references=refs, labels=groups, groups=groups,
                      hashes=np.array(hashes, np.uint8).reshape(-1, HASH_BYTES),
                      quality=np.array(quality, np.uint8), **settings)
