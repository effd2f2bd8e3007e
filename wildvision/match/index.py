"""The known-photo index: PDQ hashes and model embeddings of confirmed photos, never the photos.

One index is one ``.npz`` file (plain arrays, loaded with ``allow_pickle=False``):

==============  =================  ==========================================================
array           shape / dtype      what
==============  =================  ==========================================================
``header``      (bytes,) uint8     UTF-8 JSON: format, model name/version/precision, the
                                   sha256 of the model file that made the embeddings,
                                   embedding size, thresholds, ``shared``
``references``  (N,) unicode       a case id / listing URL per photo (unique)
``labels``      (N,) unicode       a label per photo
``groups``      (N,) unicode       its taxonomy group
``hashes``      (N, 32) uint8      PDQ hash, reference bit order (:mod:`.pdq`)
``quality``     (N,) uint8         PDQ quality 0-100 (under 50: the hash is not matched)
``embeddings``  (N, D) float16     unit-length model embeddings (D = 0: a hash-only list)
``view_owner``  (V,) int64         the entry each extra view belongs to (optional: files
                                   without views have none)
``view_hashes``, ``view_quality``, ``view_embeddings``: the views' PDQ hashes, qualities and
embeddings, as for the entries (:mod:`.views`: the photo without its border, and crops)
``local_points``  (N, K, 2) uint16 keypoint positions in 1/64 pixel (:mod:`.local`; optional:
                                   an index built without local features has none)
``local_descriptors`` (N, K, 32) uint8  their ORB descriptors
``local_count`` (N,) uint16        how many of the K rows are keypoints (0: none stored)
``local_size``  (N, 2) uint16      the size of the grey copy they were found on
==============  =================  ==========================================================

An entry matches a query with the best similarity and the smallest hash distance over the
entry's photo and views against the query's photo and views.

Search: FAISS (``faiss-cpu``): inner product over the unit embeddings of the photos and their
views, exact (``IndexFlatIP``) under :data:`APPROX_MIN` rows and approximate (IVF with 8-bit
scalar quantisation, re-ranked exactly) from there; Hamming search over the PDQ hashes with a
brute-force binary index or, from :data:`APPROX_MIN` rows, multi-index hashing
(:mod:`.mih`: 16 tables of 16 bits, one bit flipped per table, :data:`APPROX_HASH_FLIPS`).
Every candidate, from either search, is re-scored exactly over all its rows. Candidates that
pass neither threshold but come within :data:`VERIFY_FLOOR` similarity (the best
:data:`VERIFY_TOP` of them) are checked with local features (:mod:`.local`): enough keypoints
that one rotation + scale + shift explains make them a match (``by="local"``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from ..errors import ConfigError, IndexModelMismatchError, MatchIndexError, MissingExtraError
from ..matching import Match
from ..modelpack import ModelPackage
from ..scores import unit_rows
from ._io import atomic_write, csv_safe, str_array
from .local import (
    MIN_INLIERS,
    NO_KEYPOINTS,
    QUERY_KEYPOINTS,
    LocalFeatures,
    accepted,
    local_features,
    local_source,
    stack,
    unpack,
    verify,
)
from .mih import HashTables
from .pdq import HASH_BYTES, MIN_QUALITY, hamming, pdq_hash, to_hex
from .views import query_views

__all__ = [
    "APPROX_MIN",
    "DEFAULT_HASH_THRESHOLD",
    "DEFAULT_SIMILARITY_THRESHOLD",
    "INDEX_FORMAT",
    "MatchIndex",
    "PhotoKeys",
]

INDEX_FORMAT = "wildvision-match-index"
INDEX_FORMAT_VERSION = 1
# The combined rule's thresholds benchmarks/match_robustness.py chose for wildvision-base 2.0.0
# with the default views and the keypoint check (hash first, at most 47, then the loosest
# similarity keeping <= 0.1 % of 5,000 unrelated photos, listed duplicates left out, matching an
# index of 500; docs/match.md has the run).
DEFAULT_HASH_THRESHOLD = 47
DEFAULT_SIMILARITY_THRESHOLD = 0.946
VIEW_ARRAYS = ("view_owner", "view_hashes", "view_quality", "view_embeddings")
LOCAL_ARRAYS = ("local_points", "local_descriptors", "local_count", "local_size")
VERIFY_FLOOR = 0.7  # candidates at least this similar are checked with local features
VERIFY_TOP = 3      # at most this many per photo (the most similar)
APPROX_MIN = 100_000  # from this many rows (photos + views): approximate search (match_speed.py)
# The approximate engine's hash tables flip one bit per 16-bit chunk: every hash within
# distance 31 is found, and one within 32-47 when one of its 16 chunks is within a bit of the
# query's (most are: benchmarks/match_speed.py measures how many) or when the embedding search
# proposes its photo; two flips would find all within 47 at about ten times the cost.
APPROX_HASH_FLIPS = 1
# Centroids the approximate engine's HNSW graph explores per query (at least nprobe): 64 found
# the same lists as a flat search for 1.0 of near copies in benchmarks/match_speed.py's runs.
HNSW_EF_SEARCH = 64
MODES = ("either", "hash", "embedding", "both")
ENGINES = ("auto", "exact", "ivf")


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:
        raise MissingExtraError("faiss-cpu", "match", "known-photo search") from e
    return faiss


def model_fingerprint(package: ModelPackage, precision: str = "fp32") -> dict[str, Any]:
    """What identifies the embeddings a model package makes: name, version, precision and the
    sha256 of the ONNX file (already verified against the card when the package loaded)."""
    name = "model.int8.onnx" if precision == "int8" else "model.onnx"
    sha = package.card.files.get(name, "")
    if not sha:
        raise ConfigError(f"model {package.card.name} has no {name}")
    return {"model": package.card.name, "model_version": package.card.version,
            "precision": precision, "embedding_sha256": sha}


@dataclass
class _Engines:
    emb: Any = None        # faiss index over the embeddings (entries, then views)
    emb_kind: str = ""
    keep: tuple[Any, ...] = ()  # FAISS objects the IVF index points to
    hashes: Any = None     # exact: faiss binary index over the good-quality hashes
    hash_tables: HashTables | None = None  # approximate: multi-index hash tables over them
    hash_ids: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    owner: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    # views of entry i: view rows view_order[view_start[i]:view_start[i + 1]]
    view_order: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    view_start: NDArray[np.int64] = field(default_factory=lambda: np.zeros(1, np.int64))


@dataclass(frozen=True)
class PhotoKeys:
    """What :meth:`MatchIndex.image_keys` computes from a decoded photo: PDQ hashes (of the
    photo, its mirror image and its views and their mirror images) with their qualities,
    and the extra views (:func:`~wildvision.match.views.query_views`) whose embeddings the
    classifier adds."""

    hashes: tuple[bytes, ...]
    quality: tuple[int, ...]
    views: tuple[Image.Image, ...] = ()
    # grey copies of the photo and its views (:func:`~wildvision.match.local.local_source`)
    # when the index verifies with local features; their keypoints are found only when a
    # candidate needs checking
    local: tuple[NDArray[np.uint8], ...] = ()


class MatchIndex:
    """Hashes and embeddings of known photos, with their references, labels and groups.

    Build one with :func:`wildvision.match.build_index`, load one with :func:`load_index`, pass
    it to :class:`~wildvision.Classifier` / ``classify_images(..., match_index=...)``.

    Attributes:
        hash_threshold: a PDQ distance ``<=`` this is a hash match (default 47).
        similarity_threshold: an embedding cosine ``>=`` this is an embedding match.
        mode: which matches count: ``either`` (default), ``hash``, ``embedding`` or ``both``.
        decision: the decision a photo with a match gets at least (``flag`` or ``review``).
        top_k: matches listed per photo at most.
        engine: ``auto`` (exact under :data:`APPROX_MIN` rows: photos and their views),
            ``exact`` or ``ivf``.
        nprobe: IVF lists searched per query (approximate engine; default 16: 4.0 ms per
            lookup at 1,000,000 photos, docs/match.md).
        min_inliers: keypoint pairs a local-feature check needs to call a candidate a copy
            (:mod:`wildvision.match.local`; only for an index that stores local features).
        verify: check near candidates with local features when the index has them.
    """

    def __init__(
        self,
        header: dict[str, Any] | None = None,
        *,
        references: Sequence[str] = (),
        labels: Sequence[str] = (),
        groups: Sequence[str] = (),
        hashes: NDArray[np.uint8] | None = None,
        quality: NDArray[np.uint8] | None = None,
        embeddings: NDArray[Any] | None = None,
        views: dict[str, NDArray[Any]] | None = None,
        local: dict[str, NDArray[Any]] | None = None,
        hash_threshold: int | None = None,
        similarity_threshold: float | None = None,
        mode: str | None = None,
        decision: str | None = None,
        top_k: int = 5,
        engine: str = "auto",
        nprobe: int = 16,
        min_inliers: int | None = None,
        verify: bool = True,
    ) -> None:
        head = dict(header or {})
        n = len(references)
        dim = int(head.get("embedding_dim",
                           0 if embeddings is None else int(np.shape(embeddings)[1])))
        head["embedding_dim"] = dim
        self.header = head
        self.references = [str(r) for r in references]
        self.labels = [str(v) for v in labels]
        self.groups = [str(v) for v in groups]
        self.hashes = (np.zeros((n, HASH_BYTES), np.uint8) if hashes is None
                       else np.ascontiguousarray(hashes, dtype=np.uint8))
        self.quality = (np.zeros(n, np.uint8) if quality is None
                        else np.asarray(quality, dtype=np.uint8))
        self.embeddings = (np.zeros((n, dim), np.float16) if embeddings is None
                           else np.asarray(embeddings, dtype=np.float16))
        v = views or {}
        nv = len(v.get("view_owner", ()))
        self.view_owner = np.asarray(v.get("view_owner", np.zeros(0)), np.int64).reshape(-1)
        self.view_hashes = np.ascontiguousarray(
            v.get("view_hashes", np.zeros((nv, HASH_BYTES))), dtype=np.uint8)
        self.view_quality = np.asarray(v.get("view_quality", np.zeros(nv)), np.uint8)
        self.view_embeddings = np.asarray(v.get("view_embeddings", np.zeros((nv, dim))),
                                          np.float16)
        if self.view_embeddings.size == 0:
            self.view_embeddings = self.view_embeddings.reshape(nv, dim)
        loc = local or {}
        k = int(head.get("local_keypoints", 0) or (np.shape(loc["local_points"])[1]
                                                    if "local_points" in loc else 0))
        head["local_keypoints"] = k
        arr = loc if loc else _local_rows(None, n, k)
        self.local_points = np.ascontiguousarray(arr["local_points"], np.uint16)
        self.local_descriptors = np.ascontiguousarray(arr["local_descriptors"], np.uint8)
        self.local_count = np.asarray(arr["local_count"], np.uint16)
        self.local_size = np.asarray(arr["local_size"], np.uint16)
        policy = dict(head.get("policy", {}))
        self.hash_threshold = int(hash_threshold if hash_threshold is not None
                                  else policy.get("hash_threshold", DEFAULT_HASH_THRESHOLD))
        self.similarity_threshold = float(
            similarity_threshold if similarity_threshold is not None
            else policy.get("similarity_threshold", DEFAULT_SIMILARITY_THRESHOLD))
        self.mode = str(mode or policy.get("mode", "either"))
        self.decision = str(decision or policy.get("decision", "flag"))
        self.min_inliers = int(min_inliers if min_inliers is not None
                               else policy.get("min_inliers", MIN_INLIERS))
        self.verify = verify
        self.top_k = top_k
        self.engine = engine
        self.nprobe = nprobe
        self._lock = threading.Lock()
        self._engines: _Engines | None = None
        self._validate()

    # -- consistency -----------------------------------------------------------------------
    def _validate(self) -> None:
        n = len(self.references)
        if not (len(self.labels) == len(self.groups) == n == len(self.hashes)
                == len(self.quality) == len(self.embeddings)):
            raise MatchIndexError(
                f"index arrays differ in length: {n} references, {len(self.labels)} labels, "
                f"{len(self.groups)} groups, {len(self.hashes)} hashes, {len(self.quality)} "
                f"qualities, {len(self.embeddings)} embeddings")
        if self.hashes.shape[1:] != (HASH_BYTES,):
            raise MatchIndexError(f"hashes must be (N, {HASH_BYTES}) bytes, got "
                                  f"{self.hashes.shape}")
        dim = int(self.header["embedding_dim"])
        if self.embeddings.shape[1:] != (dim,):
            raise MatchIndexError(f"embeddings must be (N, {dim}), got {self.embeddings.shape}")
        if dim and not np.isfinite(self.embeddings).all():
            raise MatchIndexError("index embeddings contain NaN or infinite values")
        nv = len(self.view_owner)
        if (len(self.view_hashes) != nv or len(self.view_quality) != nv
                or self.view_embeddings.shape != (nv, dim)
                or self.view_hashes.shape[1:] != (HASH_BYTES,)):
            raise MatchIndexError(
                f"view arrays differ: {nv} owners, hashes {self.view_hashes.shape}, "
                f"{len(self.view_quality)} qualities, embeddings {self.view_embeddings.shape}")
        if nv and (self.view_owner.min() < 0 or self.view_owner.max() >= n):
            raise MatchIndexError("a view belongs to no entry of the index")
        if dim and nv and not np.isfinite(self.view_embeddings).all():
            raise MatchIndexError("view embeddings contain NaN or infinite values")
        k = self.local_keypoints
        if (self.local_points.shape != (n, k, 2) or self.local_descriptors.shape != (n, k, 32)
                or self.local_count.shape != (n,) or self.local_size.shape != (n, 2)):
            raise MatchIndexError(
                f"local feature arrays differ: points {self.local_points.shape}, descriptors "
                f"{self.local_descriptors.shape}, counts {self.local_count.shape}, sizes "
                f"{self.local_size.shape} for {n} entries of {k} keypoints")
        if n and k and int(self.local_count.max()) > k:
            raise MatchIndexError(f"a local keypoint count exceeds {k}")
        dup = _duplicates(self.references)
        if dup:
            raise MatchIndexError(f"duplicate references in the index: {dup[:5]}"
                                  f"{' ...' if len(dup) > 5 else ''}")
        if any(not r for r in self.references):
            raise MatchIndexError("every indexed photo needs a non-empty reference")
        if not 0 <= self.hash_threshold <= 64:
            raise ConfigError(f"hash_threshold must be in 0..64, got {self.hash_threshold}")
        if not -1.0 <= self.similarity_threshold <= 1.0:
            raise ConfigError("similarity_threshold must be in -1..1, got "
                              f"{self.similarity_threshold}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.decision not in ("flag", "review"):
            raise ConfigError(f"decision must be 'flag' or 'review', got {self.decision!r}")
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.top_k < 1 or self.nprobe < 1:
            raise ConfigError("top_k and nprobe must be >= 1")
        if self.min_inliers < 4:
            raise ConfigError(f"min_inliers must be >= 4, got {self.min_inliers}")

    def __len__(self) -> int:
        return len(self.references)

    def __repr__(self) -> str:
        return (f"MatchIndex({len(self)} photos, model={self.header.get('model')!r}, "
                f"embedding_dim={self.embedding_dim}, id={id(self):#x})")

    @property
    def embedding_dim(self) -> int:
        return int(self.header["embedding_dim"])

    @property
    def view_count(self) -> int:
        """Extra views stored (the photos without their border, crops)."""
        return len(self.view_owner)

    def views(self) -> dict[str, NDArray[Any]]:
        return {"view_owner": self.view_owner, "view_hashes": self.view_hashes,
                "view_quality": self.view_quality, "view_embeddings": self.view_embeddings}

    @property
    def local_keypoints(self) -> int:
        """Keypoints stored per entry at most (0: the index has no local features)."""
        return int(self.header.get("local_keypoints", 0))

    def local(self, rows: NDArray[np.int64] | None = None) -> dict[str, NDArray[Any]]:
        """The local-feature arrays (:data:`LOCAL_ARRAYS`), of entries ``rows`` or all."""
        arrays: dict[str, NDArray[Any]] = {"local_points": self.local_points,
                  "local_descriptors": self.local_descriptors,
                  "local_count": self.local_count, "local_size": self.local_size}
        return arrays if rows is None else {k: v[rows] for k, v in arrays.items()}

    @property
    def shared(self) -> bool:
        return bool(self.header.get("shared", False))

    def entry_ids(self) -> list[str]:
        """A content id per entry: the first 16 hex digits of the sha256 of its hash and
        embedding bytes. A shared index uses them as references; the index they came from
        finds them again with ``find_ids``."""
        out = []
        for i in range(len(self)):
            h = hashlib.sha256(self.hashes[i].tobytes())
            h.update(self.embeddings[i].tobytes())
            out.append(h.hexdigest()[:16])
        return out

    def find_ids(self, ids: Iterable[str]) -> list[int]:
        """Row numbers of entries whose :meth:`entry_ids` are in ``ids``."""
        want = set(ids)
        return [i for i, e in enumerate(self.entry_ids()) if e in want]

    def policy(self) -> dict[str, Any]:
        return {"hash_threshold": self.hash_threshold,
                "similarity_threshold": self.similarity_threshold,
                "mode": self.mode, "decision": self.decision, "min_inliers": self.min_inliers}

    # -- the classifier's interface (wildvision.matching.KnownImageIndex) -------------------
    def check_model(self, package: ModelPackage, precision: str = "fp32") -> None:
        """Refuse a model whose embeddings are not those of the index (a hash-only index
        works with any model).

        Raises:
            IndexModelMismatchError: another model file made the index's embeddings.
        """
        if not self.embedding_dim:
            return
        fp = model_fingerprint(package, precision)
        if fp["embedding_sha256"] != self.header.get("embedding_sha256"):
            raise IndexModelMismatchError(
                f"the index was made with {self.header.get('model')} "
                f"{self.header.get('model_version')} ({self.header.get('precision')}, model "
                f"sha256 {str(self.header.get('embedding_sha256'))[:12]}…), not with "
                f"{fp['model']} {fp['model_version']} ({precision}, sha256 "
                f"{fp['embedding_sha256'][:12]}…): its embeddings are not comparable; "
                "rebuild the index with this model or classify with the index's model")

    def image_keys(self, image: Image.Image) -> PhotoKeys:
        """PDQ hashes of the photo and of its mirror image, and of its query views
        (:func:`~wildvision.match.views.query_views`) and theirs, with their qualities; the
        views themselves, for the classifier to embed."""
        views = tuple(query_views(image))
        hashes, quality = [], []
        for img in (image, *views):
            h, q = pdq_hash(img)
            hm, _ = pdq_hash(img, mirror=True)
            hashes += [h, hm]
            quality += [q, q]
        local = (tuple(local_source(img) for img in (image, *views))
                 if self.local_keypoints and self.verify else ())
        return PhotoKeys(tuple(hashes), tuple(quality), views, local)

    def lookup(self, keys: Sequence[Any], embeddings: NDArray[Any] | None,
               view_embeddings: Sequence[NDArray[Any] | None] | None = None
               ) -> list[tuple[Match, ...]]:
        """Matches of a batch of photos: one tuple per photo, best first.

        Args:
            keys: :meth:`image_keys` of each photo (or ``None``: embedding only; or an
                older ``(hash, mirror hash, quality)`` tuple).
            embeddings: the photos' model embeddings (N, D), or ``None`` (hash only).
            view_embeddings: per photo, the embeddings of its keys' ``views`` (or ``None``).
        """
        n = len(keys)
        if embeddings is not None and len(embeddings) != n:
            raise MatchIndexError(f"{n} keys but {len(embeddings)} embeddings")
        if view_embeddings is not None and len(view_embeddings) != n:
            raise MatchIndexError(f"{n} keys but {len(view_embeddings)} view embeddings")
        if len(self) == 0 or n == 0:
            return [() for _ in range(n)]
        eng = self._get_engines()
        cands: list[dict[int, None]] = [{} for _ in range(n)]
        qs: list[NDArray[np.float32] | None] = [None] * n  # each photo's query vectors
        if self.embedding_dim and embeddings is not None and self.mode != "hash":
            if embeddings.shape[1] != self.embedding_dim:
                raise IndexModelMismatchError(
                    f"query embeddings have {embeddings.shape[1]} dimensions, the index "
                    f"{self.embedding_dim}")
            for row in range(n):
                extra = view_embeddings[row] if view_embeddings is not None else None
                qs[row] = unit_rows(embeddings[row:row + 1] if extra is None or not len(extra)
                                    else np.concatenate([embeddings[row:row + 1], extra]))
            allq = np.concatenate([x for x in qs if x is not None])
            qrow = np.repeat(np.arange(n), [len(x) for x in qs if x is not None])
            total = len(eng.owner)
            per = 1 + -(-self.view_count // len(self))  # rows per entry at most, on average
            k = min(total, max(self.top_k, 10) * per)
            _, ids = eng.emb.search(allq, k)
            for j, row in enumerate(qrow.tolist()):
                for i in ids[j]:
                    if i >= 0:
                        cands[row][int(eng.owner[i])] = None
        qhash: list[NDArray[np.uint8] | None] = [None] * n
        if (eng.hashes is not None or eng.hash_tables is not None) and self.mode != "embedding":
            for row, key in enumerate(keys):
                hs = _key_hashes(key)
                if len(hs):
                    qhash[row] = hs
            got = [(r, h) for r, h in enumerate(qhash) if h is not None]
            if got:
                both = np.concatenate([h for _, h in got])
                part_row = np.repeat([r for r, _ in got], [len(h) for _, h in got])
                if eng.hash_tables is not None:
                    qnum, hid, _ = eng.hash_tables.range_search(both, self.hash_threshold,
                                                                APPROX_HASH_FLIPS)
                    for r, i in zip(part_row[qnum].tolist(),
                                    eng.owner[eng.hash_ids[hid]].tolist(), strict=True):
                        cands[r][i] = None
                else:
                    lims, _, hid = eng.hashes.range_search(both, self.hash_threshold + 1)
                    for part, row in enumerate(part_row.tolist()):
                        for i in hid[lims[part]:lims[part + 1]]:
                            cands[row][int(eng.owner[eng.hash_ids[i]])] = None
        out: list[tuple[Match, ...]] = []
        for row in range(n):
            ids_ = np.fromiter(cands[row], dtype=np.int64, count=len(cands[row]))
            if not len(ids_):
                out.append(())
                continue
            sims, dists = self._score(eng, ids_, qs[row], qhash[row])
            checked = self._verified(ids_, sims, dists, keys[row])
            found = []
            for j, i in enumerate(ids_.tolist()):
                sim = None if sims is None or not np.isfinite(sims[j]) else float(sims[j])
                dist = None if dists is None or dists[j] > 256 else int(dists[j])
                by_hash = dist is not None and dist <= self.hash_threshold
                by_emb = sim is not None and sim >= self.similarity_threshold
                inliers = checked.get(i)
                by_local = inliers is not None
                ok = {"either": by_hash or by_emb or by_local, "hash": by_hash,
                      "embedding": by_emb or by_local,
                      "both": by_hash and (by_emb or by_local)}[self.mode]
                if not ok:
                    continue
                by = ("both" if by_hash and (by_emb or by_local) else "hash" if by_hash
                      else "embedding" if by_emb else "local")
                found.append(Match(self.references[i], self.labels[i], self.groups[i],
                                   None if sim is None else min(1.0, max(-1.0, sim)),
                                   dist, by, inliers))
            found.sort(key=lambda m: (-(m.similarity if m.similarity is not None else -2.0),
                                      m.hash_distance if m.hash_distance is not None else 999))
            out.append(tuple(found[: self.top_k]))
        return out

    def _verified(self, ids: NDArray[np.int64], sims: NDArray[np.float32] | None,
                  dists: NDArray[np.int64] | None, key: Any) -> dict[int, int]:
        """Entries among candidates ``ids`` that a local-feature check makes copies of the
        query, with their inliers: those that pass no threshold that already decides (the
        similarity; in mode ``either`` also the hash), are at least
        :data:`VERIFY_FLOOR` similar and have keypoints (the :data:`VERIFY_TOP` most similar);
        the query's keypoints are found only when there is one."""
        if (not self.verify or not self.local_keypoints or sims is None or self.mode == "hash"
                or not getattr(key, "local", ())):
            return {}
        passed = sims >= self.similarity_threshold  # the check stands in for the embedding
        if dists is not None and self.mode == "either":
            passed |= dists <= self.hash_threshold
        todo = np.flatnonzero(~passed & (sims >= VERIFY_FLOOR) & (self.local_count[ids] >= 5))
        if not len(todo):
            return {}
        todo = todo[np.argsort(-sims[todo], kind="stable")[:VERIFY_TOP]]
        queries: list[LocalFeatures] = [local_features(g, QUERY_KEYPOINTS) for g in key.local]
        out: dict[int, int] = {}
        for i in ids[todo].tolist():
            ref = unpack(self.local_points[i], self.local_descriptors[i], self.local_count[i],
                         self.local_size[i])
            best = 0
            for q in queries:
                v = verify(q, ref)
                if accepted(v, self.min_inliers):
                    best = max(best, v.inliers)
            if best:
                out[i] = best
        return out

    def _score(self, eng: _Engines, ids: NDArray[np.int64], q: NDArray[np.float32] | None,
               qh: NDArray[np.uint8] | None
               ) -> tuple[NDArray[np.float32] | None, NDArray[np.int64] | None]:
        """Best similarity (-inf: no embedding) and smallest hash distance (999: no usable
        hash) of entries ``ids`` over their photo and views, against the query's vectors
        ``q`` and hashes ``qh``."""
        counts = eng.view_start[ids + 1] - eng.view_start[ids]
        total = int(counts.sum())
        first = np.repeat(eng.view_start[ids], counts)
        offset = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        vrows = eng.view_order[first + offset]
        pos = np.concatenate([np.arange(len(ids)), np.repeat(np.arange(len(ids)), counts)])
        sims = dists = None
        if q is not None:
            e = np.concatenate([self.embeddings[ids], self.view_embeddings[vrows]])
            s = (e.astype(np.float32) @ q.T).max(axis=1)
            s[~e.any(axis=1)] = -np.inf  # an entry without an embedding (a hash-only one)
            sims = np.full(len(ids), -np.inf, np.float32)
            np.maximum.at(sims, pos, s)
        if qh is not None:
            h = np.concatenate([self.hashes[ids], self.view_hashes[vrows]])
            good = np.concatenate([self.quality[ids], self.view_quality[vrows]]) >= MIN_QUALITY
            d = hamming(h[:, None, :], qh[None, :, :]).min(axis=1)
            d[~good] = 999
            dists = np.full(len(ids), 999, np.int64)
            np.minimum.at(dists, pos, d)
        return sims, dists

    # -- search engines ---------------------------------------------------------------------
    def _engine_kind(self) -> str:
        if self.engine == "auto":
            # rows searched: photos and their views
            return "exact" if len(self) + self.view_count < APPROX_MIN else "ivf"
        return self.engine

    def _get_engines(self) -> _Engines:
        with self._lock:
            if self._engines is None:
                self._engines = self._build_engines()
            return self._engines

    def _build_engines(self) -> _Engines:
        faiss = _faiss()
        eng = _Engines()
        kind = self._engine_kind()
        n = len(self)
        nv = self.view_count
        eng.owner = np.concatenate([np.arange(n, dtype=np.int64), self.view_owner])
        eng.view_order = np.argsort(self.view_owner, kind="stable").astype(np.int64)
        eng.view_start = np.searchsorted(self.view_owner[eng.view_order],
                                         np.arange(n + 1)).astype(np.int64)
        if self.embedding_dim:
            # entries, then views; float16, converted chunk by chunk (no float32 copy of all)
            parts = [self.embeddings, self.view_embeddings] if nv else [self.embeddings]
            d = self.embedding_dim
            if kind == "exact":
                eng.emb = faiss.IndexFlatIP(d)
            else:
                rows = n + nv
                nlist = int(min(max(16, 4 * np.sqrt(rows)), max(1, n // 39)))
                quant = faiss.IndexFlatIP(d)
                ivf = faiss.IndexIVFScalarQuantizer(quant, d, nlist,
                                                    faiss.ScalarQuantizer.QT_8bit,
                                                    faiss.METRIC_INNER_PRODUCT)
                rng = np.random.default_rng(0)
                x = self.embeddings
                sample = x if n <= 40 * nlist else x[np.sort(rng.choice(n, 40 * nlist,
                                                                      replace=False))]
                ivf.train(np.ascontiguousarray(sample, dtype=np.float32))
                ivf.nprobe = min(self.nprobe, nlist)
                eng.emb = ivf
            for x in parts:
                for s in range(0, len(x), 65536):
                    eng.emb.add(np.ascontiguousarray(x[s:s + 65536], dtype=np.float32))
            if kind != "exact":
                # Rows were assigned to their lists with the exact (flat) quantizer; queries
                # find their lists through an HNSW graph over the same centroids: a flat
                # search of 4,000 centroids of 1,280 dimensions reads 20 MB per query
                # (1.7 ms), the graph a few hundred of them.
                hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
                hnsw.add(quant.reconstruct_n(0, quant.ntotal))
                hnsw.hnsw.efSearch = max(HNSW_EF_SEARCH, self.nprobe)
                eng.emb.quantizer = hnsw
                eng.keep = (quant, hnsw)  # the IVF index does not own them
            eng.emb_kind = kind
        good = np.flatnonzero(np.concatenate([self.quality, self.view_quality]) >= MIN_QUALITY)
        if len(good):
            good_hashes = np.ascontiguousarray(
                (np.concatenate([self.hashes, self.view_hashes]) if nv else self.hashes)[good])
            if kind == "exact":
                hidx = faiss.IndexBinaryFlat(8 * HASH_BYTES)
                hidx.add(good_hashes)
                eng.hashes = hidx
            else:
                eng.hash_tables = HashTables(good_hashes)
            eng.hash_ids = good.astype(np.int64)
        return eng

    def _changed(self) -> None:
        with self._lock:
            self._engines = None

    # -- editing ----------------------------------------------------------------------------
    def add(self, references: Sequence[str], labels: Sequence[str], groups: Sequence[str],
            hashes: NDArray[np.uint8], quality: NDArray[np.uint8],
            embeddings: NDArray[Any] | None, views: dict[str, NDArray[Any]] | None = None,
            local: dict[str, NDArray[Any]] | None = None) -> None:
        """Append entries (all or none: a duplicate reference raises before any change).

        ``views``: their extra views (:data:`VIEW_ARRAYS`; ``view_owner`` numbers the new
        entries from 0). ``local``: their local features (:data:`LOCAL_ARRAYS`, for an index
        that stores them; without, the new entries get none and match without the check).

        Raises:
            MatchIndexError: a reference already in the index or given twice; wrong shapes.
        """
        emb = (np.zeros((len(references), 0), np.float16) if embeddings is None
               else unit_rows(embeddings).astype(np.float16) if len(references) else
               np.zeros((0, self.embedding_dim), np.float16))
        if emb.shape[1] != self.embedding_dim:
            raise MatchIndexError(f"embeddings of {emb.shape[1]} dimensions for an index of "
                                  f"{self.embedding_dim}")
        v = views or {}
        nv = len(v.get("view_owner", ()))
        vemb = v.get("view_embeddings")
        vemb = (unit_rows(vemb).astype(np.float16) if vemb is not None and nv
                and self.embedding_dim else np.zeros((nv, self.embedding_dim), np.float16))
        all_views = {
            "view_owner": np.concatenate([self.view_owner, np.asarray(
                v.get("view_owner", np.zeros(0)), np.int64).reshape(-1) + len(self)]),
            "view_hashes": np.concatenate([self.view_hashes, np.asarray(
                v.get("view_hashes", np.zeros((0, HASH_BYTES))), np.uint8)
                .reshape(-1, HASH_BYTES)]),
            "view_quality": np.concatenate([self.view_quality, np.asarray(
                v.get("view_quality", np.zeros(0)), np.uint8).reshape(-1)]),
            "view_embeddings": np.concatenate([self.view_embeddings, vemb]),
        }
        new_local = _local_rows(local, len(references), self.local_keypoints)
        all_local = {k: np.concatenate([v, new_local[k]]) for k, v in self.local().items()}
        new = MatchIndex(dict(self.header), references=list(self.references) + list(references),
                         labels=list(self.labels) + list(labels),
                         groups=list(self.groups) + list(groups),
                         hashes=np.concatenate([self.hashes, np.asarray(hashes, np.uint8)
                                                .reshape(-1, HASH_BYTES)]),
                         quality=np.concatenate([self.quality, np.asarray(quality, np.uint8)]),
                         embeddings=np.concatenate([self.embeddings, emb]), views=all_views,
                         local=all_local)
        self.references, self.labels, self.groups = new.references, new.labels, new.groups
        self.hashes, self.quality, self.embeddings = new.hashes, new.quality, new.embeddings
        self._set_views(new.views())
        self._set_local(new.local())
        self._changed()

    def _set_views(self, views: dict[str, NDArray[Any]]) -> None:
        self.view_owner, self.view_hashes = views["view_owner"], views["view_hashes"]
        self.view_quality, self.view_embeddings = views["view_quality"], views["view_embeddings"]

    def _set_local(self, local: dict[str, NDArray[Any]]) -> None:
        self.local_points, self.local_descriptors = local["local_points"], \
            local["local_descriptors"]
        self.local_count, self.local_size = local["local_count"], local["local_size"]

    def _views_of(self, rows: NDArray[np.int64], *, embeddings: bool = True
                  ) -> dict[str, NDArray[Any]]:
        """The views of entries ``rows``, their owners renumbered to positions in ``rows``."""
        pos = np.full(len(self), -1, np.int64)
        pos[np.asarray(rows, np.int64)] = np.arange(len(rows))
        keep = np.flatnonzero(pos[self.view_owner] >= 0) if self.view_count else \
            np.zeros(0, np.int64)
        return {"view_owner": pos[self.view_owner[keep]],
                "view_hashes": self.view_hashes[keep], "view_quality": self.view_quality[keep],
                "view_embeddings": (self.view_embeddings[keep] if embeddings
                                    else np.zeros((len(keep), 0), np.float16))}

    def remove(self, references: Iterable[str]) -> int:
        """Remove entries by reference; returns how many were removed.

        Raises:
            MatchIndexError: a reference is not in the index (nothing is removed).
        """
        drop = set(references)
        missing = drop - set(self.references)
        if missing:
            raise MatchIndexError(f"not in the index: {sorted(missing)[:5]}")
        keep = np.array([r not in drop for r in self.references], dtype=bool)
        self._take(np.flatnonzero(keep))
        return int((~keep).sum())

    def _take(self, rows: NDArray[np.int64]) -> None:
        self._set_views(self._views_of(rows))
        self._set_local(self.local(rows))
        self.references = [self.references[i] for i in rows]
        self.labels = [self.labels[i] for i in rows]
        self.groups = [self.groups[i] for i in rows]
        self.hashes = self.hashes[rows]
        self.quality = self.quality[rows]
        self.embeddings = self.embeddings[rows]
        self._changed()

    def merge(self, other: MatchIndex, *, skip_duplicates: bool = False) -> MatchIndex:
        """A new index with this index's entries and ``other``'s.

        Args:
            other: an index made with the same model file, or a hash-only one (its entries
                get no embedding here: they match by hash only).
            skip_duplicates: keep this index's entry when a reference is in both (default:
                raise).

        Raises:
            IndexModelMismatchError: the two were made with different models.
            MatchIndexError: a reference in both (without ``skip_duplicates``).
        """
        hash_only = other.embedding_dim == 0  # its entries match by hash only here
        if (not hash_only and (self.embedding_dim != other.embedding_dim
                               or self.header.get("embedding_sha256")
                               != other.header.get("embedding_sha256"))):
            raise IndexModelMismatchError(
                f"cannot merge an index of {other.header.get('model')} "
                f"{other.header.get('model_version')} (embedding size {other.embedding_dim}) "
                f"into one of {self.header.get('model')} {self.header.get('model_version')} "
                f"(embedding size {self.embedding_dim})")
        rows = np.arange(len(other))
        if skip_duplicates:
            have = set(self.references)
            rows = np.array([i for i, r in enumerate(other.references) if r not in have],
                            dtype=np.int64)
        out = self.copy()
        out.header["shared"] = self.shared or other.shared
        out.add([other.references[i] for i in rows], [other.labels[i] for i in rows],
                [other.groups[i] for i in rows], other.hashes[rows], other.quality[rows],
                (np.zeros((len(rows), self.embedding_dim), np.float32) if hash_only
                 else other.embeddings[rows].astype(np.float32)) if self.embedding_dim else None,
                views=_with_dim(other._views_of(rows), self.embedding_dim),
                local=(other.local(rows) if other.local_keypoints == self.local_keypoints
                       else None))
        return out

    def copy(self) -> MatchIndex:
        return MatchIndex(json.loads(json.dumps(self.header)), references=self.references,
                          labels=self.labels, groups=self.groups, hashes=self.hashes.copy(),
                          quality=self.quality.copy(), embeddings=self.embeddings.copy(),
                          views={k: v.copy() for k, v in self.views().items()},
                          local={k: v.copy() for k, v in self.local().items()},
                          hash_threshold=self.hash_threshold,
                          similarity_threshold=self.similarity_threshold, mode=self.mode,
                          decision=self.decision, top_k=self.top_k, engine=self.engine,
                          nprobe=self.nprobe, min_inliers=self.min_inliers,
                          verify=self.verify)

    def for_sharing(self, *, embeddings: bool = True, local: bool = True) -> MatchIndex:
        """A copy to give to another organisation: each reference replaced by its content id
        (:meth:`entry_ids`), each label by its group; ``embeddings=False`` also drops the
        embeddings and local features (a hash-only list), ``local=False`` only the local
        features (keypoint positions and descriptors say more about a photo's layout than
        a hash: docs/match.md). Entries whose hash is of too low quality and that have no
        embedding are left out (nothing could match them)."""
        ids = self.entry_ids()
        seen: set[str] = set()
        rows = []
        for i in range(len(self)):
            usable = (embeddings and self.embedding_dim) or self.quality[i] >= MIN_QUALITY
            if usable and ids[i] not in seen:  # the same photo indexed twice is shared once
                seen.add(ids[i])
                rows.append(i)
        head = {k: v for k, v in self.header.items() if k != "built_from"}
        head["shared"] = True
        if not embeddings:
            for k in ("model", "model_version", "precision", "embedding_sha256"):
                head.pop(k, None)
            head["embedding_dim"] = 0
        keep_local = embeddings and local and self.local_keypoints
        if not keep_local:
            head["local_keypoints"] = 0
        sel = np.asarray(rows, dtype=np.int64)
        return MatchIndex(head, references=[ids[i] for i in rows],
                          labels=[self.groups[i] for i in rows],
                          groups=[self.groups[i] for i in rows], hashes=self.hashes[sel],
                          quality=self.quality[sel],
                          embeddings=self.embeddings[sel] if embeddings else None,
                          views=self._views_of(sel, embeddings=embeddings),
                          local=self.local(sel) if keep_local else None)

    # -- files (read back by wildvision.match.store) ------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the index to one ``.npz`` file, atomically (temporary file + rename)."""
        path = Path(path)
        head = dict(self.header)
        head.update(format=INDEX_FORMAT, format_version=INDEX_FORMAT_VERSION, count=len(self),
                    policy=self.policy(), hash="pdq")
        head.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(
            timespec="seconds"))
        arrays = {
            "header": np.frombuffer(json.dumps(head, sort_keys=True).encode("utf-8"), np.uint8),
            "references": str_array(self.references),
            "labels": str_array(self.labels),
            "groups": str_array(self.groups),
            "hashes": self.hashes,
            "quality": self.quality,
            "embeddings": self.embeddings,
        }
        if self.view_count:
            arrays.update(self.views())
        if self.local_keypoints:
            arrays.update(self.local())
        atomic_write(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]
        return path

    def write_pdq_list(self, path: str | os.PathLike[str] | None, fmt: str = "te") -> str:
        """The good-quality PDQ hashes as text, for tools that read plain hash lists.

        Args:
            path: file to write atomically (``None``: only return the text).
            fmt: ``te``: one ``pdq <hex>`` line per hash, the line format python-threatexchange's
                local-file exchange (``LocalFileSignalExchangeAPI``) reads; ``csv``:
                ``<hex>,<quality>,<group>``, the ``hash,quality,name`` layout of the reference
                ``pdq-photo-hasher`` output that its ``hashtool256``/``mih-query`` tools read
                (the group in the name column, never the reference or label).
        """
        rows = np.flatnonzero(self.quality >= MIN_QUALITY)
        if fmt == "te":
            lines = [f"pdq {to_hex(self.hashes[i].tobytes())}" for i in rows]
        elif fmt == "csv":
            lines = [f"{to_hex(self.hashes[i].tobytes())},{int(self.quality[i])},"
                     f"{csv_safe(self.groups[i])}" for i in rows]
        else:
            raise ConfigError(f"PDQ list format must be 'te' or 'csv', got {fmt!r}")
        text = "".join(line + "\n" for line in lines)
        if path is not None:
            data = text.encode("utf-8")
            atomic_write(Path(path), lambda f: f.write(data))
        return text


def _with_dim(views: dict[str, NDArray[Any]], dim: int) -> dict[str, NDArray[Any]]:
    """Views for an index of embedding size ``dim`` (a hash-only index's views: zeros)."""
    emb = views["view_embeddings"]
    if emb.shape[1] != dim:
        views = {**views, "view_embeddings": np.zeros((len(emb), dim), np.float16)}
    return views


def _local_rows(local: dict[str, NDArray[Any]] | None, n: int, k: int
                ) -> dict[str, NDArray[Any]]:
    """Local-feature arrays for ``n`` new entries of an index storing ``k`` keypoints each:
    ``local`` when given in that shape, else empty rows (count 0)."""
    if local is not None and k and np.shape(local["local_points"])[1:] == (k, 2):
        return {"local_points": np.asarray(local["local_points"], np.uint16),
                "local_descriptors": np.asarray(local["local_descriptors"], np.uint8),
                "local_count": np.asarray(local["local_count"], np.uint16),
                "local_size": np.asarray(local["local_size"], np.uint16)}
    return stack([NO_KEYPOINTS] * n, k)


def _key_hashes(key: Any) -> NDArray[np.uint8]:
    """The good-quality hashes (M x 32) of a query's keys (:class:`PhotoKeys`, an older
    ``(hash, mirror hash, quality)`` tuple, or ``None``)."""
    if key is None:
        return np.zeros((0, HASH_BYTES), np.uint8)
    if isinstance(key, PhotoKeys):
        pairs = list(zip(key.hashes, key.quality, strict=True))
    else:
        pairs = [(key[0], key[2]), (key[1], key[2])]
    good = [np.frombuffer(h, np.uint8) for h, q in pairs if q >= MIN_QUALITY]
    return np.array(good, np.uint8).reshape(-1, HASH_BYTES)


def _duplicates(values: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    dup: list[str] = []
    for v in values:
        if v in seen:
            dup.append(v)
        seen.add(v)
    return dup
