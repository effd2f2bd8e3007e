"""Label maps: dataset labels (folder names) -> wildvision taxonomy fine labels (and groups).

A label map is a YAML (or JSON) file::

    # optional: per-source overrides, checked before the global map
    sources:
      pet_shops:
        product: consumer_product
    labels:
      ivory_artifact: ivory_carving
      statue: statue_figurine
      figurine: statue_figurine
      live_tiger: live_tiger

Every fine label must exist in :mod:`wildvision.taxonomy` (register new ones first with
:func:`wildvision.taxonomy.register_label`). Mapping a manifest with a label the map does not
know is an error that lists every unknown ``source/label`` — nothing is silently dropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError, MissingExtraError
from .manifest import ManifestRow

__all__ = ["LabelMap", "apply_label_map", "load_label_map", "load_yaml"]


def load_yaml(path: str | os.PathLike[str]) -> Any:
    """Read a YAML file (or a ``.json`` file without needing pyyaml).

    Raises:
        DataError: missing or unparsable file.
        MissingExtraError: pyyaml is not installed.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}: invalid JSON ({e})") from e
    try:
        import yaml
    except ImportError:
        raise MissingExtraError("pyyaml", "bench", "reading YAML files") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DataError(f"{p}: invalid YAML ({e})") from e


@dataclass(frozen=True)
class LabelMap:
    """Dataset label -> fine label, with optional per-source overrides.

    Attributes:
        labels: global ``dataset label -> fine label``.
        sources: ``source -> {dataset label -> fine label}``, checked first.
        path: where it was read from (for messages).
    """

    labels: Mapping[str, str]
    sources: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    path: str = "<label map>"

    def __post_init__(self) -> None:
        from ..taxonomy import fine_label

        bad = []
        targets = list(self.labels.items())
        for src, m in self.sources.items():
            targets += [(f"{src}/{k}", v) for k, v in m.items()]
        for key, target in targets:
            try:
                fine_label(target)
            except ConfigError:
                bad.append(f"{key} -> {target}")
        if bad:
            from ..taxonomy import FINE_LABELS

            raise DataError(
                f"{self.path}: {len(bad)} mapping(s) to fine labels not in the taxonomy: "
                f"{'; '.join(bad)}. Known fine labels: {', '.join(FINE_LABELS)}"
            )

    def lookup(self, source: str, label: str) -> str | None:
        """The fine label of ``label`` from ``source``, or ``None`` if unmapped."""
        per_source = self.sources.get(source)
        if per_source is not None and label in per_source:
            return per_source[label]
        return self.labels.get(label)

    def unknown(self, pairs: Iterable[tuple[str, str]]) -> list[str]:
        """``source/label`` strings (sorted, unique) that this map cannot map."""
        return sorted({f"{s}/{lab}" if s else lab for s, lab in pairs
                       if self.lookup(s, lab) is None})

    def check_known(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Raise :class:`DataError` listing every ``(source, label)`` the map does not know."""
        missing = self.unknown(pairs)
        if missing:
            raise DataError(
                f"{self.path}: {len(missing)} dataset label(s) not in the label map: "
                f"{', '.join(missing)} (add them under 'labels:' or 'sources:')"
            )


def _str_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise DataError(f"{where}: expected a mapping of dataset label -> fine label")
    out = {}
    for k, v in value.items():
        if not isinstance(v, str) or not str(k):
            raise DataError(f"{where}: {k!r} -> {v!r}: fine labels must be strings")
        out[str(k)] = v
    return out


def load_label_map(path: str | os.PathLike[str]) -> LabelMap:
    """Read a label map file (see the module docstring).

    Raises:
        DataError: unreadable file, wrong structure, or targets not in the taxonomy.
    """
    data = load_yaml(path)
    where = str(path)
    if not isinstance(data, Mapping) or "labels" not in data:
        raise DataError(f"{where}: expected a mapping with a 'labels:' section")
    unknown_keys = set(data) - {"labels", "sources", "description"}
    if unknown_keys:
        raise DataError(f"{where}: unknown keys {sorted(unknown_keys)}; "
                        "expected labels, sources, description")
    labels = _str_map(data["labels"], f"{where}: labels")
    sources_raw = data.get("sources") or {}
    if not isinstance(sources_raw, Mapping):
        raise DataError(f"{where}: 'sources' must map source -> {{label: fine label}}")
    sources = {str(s): _str_map(m, f"{where}: sources.{s}") for s, m in sources_raw.items()}
    return LabelMap(labels, sources, where)


def apply_label_map(rows: Iterable[ManifestRow], label_map: LabelMap) -> list[ManifestRow]:
    """Fill ``fine_label`` and ``group`` of every row.

    Raises:
        DataError: some rows have labels the map does not know (all listed).
    """
    from ..taxonomy import group_of

    rows = list(rows)
    label_map.check_known((r.source, r.label) for r in rows)
    out = []
    for r in rows:
        fine = label_map.lookup(r.source, r.label)
        assert fine is not None  # check_known passed
        out.append(r.with_(fine_label=fine, group=group_of(fine)))
    return out
