"""Check a manifest before training or benchmarking on it.

Errors (non-zero exit from ``wildvision data check``): missing files, the same path twice,
labels not in the taxonomy (or unmapped), a group that does not match its fine label, bad
split values or hashes, unreadable rows that have a split, exact or near-duplicate pairs
across splits, sha256 mismatches (with ``verify_hashes``). Warnings: unreadable rows
(recorded, without a split), duplicates within one split, labels missing from a split.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..modelpack import sha256_file
from .manifest import SPLITS, Manifest, ManifestRow
from .split import DEFAULT_PHASH_THRESHOLD, class_counts, duplicate_pairs

__all__ = ["CheckReport", "Finding", "check_manifest", "format_table"]

_HEX = set("0123456789abcdef")


@dataclass(frozen=True)
class Finding:
    """One kind of problem, how many rows have it, and a few examples."""

    check: str
    severity: str  # "error" | "warning" | "ok"
    count: int
    detail: str = ""
    examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckReport:
    """Everything :func:`check_manifest` found."""

    findings: tuple[Finding, ...]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # fine label -> split -> n
    group_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    rows: int = 0

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "error")

    @property
    def ok(self) -> bool:
        return not self.errors


def _hash_ok(value: str, length: int) -> bool:
    """Empty (not computed) or ``length`` lower-case hex characters."""
    return not value or (len(value) == length and set(value) <= _HEX)


def _finding(check: str, bad: list[str], severity: str, detail: str = "") -> Finding:
    if not bad:
        return Finding(check, "ok", 0, detail)
    return Finding(check, severity, len(bad), detail, tuple(bad[:5]))


def check_manifest(manifest: Manifest, *, phash_threshold: int = DEFAULT_PHASH_THRESHOLD,
                   check_files: bool = True, verify_hashes: bool = False) -> CheckReport:
    """Run every check on ``manifest`` (see the module docstring).

    Args:
        manifest: the manifest (its ``root`` is where files are looked for).
        phash_threshold: near-duplicate distance (as used by the split).
        check_files: look for every file under the data root.
        verify_hashes: also re-hash every file and compare with the ``sha256`` column.

    Returns:
        A :class:`CheckReport`; ``report.ok`` is False when any error was found.

    Raises:
        ConfigError: ``verify_hashes`` without ``check_files``.
    """
    from ..taxonomy import fine_label

    if verify_hashes and not check_files:
        raise ConfigError("verify_hashes needs check_files")
    rows: list[ManifestRow] = list(manifest.rows)
    findings: list[Finding] = []

    if check_files:
        missing, mismatched = [], []
        if not manifest.root.is_dir():
            missing = [f"data root {manifest.root} is not a folder"]
        else:
            for r in rows:
                p = manifest.abs_path(r)
                if not p.is_file():
                    missing.append(r.path)
                elif verify_hashes and r.sha256 and sha256_file(p) != r.sha256:
                    mismatched.append(r.path)
        findings.append(_finding("missing files", missing, "error", f"data root {manifest.root}"))
        if verify_hashes:
            findings.append(_finding("sha256 mismatches", mismatched, "error"))

    paths = Counter(r.path for r in rows)
    findings.append(_finding("same path twice", sorted(p for p, n in paths.items() if n > 1),
                             "error"))

    unreadable = [f"{r.path}: {r.error}" for r in rows if r.error]
    findings.append(_finding("unreadable images", unreadable, "warning",
                             "recorded with their reason; they get no split"))
    findings.append(_finding("unreadable images with a split",
                             [r.path for r in rows if r.error and r.split], "error"))

    bad_labels, bad_groups, unmapped = [], [], []
    for r in rows:
        if not r.fine_label:
            unmapped.append(f"{r.path} ({r.source}/{r.label})")
            continue
        try:
            fl = fine_label(r.fine_label)
        except ConfigError:
            bad_labels.append(f"{r.path}: {r.fine_label}")
            continue
        if r.group != fl.group:
            bad_groups.append(f"{r.path}: {r.fine_label} is in {fl.group}, not {r.group!r}")
    findings.append(_finding("rows without a fine label", unmapped, "error",
                             "map them: wildvision data map MANIFEST --labels labels.yaml"))
    findings.append(_finding("fine labels not in the taxonomy", bad_labels, "error"))
    findings.append(_finding("group does not match fine label", bad_groups, "error"))

    bad_split = [f"{r.path}: {r.split!r}" for r in rows if r.split and r.split not in SPLITS]
    findings.append(_finding("unknown split values", bad_split, "error"))
    bad_hash = [f"{r.path}: phash {r.phash!r}" for r in rows if not _hash_ok(r.phash, 16)]
    bad_hash += [f"{r.path}: sha256 {r.sha256!r}" for r in rows if not _hash_ok(r.sha256, 64)]
    bad_hash += [f"{r.path}: readable but no phash" for r in rows if r.readable and not r.phash]
    findings.append(_finding("malformed hashes", bad_hash, "error"))

    # Malformed hashes are reported above; leave them out of the duplicate search.
    clean = [r if _hash_ok(r.phash, 16) else r.with_(phash="") for r in rows]
    exact, near = duplicate_pairs(clean, phash_threshold)
    ex_across = [f"{rows[a].path} ({rows[a].split or '-'}) = {rows[b].path} "
                 f"({rows[b].split or '-'})" for a, b in exact
                 if rows[a].split and rows[b].split and rows[a].split != rows[b].split]
    ex_within = [f"{rows[a].path} = {rows[b].path}" for a, b in exact
                 if not (rows[a].split and rows[b].split and rows[a].split != rows[b].split)]
    nr_across = [f"{rows[a].path} ({rows[a].split}) ~ {rows[b].path} ({rows[b].split}), "
                 f"distance {d}" for a, b, d in near
                 if rows[a].split and rows[b].split and rows[a].split != rows[b].split]
    nr_within = [f"{rows[a].path} ~ {rows[b].path}, distance {d}" for a, b, d in near
                 if not (rows[a].split and rows[b].split and rows[a].split != rows[b].split)]
    findings.append(_finding("exact duplicates across splits", ex_across, "error"))
    findings.append(_finding(f"near-duplicates across splits (phash <= {phash_threshold})",
                             nr_across, "error"))
    findings.append(_finding("exact duplicates within a split (or unsplit)", ex_within,
                             "warning"))
    findings.append(Finding(f"near-duplicates within a split (phash <= {phash_threshold})",
                            "ok", len(nr_within), "kept together by design",
                            tuple(nr_within[:5])))

    counts = class_counts(rows, "fine_label")
    used = [s for s in SPLITS if any(c[s] for c in counts.values())]
    gaps = [f"{lab}: none in {s}" for lab, c in counts.items() for s in used
            if c[s] == 0 and sum(c[x] for x in SPLITS) >= 3]
    findings.append(_finding("fine labels (>= 3 images) missing from a split", gaps, "warning"))
    return CheckReport(tuple(findings), counts, class_counts(rows, "group"), len(rows))


def format_table(counts: dict[str, dict[str, int]], title: str = "fine label",
                 markdown: bool = False) -> str:
    """Per-split counts as an aligned text table (or a Markdown table)."""
    cols = ["train", "val", "test"]
    show_unsplit = any(c[""] for c in counts.values())
    header = [title, *cols, "total"] + (["no split"] if show_unsplit else [])
    body = []
    totals = [0] * (len(header) - 1)
    for name, c in counts.items():
        vals = [c[s] for s in cols] + [sum(c[s] for s in cols)]
        if show_unsplit:
            vals.append(c[""])
        totals = [t + v for t, v in zip(totals, vals, strict=True)]
        body.append([name, *map(str, vals)])
    body.append(["**total**" if markdown else "TOTAL", *map(str, totals)])
    if markdown:
        lines = ["| " + " | ".join(header) + " |",
                 "|---|" + "---:|" * (len(header) - 1)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(r[k]) for r in [header, *body]) for k in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "  ".join(r[k].ljust(widths[k]) if k == 0 else r[k].rjust(widths[k])
                         for k in range(len(r)))

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in body])
