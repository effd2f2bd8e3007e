"""Building an index from confirmed photos: a folder (labels from sub-folder names) or a CSV
manifest (``path,reference,label,group``). Each photo is decoded once for the model (its
embedding, through the core :class:`~wildvision.Classifier`) and once more, the same way, for
its PDQ hash and its extra views (:mod:`.views`: the photo without its border, and crops; each
with its hash and embedding); an unreadable photo is listed as a
:class:`~wildvision.Failure` and skipped."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, MatchIndexError
from ..imaging import IMAGE_EXTENSIONS, decode_image
from ..predict import Classifier, Failure, Prediction
from ..preprocess import preprocess_image
from ..taxonomy import FINE_LABELS, GROUP_NAMES, group_of
from .index import MatchIndex, model_fingerprint
from .local import INDEX_KEYPOINTS, index_row, stack
from .pdq import HASH_BYTES, pdq_hash
from .views import index_views

VIEW_SETS = ("crops", "trim", "none")  # what build_index(views=...) stores per photo

__all__ = ["KnownPhoto", "add_photos", "build_index", "photos_from_folder",
           "photos_from_manifest"]

@dataclass(frozen=True)
class KnownPhoto:
    """A confirmed photo to index."""

    path: str
    reference: str
    label: str = ""
    group: str = ""


def _group(label: str, group: str) -> str:
    if group:
        if group not in GROUP_NAMES:
            raise ConfigError(f"unknown group {group!r}; groups: {', '.join(GROUP_NAMES)}")
        return group
    if label in FINE_LABELS:
        return group_of(label)
    return label if label in GROUP_NAMES else "unknown"


def photos_from_folder(folder: str | os.PathLike[str], *, group: str = "") -> list[KnownPhoto]:
    """Every image under ``folder`` (recursively): reference = the path relative to the folder,
    label = the name of the sub-folder holding it (empty at the top level), group = ``group``
    or the label's taxonomy group."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    out = []
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
            rel = f.relative_to(root)
            label = rel.parent.name if rel.parent != Path(".") else ""
            out.append(KnownPhoto(str(f), rel.as_posix(), label, _group(label, group)))
    if not out:
        raise DataError(f"{root}: no images found")
    return out


def photos_from_manifest(path: str | os.PathLike[str]) -> list[KnownPhoto]:
    """Rows of a CSV with a ``path`` column and optional ``reference`` (default: the path),
    ``label`` and ``group`` (default: the label's taxonomy group, else ``unknown``) columns;
    relative paths are relative to the CSV's folder."""
    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{p}: unreadable manifest ({e})") from e
    if not rows or "path" not in rows[0]:
        raise DataError(f"{p}: a manifest needs a 'path' column and at least one row")
    out = []
    for no, r in enumerate(rows, 2):
        if not r.get("path"):
            raise DataError(f"{p}, line {no}: empty path")
        fp = Path(r["path"])
        full = fp if fp.is_absolute() else p.parent / fp
        label = (r.get("label") or "").strip()
        out.append(KnownPhoto(str(full), (r.get("reference") or r["path"]).strip(), label,
                              _group(label, (r.get("group") or "").strip())))
    return out


def _embed_and_hash(photos: Sequence[KnownPhoto], clf: Classifier, batch_size: int,
                    view_set: str = "none", keypoints: int = 0
                    ) -> tuple[list[int], list[bytes], list[int], list[np.ndarray],
                               list[Failure], dict[str, np.ndarray], dict[str, np.ndarray]]:
    rows: list[int] = []
    hashes: list[bytes] = []
    quality: list[int] = []
    embs: list[np.ndarray] = []
    failures: list[Failure] = []
    v_owner: list[int] = []
    v_hash: list[bytes] = []
    v_quality: list[int] = []
    v_emb: list[np.ndarray] = []
    loc: list[tuple[Any, ...]] = []
    cfg = clf.card.preprocess
    results = clf.iter_arrays([ph.path for ph in photos], batch_size=batch_size)
    for i, (ph, (r, arrays)) in enumerate(zip(photos, results, strict=True)):
        if isinstance(r, Failure):
            failures.append(r)
            continue
        assert isinstance(r, Prediction) and arrays is not None
        try:  # decoded exactly as the classifier decodes it, so the hash matches at query time
            dec = decode_image(ph.path, max_pixels=clf.max_pixels, max_bytes=clf.max_bytes,
                               draft_size=cfg.draft_size)
            h, q = pdq_hash(dec.image)
            extra = ([] if view_set == "none" else
                     index_views(dec.image, crops=view_set == "crops"))
            view_keys = [pdq_hash(v) for v in extra]
            view_emb = (clf.predict_arrays(np.stack([preprocess_image(v, cfg) for v in extra]))
                        .get("embedding") if extra and "embedding" in arrays else None)
            packed = index_row(dec.image, keypoints) if keypoints else None
        except Exception as e:  # listed, not fatal
            failures.append(Failure(ph.path, type(e).__name__, str(e), clf.card.name,
                                    clf.card.version))
            continue
        for j, (vh, vq) in enumerate(view_keys):
            v_owner.append(len(rows))
            v_hash.append(vh)
            v_quality.append(vq)
            if view_emb is not None:
                v_emb.append(view_emb[j])
        if packed is not None:
            loc.append(packed)
        rows.append(i)
        hashes.append(h)
        quality.append(q)
        # a hash-only index of a model without an embedding output stores no embeddings
        embs.append(np.array(arrays.get("embedding", ()), np.float32))
    dim = len(embs[0]) if embs else 0
    views: dict[str, np.ndarray] = {
        "view_owner": np.array(v_owner, np.int64),
        "view_hashes": np.frombuffer(b"".join(v_hash), np.uint8).reshape(-1, HASH_BYTES),
        "view_quality": np.array(v_quality, np.uint8),
        "view_embeddings": (np.stack(v_emb) if v_emb
                            else np.zeros((len(v_owner), dim), np.float32))}
    return rows, hashes, quality, embs, failures, views, stack(loc, keypoints)


