"""Dataset tooling: manifests, label mapping to the taxonomy, leak-free splits, checks, cards
and benchmark suites.

The manifest is the contract between indexing, splitting, training and benchmarking; see
:mod:`wildvision.data.manifest`. Core install only (numpy, Pillow); YAML files (label maps,
suites) need ``pyyaml`` (in the ``[train]`` and ``[bench]`` extras); the torch ``Dataset``
(:mod:`wildvision.data.torch_dataset`) needs the ``[train]`` extra.

Modules: :mod:`~wildvision.data.index` (folder -> manifest), :mod:`~wildvision.data.labels`
(label maps), :mod:`~wildvision.data.phash` (perceptual hash, near-duplicate search),
:mod:`~wildvision.data.split` (group-aware splits, leakage), :mod:`~wildvision.data.check`,
:mod:`~wildvision.data.card` (dataset cards), :mod:`~wildvision.data.suites`.
Everything but the manifest is imported lazily, so ``wildvision --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from .manifest import MANIFEST_FIELDS as MANIFEST_FIELDS
from .manifest import Manifest as Manifest
from .manifest import ManifestRow as ManifestRow
from .manifest import read_manifest as read_manifest
from .manifest import write_manifest as write_manifest

_LAZY = {
    "index_folder": "index",
    "load_label_map": "labels",
    "apply_label_map": "labels",
    "LabelMap": "labels",
    "SplitConfig": "split",
    "split_rows": "split",
    "leakage": "split",
    "check_manifest": "check",
    "Suite": "suites",
    "load_suite": "suites",
    "load_suites": "suites",
    "phash": "phash",
    "hamming": "phash",
}

__all__ = [
    "MANIFEST_FIELDS",
    "LabelMap",
    "Manifest",
    "ManifestRow",
    "SplitConfig",
    "Suite",
    "apply_label_map",
    "check_manifest",
    "hamming",
    "index_folder",
    "leakage",
    "load_label_map",
    "load_suite",
    "load_suites",
    "phash",
    "read_manifest",
    "split_rows",
    "write_manifest",
]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'wildvision.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{mod}", __name__), name)
