"""The new photos of an extension: a manifest CSV or folders of photos, each fine label with
its group, checked before any work is done."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DataError
from ..imaging import collect_inputs
from ..modelpack import sha256_file
from ..taxonomy import FINE_LABELS, GROUP_NAMES, fine_label

__all__ = ["NewData", "NewPhoto", "parse_group_specs", "read_new_data", "resolve_groups"]


@dataclass(frozen=True)
class NewPhoto:
    """One new photo: its path, fine label and (optional) split (``train``/``val``/``""``)."""

    path: str
    label: str
    split: str = ""


@dataclass(frozen=True)
class NewData:
    """The new photos and where they came from.

    Attributes:
        photos: the photos to use (test rows of a manifest are left out).
        groups: groups declared for labels (a manifest's ``group`` column and ``groups=``).
        source: the manifest path, or the folders.
        manifest_sha256: sha256 of the manifest file; for folders, of a canonical listing
            (relative path, label and sha256 of every file).
        left_out: rows of a manifest not used (split ``test``).
    """

    photos: tuple[NewPhoto, ...]
    groups: Mapping[str, str]
    source: str
    manifest_sha256: str
    left_out: int = 0

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.label for p in self.photos))


def parse_group_specs(specs: Sequence[str]) -> dict[str, str]:
    """``["rhino_horn_raw=rhino_horn", ...]`` -> ``{label: group}``.

    Raises:
        ConfigError: a spec without ``=``, or one label given two groups.
    """
    out: dict[str, str] = {}
    for spec in specs:
        label, sep, group = spec.partition("=")
        label, group = label.strip(), group.strip()
        if not sep or not label or not group:
            raise ConfigError(f"group spec {spec!r} must be LABEL=GROUP, e.g. "
                              "rhino_horn_raw=rhino_horn")
        if out.get(label, group) != group:
            raise ConfigError(f"label {label!r} is given two groups: {out[label]!r} and "
                              f"{group!r}")
        out[label] = group
    return out


def _check_label(label: str, where: str) -> None:
    if not label or not label.isidentifier() or label != label.lower():
        raise ConfigError(f"{where}: fine label {label!r} must be lower_snake_case "
                          "(letters, digits, underscores)")


def _listing_sha256(photos: Sequence[NewPhoto], root: Path | None) -> str:
    h = hashlib.sha256()
    for p in sorted(photos, key=lambda q: (q.label, q.path)):
        rel = os.path.relpath(p.path, root) if root is not None else p.path
        digest = sha256_file(p.path)
        h.update(f"{rel}\t{p.label}\t{digest}\n".encode())
    return h.hexdigest()


def read_new_data(data: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                  groups: Mapping[str, str] | None = None, *,
                  data_root: str | os.PathLike[str] | None = None) -> NewData:
    """Read the new photos: one manifest ``.csv`` (columns ``path``, ``fine_label`` or
    ``label``, optional ``group`` and ``split``; rows of split ``test`` are left out), or
    folders: a folder of photos is one label (the folder's name); a folder of such folders
    is one label per sub-folder.

    Args:
        data: the manifest, or one or more folders.
        groups: ``{label: group}`` declared for new labels (a manifest's ``group`` column
            declares them too).
        data_root: root of a manifest's relative paths (default: the manifest's folder, as
            :func:`wildvision.data.read_manifest`).

    Raises:
        DataError: a missing manifest or folder, paths that do not exist (listed), no photos.
        ConfigError: a label that is not lower_snake_case, two groups for one label.
    """
    declared = dict(groups or {})
    items = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if not items:
        raise DataError("extend: no new data given (a manifest .csv or folders of photos)")
    first = Path(items[0])
    if len(items) == 1 and first.suffix.lower() == ".csv":
        from ..data.manifest import read_manifest

        m = read_manifest(first, data_root=data_root)  # DataError when missing
        photos: list[NewPhoto] = []
        missing: list[str] = []
        left_out = 0
        for r in m:
            label = r.fine_label or r.label
            _check_label(label, f"{first} ({r.path})")
            if r.split == "test":
                left_out += 1
                continue
            if r.split not in ("", "train", "val"):
                raise DataError(f"{first}: row {r.path}: split must be train, val, test or "
                                f"empty, got {r.split!r}")
            path = m.abs_path(r)
            if not path.is_file():
                missing.append(r.path)
                continue
            if r.group:
                if declared.get(label, r.group) != r.group:
                    raise ConfigError(f"{first}: label {label!r} has group {r.group!r} in the "
                                      f"manifest and {declared[label]!r} as declared")
                declared[label] = r.group
            photos.append(NewPhoto(os.fspath(path), label, r.split))
        if missing:
            raise DataError(f"{first}: {len(missing)} path(s) do not exist under {m.root}: "
                            + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
        if not photos:
            raise DataError(f"{first}: no rows to use (train, val or no split)")
        return NewData(tuple(photos), declared, os.fspath(first), m.sha256, left_out)

    photos = []
    for item in items:
        folder = Path(item)
        if not folder.is_dir():
            raise DataError(f"{folder}: not a folder of photos (nor a manifest .csv)")
        direct = collect_inputs([folder])
        subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if direct:
            _check_label(folder.name, os.fspath(folder))
            photos += [NewPhoto(p, folder.name) for p in direct]
        for sub in subs:
            files = collect_inputs([sub])
            if files:
                _check_label(sub.name, os.fspath(sub))
                photos += [NewPhoto(p, sub.name) for p in files]
        if not direct and not any(collect_inputs([s]) for s in subs):
            raise DataError(f"{folder}: no photos in it or in its sub-folders")
    root = Path(os.path.commonpath([os.path.abspath(os.fspath(i)) for i in items]))
    sha = _listing_sha256(photos, root)
    return NewData(tuple(photos), declared, ", ".join(os.fspath(i) for i in items), sha)


def resolve_groups(labels: Sequence[str], declared: Mapping[str, str],
                   base_groups: Mapping[str, str]) -> dict[str, str]:
    """The group of every label of the new data.

    A label the base model has keeps its group (declaring another is a clash); a label the
    taxonomy names takes the taxonomy's group (the same rule); any other label must be
    declared. The process-wide taxonomy is only read, never changed.

    Raises:
        ConfigError: a clash, an unknown group, a label without a group, or a group declared
            for a label that is not in the data.
    """
    out: dict[str, str] = {}
    unknown = sorted(set(declared) - set(labels))
    if unknown:
        raise ConfigError(f"groups declared for labels not in the new data: {unknown} "
                          f"(labels in it: {sorted(labels)})")
    undeclared = []
    for lab in labels:
        want = declared.get(lab)
        if want is not None and want not in GROUP_NAMES:
            raise ConfigError(f"label {lab!r}: unknown group {want!r}; groups: "
                              f"{', '.join(GROUP_NAMES)}")
        if lab in base_groups:
            if want is not None and want != base_groups[lab]:
                raise ConfigError(
                    f"label {lab!r} clashes with the base model's label {lab!r} in group "
                    f"{base_groups[lab]!r} (declared {want!r}); rename the new label or use "
                    f"group {base_groups[lab]!r} to add photos to it")
            out[lab] = base_groups[lab]
        elif lab in FINE_LABELS:
            tax = fine_label(lab).group
            if want is not None and want != tax:
                raise ConfigError(f"label {lab!r} is in group {tax!r} in the wildvision "
                                  f"taxonomy, not {want!r}; rename the new label")
            out[lab] = tax
        elif want is None:
            undeclared.append(lab)
        else:
            out[lab] = want
    if undeclared:
        raise ConfigError(
            f"new label(s) {undeclared} need a group: declare it, e.g. --group "
            f"{undeclared[0]}=benign (groups: {', '.join(GROUP_NAMES)})")
    return out
