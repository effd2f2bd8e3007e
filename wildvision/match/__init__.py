"""Known-photo matching: find re-posted photos of confirmed listings, across accounts and
platforms, from their PDQ hashes and model embeddings (never the photos themselves).

Needs the ``[match]`` extra (``faiss-cpu``, ``pdqhash``); nothing heavy is imported until used.

Example:
    >>> from wildvision.match import build_index, photos_from_folder, load_index
    >>> index, failed = build_index(photos_from_folder("confirmed/"))  # doctest: +SKIP
    >>> index.save("known.npz")  # doctest: +SKIP
    >>> import wildvision
    >>> wildvision.classify_images(paths, match_index=load_index("known.npz"))  # doctest: +SKIP

See docs/match.md for the file format, the thresholds and the sharing workflow.
"""

from __future__ import annotations

from typing import Any

from ..matching import KnownImageIndex as KnownImageIndex
from ..matching import Match as Match

__all__ = [
    "KnownImageIndex",
    "KnownPhoto",
    "Match",
    "MatchIndex",
    "add_photos",
    "build_index",
    "load_index",
    "pdq_hash",
    "photos_from_folder",
    "photos_from_manifest",
    "read_pdq_list",
    "trim_borders",
]

_LAZY = {
    "MatchIndex": "index", "load_index": "store", "read_pdq_list": "store",
    "KnownPhoto": "build", "add_photos": "build", "build_index": "build",
    "photos_from_folder": "build", "photos_from_manifest": "build",
    "pdq_hash": "pdq", "trim_borders": "views",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
