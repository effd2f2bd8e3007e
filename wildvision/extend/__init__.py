"""Extend an installed model package with new labels (or more photos of its labels), with
the core install only: the new photos are embedded with the base model's own ``embedding``
output and a new head is fitted in numpy on them and the base package's extension bank
(:mod:`wildvision.bank`). The result is an ordinary model package with its lineage in the
card. CLI: ``wildvision extend``; guide: docs/extend.md.
"""

from __future__ import annotations

from .data import NewData, NewPhoto, parse_group_specs, read_new_data
from .drop import drop_labels
from .extension import MIN_PHOTOS, ExtensionResult, Policy, extend_model

__all__ = [
    "MIN_PHOTOS",
    "ExtensionResult",
    "NewData",
    "NewPhoto",
    "Policy",
    "drop_labels",
    "extend_model",
    "parse_group_specs",
    "read_new_data",
]
