"""Known-photo matches in classification results: the :class:`Match` record and the interface
a known-photo index offers the :class:`~wildvision.predict.Classifier`.

The index itself (PDQ hashes, embeddings, FAISS search, the file format) lives in
:mod:`wildvision.match` behind the ``[match]`` extra; the core only calls the two methods of
:class:`KnownImageIndex`, so it never imports that subpackage. Pass a loaded index:

    >>> from wildvision.match import load_index  # doctest: +SKIP
    >>> classify_images(paths, match_index=load_index("known.npz"))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from .modelpack import ModelPackage

__all__ = ["KnownImageIndex", "Match"]


@dataclass(frozen=True)
class Match:
    """A known photo that a classified photo matches.

    Attributes:
        reference: the indexed photo's reference (a case id, a listing URL, or an opaque entry
            id in a shared index).
        label: its label (the group only, in a shared index).
        group: its taxonomy group (``ivory``, ``live_protected`` ...).
        similarity: cosine similarity of the two model embeddings (-1..1), ``None`` when the
            index holds no embeddings (a hash-only list).
        hash_distance: Hamming distance of the PDQ hashes (0..256; the smaller of the photo's
            and its mirror image's), ``None`` when either hash is of too low quality.
        by: what matched: ``"hash"``, ``"embedding"``, ``"both"`` (hash and embedding or
            local), or ``"local"``: the embeddings are close but under the threshold, and a
            local-feature check (:mod:`wildvision.match.local`) found the query to be a
            rotated, cropped or written-on copy.
        inliers: for ``"local"`` matches, the keypoint pairs one rotation + scale + shift
            explains (at least the index's ``min_inliers``); ``None`` otherwise.
    """

    reference: str
    label: str
    group: str
    similarity: float | None
    hash_distance: int | None
    by: str
    inliers: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "label": self.label,
            "group": self.group,
            "similarity": None if self.similarity is None else round(self.similarity, 6),
            "hash_distance": self.hash_distance,
            "by": self.by,
            "inliers": self.inliers,
        }


@runtime_checkable
class KnownImageIndex(Protocol):
    """What the classifier needs from a known-photo index (:class:`wildvision.match.MatchIndex`).

    ``decision`` (``"flag"`` or ``"review"``) is the decision a photo with at least one match
    gets at least: a match raises the decision, never lowers it.
    """

    decision: str

    def check_model(self, package: ModelPackage, precision: str) -> None:
        """Raise :class:`~wildvision.errors.IndexModelMismatchError` when the index's
        embeddings were not made by this model file."""

    def image_keys(self, image: Image.Image) -> Any:
        """Per-image hash keys, computed in the decode threads from the decoded image. When
        the keys have a ``views`` attribute (a sequence of PIL images: e.g. the photo
        without its border), the classifier embeds those views too and passes their
        embeddings to :meth:`lookup` as ``view_embeddings``."""

    def lookup(self, keys: Sequence[Any], embeddings: np.ndarray | None,
               view_embeddings: Sequence[np.ndarray | None] | None = None
               ) -> list[tuple[Match, ...]]:
        """The matches of a batch (one tuple per image, best first; empty when none passes
        the index's thresholds); ``view_embeddings[i]``: the embeddings (V x D) of image
        ``i``'s ``views``, or ``None``."""
