"""Reviewer decisions -> a manifest that ``wildvision train`` (and ``extend``) accept.

A decisions file is exported by the review page of ``wildvision review`` (CSV or JSONL, one
decision per reviewed image, columns :data:`DECISION_FIELDS`). Each decision names the image
by its sha256 and path, the model (name and version) and its original decision, and the
reviewer's label:

* ``confirm``: the model was right; the label is its most probable label in the flagged group;
* ``reject``: not what the model said; the label is the model's most probable benign label
  (empty when it had none: such rows need ``default_reject_label``);
* ``relabel``: the reviewer chose the label.

:func:`manifest_from_reviews` checks every file still exists with the reviewed sha256, reads
its size and perceptual hash with the same code as ``wildvision data index``, and writes one
manifest row per image (``split`` left empty: run ``wildvision data split``, or let training
pick its validation images). Rows it cannot use are listed, never silently dropped.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..taxonomy import FINE_LABELS, GROUP_NAMES, fine_label
from .index import IndexEntry, index_file
from .manifest import ManifestRow, _resolve_root, write_manifest

__all__ = [
    "ACTIONS",
    "DECISION_FIELDS",
    "Decision",
    "ReviewManifest",
    "manifest_from_reviews",
    "read_decisions",
]

DECISION_FIELDS = (
    "image_sha256", "source", "path", "model", "model_version", "original_decision",
    "original_group", "original_probability", "action", "reviewer_label", "reviewer_group",
    "reviewer", "reviewed_at", "results_sha256",
)
ACTIONS = ("confirm", "reject", "relabel")
# Extra manifest columns that keep each row's review provenance.
REVIEW_COLUMNS = ("reviewed_model", "reviewed_model_version", "original_decision",
                  "review_action", "reviewer", "reviewed_at")


@dataclass(frozen=True)
class Decision:
    """One reviewer decision (a row of an exported decisions file)."""

    image_sha256: str
    source: str
    path: str
    model: str
    model_version: str
    original_decision: str
    original_group: str
    original_probability: float | None
    action: str
    reviewer_label: str
    reviewer_group: str
    reviewer: str = ""
    reviewed_at: str = ""
    results_sha256: str = ""


def _decision(d: Mapping[str, Any], where: str) -> Decision:
    missing = [k for k in ("image_sha256", "action") if not str(d.get(k) or "").strip()]
    if missing:
        raise DataError(f"{where}: missing {', '.join(missing)}")
    action = str(d["action"]).strip()
    if action not in ACTIONS:
        raise DataError(f"{where}: action must be one of {', '.join(ACTIONS)}, got {action!r}")
    sha = str(d["image_sha256"]).strip().lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise DataError(f"{where}: image_sha256 is not a sha256 hex digest: {sha!r}")
    prob = d.get("original_probability")
    try:
        p = float(prob) if prob not in (None, "") else None
    except (TypeError, ValueError):
        raise DataError(f"{where}: original_probability is not a number: {prob!r}") from None

    def s(k: str) -> str:
        v = d.get(k)
        return "" if v is None else str(v).strip()

    return Decision(sha, s("source"), s("path"), s("model"), s("model_version"),
                    s("original_decision"), s("original_group"), p, action,
                    s("reviewer_label"), s("reviewer_group"), s("reviewer"), s("reviewed_at"),
                    s("results_sha256"))


def read_decisions(path: str | os.PathLike[str]) -> list[Decision]:
    """Read an exported decisions file (``.jsonl`` or ``.csv``, told apart by content).

    Raises:
        DataError: missing file, or a malformed row (the message names its line).
    """
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise DataError(f"{p}: cannot read decisions ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not a UTF-8 text file ({e})") from e
    out: list[Decision] = []
    if text.lstrip().startswith("{"):
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{lineno}: not JSON ({e})") from e
            if not isinstance(d, dict):
                raise DataError(f"{p}:{lineno}: expected a JSON object per line")
            out.append(_decision(d, f"{p}:{lineno}"))
    else:
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "image_sha256" not in reader.fieldnames:
            raise DataError(f"{p}: not a decisions file (no image_sha256 column)")
        for lineno, row in enumerate(reader, start=2):
            out.append(_decision(row, f"{p}:{lineno}"))
    return out


@dataclass
class ReviewManifest:
    """What :func:`manifest_from_reviews` wrote and why rows were left out."""

    rows: list[ManifestRow]
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> sources
    superseded: int = 0  # earlier decisions on the same image replaced by a later one
    sha256: str = ""

    def summary(self) -> str:
        lines = [f"{len(self.rows)} reviewed images in the manifest"]
        if self.superseded:
            lines.append(f"{self.superseded} earlier decisions on the same image replaced by "
                         "the latest")
        for reason, items in self.skipped.items():
            shown = ", ".join(items[:5]) + (" …" if len(items) > 5 else "")
            lines.append(f"{len(items)} left out: {reason}: {shown}")
        return "\n".join(lines)


def _group_of(label: str, given: str, known: Mapping[str, str]) -> str | None:
    if label in FINE_LABELS:
        return fine_label(label).group
    if label in known:
        return known[label]
    return given if given in GROUP_NAMES else None


def manifest_from_reviews(
    decisions: str | os.PathLike[str] | Iterable[Decision],
    out: str | os.PathLike[str],
    *,
    source: str = "reviews",
    default_reject_label: str | None = None,
    image_root: str | os.PathLike[str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> ReviewManifest:
    """Write a manifest from reviewer decisions.

    Args:
        decisions: a decisions file or decisions.
        out: the manifest CSV to write (atomically); its paths are relative to its data root
            (the manifest's folder unless a ``dataset.json`` there or
            ``$WILDVISION_DATA_ROOT`` says otherwise), as :func:`read_manifest` reads them.
        source: the manifest ``source`` of every row.
        default_reject_label: the label of rejected images the model had no benign label for
            (e.g. ``everyday_object``); without it they are left out and listed.
        image_root: where relative decision paths are (default: the current directory).
        labels: extra ``label -> group`` pairs (a model's own new labels).

    Returns:
        The rows written and the decisions left out, by reason.

    Raises:
        DataError: no usable decision, or an unknown ``default_reject_label``.
    """
    items = (read_decisions(decisions) if isinstance(decisions, (str, os.PathLike))
             else list(decisions))
    known = dict(labels or {})
    if default_reject_label is not None and _group_of(default_reject_label, "", known) is None:
        raise DataError(f"default reject label {default_reject_label!r} is not a known label")
    root = Path(image_root) if image_root is not None else Path.cwd()
    out_path = Path(out)
    out_dir = _resolve_root(out_path.resolve(), None).resolve()
    result = ReviewManifest([])
    latest: dict[str, Decision] = {}
    for d in items:  # the last decision on an image wins (the export is in decision order)
        if d.image_sha256 in latest:
            result.superseded += 1
        latest[d.image_sha256] = d

    def skip(reason: str, d: Decision) -> None:
        result.skipped.setdefault(reason, []).append(d.source or d.path or d.image_sha256)

    for d in latest.values():
        label = d.reviewer_label
        if not label and d.action == "reject" and default_reject_label:
            label = default_reject_label
        if not label:
            skip("no reviewer label (give a default reject label, or relabel them)", d)
            continue
        group = _group_of(label, d.reviewer_group, known)
        if group is None:
            skip("unknown label without a valid group", d)
            continue
        if d.reviewer_group and d.reviewer_group != group:
            skip(f"label {label!r} is in group {group!r}, the decision says "
                 f"{d.reviewer_group!r}", d)
            continue
        raw = d.path or d.source
        if not raw:
            skip("no image path", d)
            continue
        file = Path(raw)
        if not file.is_absolute():
            file = root / file
        file = file.resolve()
        if not file.is_file():
            skip("image file not found", d)
            continue
        try:
            rel = os.path.relpath(file, out_dir)
        except ValueError:  # another drive (Windows)
            rel = str(file)
        rel = Path(rel).as_posix()
        # Read from the file's own folder: the manifest's folder may not exist yet.
        row = index_file(file.parent, IndexEntry(file.name, source, label))
        if row.error and not row.sha256:
            skip(f"unreadable image ({row.error})", d)
            continue
        if row.sha256 != d.image_sha256:
            skip("file changed since it was reviewed (sha256 differs)", d)
            continue
        if row.error:
            skip(f"unreadable image ({row.error})", d)
            continue
        result.rows.append(row.with_(
            path=rel, fine_label=label, group=group,
            extra={"reviewed_model": d.model, "reviewed_model_version": d.model_version,
                   "original_decision": d.original_decision, "review_action": d.action,
                   "reviewer": d.reviewer, "reviewed_at": d.reviewed_at},
        ))
    if not result.rows:
        raise DataError("no usable decision:\n" + result.summary())
    result.sha256 = write_manifest(out_path, result.rows, REVIEW_COLUMNS)
    return result
