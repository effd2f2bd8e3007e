"""Dataset tooling: manifests, label mapping to the taxonomy, leak-free splits, checks.

The manifest is the contract between indexing, splitting, training and benchmarking; see
:mod:`wildvision.data.manifest`. Core install only (numpy, Pillow); YAML label maps need
``pyyaml`` (in the ``[train]`` and ``[bench]`` extras).
"""

from .manifest import MANIFEST_FIELDS as MANIFEST_FIELDS
from .manifest import Manifest as Manifest
from .manifest import ManifestRow as ManifestRow
from .manifest import read_manifest as read_manifest
from .manifest import write_manifest as write_manifest

__all__ = ["MANIFEST_FIELDS", "Manifest", "ManifestRow", "read_manifest", "write_manifest"]
