"""Benchmark suites: named, versioned selections of a manifest (``wildvision bench --suite``).

A suites file (YAML or JSON), e.g. ``datasets/wildvision-ref/suites.yaml``::

    manifest: manifest.csv          # default manifest of every suite, relative to this file
    suites:
      ivory-vs-lookalikes:
        description: Ivory carvings against the legal look-alikes
        fine_labels: [ivory_carving, ceramics, statue_figurine, tableware, bone_horn_craft]
        positive_groups: [ivory]    # what a detector should flag (informational for bench)
      met-ivory:
        sources: [met_ivory]
      loso-caltech101:
        holdout_source: caltech101  # leave-one-source-out

Selection keys (all optional; a row must pass every key given):

``fine_labels`` / ``groups``  the row's fine label is listed, or its group is (either)
``sources`` / ``exclude_sources``  the row's source is / is not listed
``split``  ``test`` (default), ``val``, ``train`` or ``all`` (every row that has a split)
``holdout_source``  leave-one-source-out: the suite's test rows are *all* readable rows of
    that source, whatever their split; the model must have been trained on a split made with
    ``wildvision data split MANIFEST --holdout-source SOURCE`` (:meth:`Suite.train_rows`
    gives its training rows). ``split`` does not apply.

Other keys: ``description``, ``positive_groups``, ``manifest`` (overrides the file's).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from .manifest import SPLITS, Manifest, ManifestRow, read_manifest

__all__ = ["SUITES_ENV", "Suite", "default_suites_file", "load_suite", "load_suites"]

SUITES_ENV = "WILDVISION_SUITES"
_SELECT_KEYS = {"fine_labels", "groups", "sources", "exclude_sources", "split", "holdout_source"}
_KEYS = _SELECT_KEYS | {"description", "positive_groups", "manifest", "name"}


@dataclass(frozen=True)
class Suite:
    """A named selection of manifest rows for benchmarking.

    Attributes:
        name: the suite name.
        description: one line for reports.
        fine_labels, groups: keep rows whose fine label, or group, is listed (empty: any).
        sources, exclude_sources: keep rows from / not from these sources (empty: any).
        split: ``train``/``val``/``test``/``all``.
        holdout_source: leave-one-source-out source, or ``None``.
        positive_groups: the groups a detector should flag on this suite (for reports).
        manifest: the default manifest file (absolute), or ``None``.
        path: the suites file this came from, if any.
    """

    name: str
    description: str = ""
    fine_labels: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    exclude_sources: tuple[str, ...] = ()
    split: str = "test"
    holdout_source: str | None = None
    positive_groups: tuple[str, ...] = ()
    manifest: Path | None = None
    path: Path | None = None

    def __post_init__(self) -> None:
        from ..taxonomy import GROUP_NAMES, fine_label

        where = f"suite {self.name!r}"
        for lab in self.fine_labels:
            try:
                fine_label(lab)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
        for g in (*self.groups, *self.positive_groups):
            if g not in GROUP_NAMES:
                raise ConfigError(f"{where}: unknown group {g!r}; groups: {', '.join(GROUP_NAMES)}")
        if self.split not in (*SPLITS, "all"):
            raise ConfigError(f"{where}: split must be train, val, test or all, not {self.split!r}")
        if self.holdout_source is not None and self.sources:
            raise ConfigError(f"{where}: give either holdout_source or sources, not both")

    def matches(self, row: ManifestRow) -> bool:
        """Whether ``row`` is one of this suite's evaluation rows."""
        if not row.readable:
            return False
        if self.holdout_source is not None:
            if row.source != self.holdout_source:
                return False
        else:
            if self.split == "all":
                if not row.split:
                    return False
            elif row.split != self.split:
                return False
        if (self.fine_labels or self.groups) and not (
            row.fine_label in self.fine_labels or row.group in self.groups
        ):
            return False
        if self.sources and row.source not in self.sources:
            return False
        return row.source not in self.exclude_sources

    def select(self, manifest: Manifest) -> Manifest:
        """The suite's evaluation rows of ``manifest``.

        Raises:
            DataError: no row matches (a wrong manifest, or a suite that selects nothing).
        """
        out = manifest.filter(self.matches)
        if not len(out):
            raise DataError(f"suite {self.name!r} selects no rows of this manifest "
                            f"({len(manifest)} rows)")
        return out

    def train_rows(self, manifest: Manifest) -> Manifest:
        """Leave-one-source-out: the train and val rows that are not from the held-out source.

        Raises:
            DataError: not a leave-one-source-out suite.
        """
        if self.holdout_source is None:
            raise DataError(f"suite {self.name!r} has no holdout_source")
        src = self.holdout_source
        return manifest.filter(lambda r: r.readable and r.source != src
                               and r.split in ("train", "val"))

    def load_manifest(self, data_root: str | os.PathLike[str] | None = None) -> Manifest:
        """Read the suite's default manifest.

        Raises:
            DataError: the suite names no manifest, or it cannot be read.
        """
        if self.manifest is None:
            raise DataError(f"suite {self.name!r} names no manifest; pass one explicitly")
        return read_manifest(self.manifest, data_root)

    def describe(self) -> str:
        """A one-line human description of what the suite selects."""
        parts = []
        if self.holdout_source:
            parts.append(f"all images of source {self.holdout_source} (leave-one-source-out)")
        else:
            parts.append(f"split {self.split}")
        if self.groups:
            parts.append("groups " + ", ".join(self.groups))
        if self.fine_labels:
            parts.append(("or " if self.groups else "") + "fine labels "
                         + ", ".join(self.fine_labels))
        if self.sources:
            parts.append("sources " + ", ".join(self.sources))
        if self.exclude_sources:
            parts.append("not from " + ", ".join(self.exclude_sources))
        return "; ".join(parts)