def add_photos(index: MatchIndex, photos: Sequence[KnownPhoto], *, model: Any = None,
               precision: str = "fp32", batch_size: int = 16, threads: int | None = None,
               _classifier: Classifier | None = None) -> list[Failure]:
    """Hash and embed ``photos`` and add them to ``index`` (all readable ones, or none when a
    reference is a duplicate).

    Returns:
        The photos that could not be read (a :class:`~wildvision.Failure` each).

    Raises:
        IndexModelMismatchError: ``model`` is not the index's model.
        MatchIndexError: a reference already in the index or given twice.
    """
    refs = [ph.reference for ph in photos]
    clash = set(refs) & set(index.references)
    if clash or len(set(refs)) != len(refs):
        dup = sorted(clash) or sorted({r for r in refs if refs.count(r) > 1})
        raise MatchIndexError(f"duplicate references: {dup[:5]}")
    clf = _classifier if _classifier is not None else Classifier(
        model, precision=precision, threads=threads, open_set=False)
    if index.embedding_dim:
        index.check_model(clf.package, precision)
    view_set = str(index.header.get("views", "none"))
    rows, hashes, quality, embs, failures, views, local = _embed_and_hash(
        photos, clf, batch_size, view_set, index.local_keypoints)
    if rows:
        h = np.frombuffer(b"".join(hashes), np.uint8).reshape(-1, HASH_BYTES)
        index.add([photos[i].reference for i in rows], [photos[i].label for i in rows],
                  [_group(photos[i].label, photos[i].group) for i in rows], h,
                  np.array(quality, np.uint8),
                  np.stack(embs) if index.embedding_dim else None,
                  views if len(views["view_owner"]) else None,
                  local if index.local_keypoints else None)
    return failures


def build_index(photos: Iterable[KnownPhoto], *, model: Any = None, precision: str = "fp32",
                batch_size: int = 16, threads: int | None = None, views: str = "crops",
                local: bool = True, **settings: Any) -> tuple[MatchIndex, list[Failure]]:
    """Build an index of confirmed photos.

    Args:
        photos: :class:`KnownPhoto` records (:func:`photos_from_folder`,
            :func:`photos_from_manifest`).
        model: the model whose embeddings to store (default: the default model); the index
            records its name, version and model-file sha256.
        precision: ``fp32`` or ``int8`` (the index then only works with that precision).
        views: extra views stored per photo (:mod:`wildvision.match.views`): ``crops`` (the
            photo without its border, when it has one, and five crops of 70 % of it: the
            robust default, about 6x the memory of one embedding), ``trim`` (only the photo
            without its border) or ``none``. Photos added later get the same.
        local: store :data:`~wildvision.match.local.INDEX_KEYPOINTS` keypoints per photo
            (9,222 bytes) so that rotated, cropped and written-on copies whose embedding is
            under the threshold are still found by a local-feature check
            (:mod:`wildvision.match.local`); ``False`` for a smaller index without it.
        **settings: :class:`MatchIndex` settings (thresholds, mode, decision ...).

    Returns:
        The index and the photos that could not be read (listed, not fatal).

    Example:
        >>> index, failed = build_index(photos_from_folder("confirmed/"))  # doctest: +SKIP
        >>> index.save("known.npz")  # doctest: +SKIP
    """
    photos = list(photos)
    if views not in VIEW_SETS:
        raise ConfigError(f"views must be one of {', '.join(VIEW_SETS)}, got {views!r}")
    clf = Classifier(model, precision=precision, threads=threads, open_set=False)
    head: dict[str, Any] = dict(model_fingerprint(clf.package, precision))
    dim = _embedding_dim(clf)
    head["embedding_dim"] = dim
    head["views"] = views
    head["local_keypoints"] = INDEX_KEYPOINTS if local else 0
    index = MatchIndex(head, **settings)
    failures = add_photos(index, photos, precision=precision, batch_size=batch_size,
                          _classifier=clf)
    return index, failures


def _embedding_dim(clf: Classifier) -> int:
    if "embedding" not in clf.card.outputs:
        raise ConfigError(f"model {clf.card.name} has no 'embedding' output to index")
    probe = np.zeros((1, 3, clf.card.preprocess.input_size, clf.card.preprocess.input_size),
                     np.float32)
    out = clf.predict_arrays(probe)
    if "embedding" not in out:
        raise ConfigError(f"model {clf.card.name} has no 'embedding' output to index")
    return int(out["embedding"].shape[1])