def _str_tuple(value: Any, key: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{where}: {key} must be a list of strings")


def _suite_from(name: str, data: Any, default_manifest: Path | None, base: Path | None,
                path: Path | None) -> Suite:
    where = f"suite {name!r}" + (f" in {path}" if path else "")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = set(data) - _KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}")
    manifest = default_manifest
    if data.get("manifest"):
        m = Path(str(data["manifest"]))
        manifest = m if m.is_absolute() or base is None else base / m
    holdout = data.get("holdout_source")
    return Suite(
        name=name,
        description=str(data.get("description") or ""),
        fine_labels=_str_tuple(data.get("fine_labels"), "fine_labels", where),
        groups=_str_tuple(data.get("groups"), "groups", where),
        sources=_str_tuple(data.get("sources"), "sources", where),
        exclude_sources=_str_tuple(data.get("exclude_sources"), "exclude_sources", where),
        split=str(data.get("split") or "test"),
        holdout_source=str(holdout) if holdout else None,
        positive_groups=_str_tuple(data.get("positive_groups"), "positive_groups", where),
        manifest=manifest,
        path=path,
    )


def default_suites_file() -> Path | None:
    """``$WILDVISION_SUITES``, else the reference ``datasets/wildvision-ref/suites.yaml`` of a
    source checkout (beside the package, or under the current folder), else ``None``."""
    env = os.environ.get(SUITES_ENV)
    if env:
        return Path(env)
    rel = Path("datasets") / "wildvision-ref" / "suites.yaml"
    for base in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (base / rel).is_file():
            return base / rel
    return None


def load_suites(path: str | os.PathLike[str] | None = None) -> dict[str, Suite]:
    """Every suite of a suites file (default: :func:`default_suites_file`).

    Raises:
        DataError: no suites file found, or it is unreadable.
        ConfigError: a suite is malformed.
    """
    from .labels import load_yaml

    p = Path(path) if path is not None else default_suites_file()
    if p is None:
        raise DataError(f"no suites file: pass one, or set ${SUITES_ENV}")
    data = load_yaml(p)
    if not isinstance(data, Mapping) or not isinstance(data.get("suites"), Mapping):
        raise ConfigError(f"{p}: expected a mapping with a 'suites:' section")
    base = p.resolve().parent
    default_manifest = None
    if data.get("manifest"):
        m = Path(str(data["manifest"]))
        default_manifest = m if m.is_absolute() else base / m
    return {str(name): _suite_from(str(name), spec, default_manifest, base, p)
            for name, spec in data["suites"].items()}


def load_suite(name_or_path: str | os.PathLike[str],
               suites_file: str | os.PathLike[str] | None = None) -> Suite:
    """Load a benchmark suite.

    Args:
        name_or_path: a suite name (looked up in ``suites_file`` or the default suites file),
            ``FILE#NAME``, or a YAML/JSON file holding one suite (either a suites file with a
            single suite, or one suite's keys at the top level, with an optional ``name``).
        suites_file: where to look names up.

    Returns:
        The :class:`Suite`; filter a manifest with ``suite.select(manifest)``.

    Raises:
        ConfigError: unknown suite name (the message lists the known ones) or a malformed
            suite.
        DataError: no suites file, or an unreadable one.

    Example:
        >>> suite = load_suite("ivory-vs-lookalikes")  # doctest: +SKIP
        >>> test = suite.select(suite.load_manifest())  # doctest: +SKIP
    """
    from .labels import load_yaml

    text = os.fspath(name_or_path)
    if "#" in text:
        file, name = text.rsplit("#", 1)
        return _named(load_suites(file), name, file)
    p = Path(text)
    if p.suffix.lower() in (".yaml", ".yml", ".json") and p.is_file():
        data = load_yaml(p)
        if isinstance(data, Mapping) and "suites" in data:
            suites = load_suites(p)
            if len(suites) != 1:
                raise ConfigError(f"{p} defines {len(suites)} suites ({', '.join(suites)}); "
                                  f"pick one with {p}#NAME")
            return next(iter(suites.values()))
        if isinstance(data, Mapping):
            base = p.resolve().parent
            return _suite_from(str(data.get("name") or p.stem), data, None, base, p)
        raise ConfigError(f"{p}: expected a suite mapping")
    return _named(load_suites(suites_file), text, str(suites_file or default_suites_file()))


def _named(suites: dict[str, Suite], name: str, where: str) -> Suite:
    try:
        return suites[name]
    except KeyError:
        raise ConfigError(
            f"unknown suite {name!r} in {where}; suites: {', '.join(sorted(suites))}"
        ) from None
