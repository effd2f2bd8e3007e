"""Deterministic, stratified, group-aware train/val/test splits with a leakage check.

Images that are the same file (equal sha256) or near-duplicates (perceptual-hash Hamming
distance <= ``phash_threshold``) are joined into one *duplicate group* (union-find over the
pairs found by multi-index hashing, :func:`wildvision.data.phash.near_pairs`), and a group
always lands in one split, so no re-encoded, resized or slightly re-cropped copy of a test
image is ever trained on.

Groups are stratified by fine label: for each label, integer targets per split are computed
from the ratios (largest remainder), the label's groups are shuffled with a generator seeded
by ``(seed, label)`` and placed largest first, each into the split furthest below its target.
The result depends only on the rows' content (sha256, phash, labels), not on their order.

``holdout_sources`` puts every image of those sources — and every image in a duplicate group
with one of them — in ``test`` (out-of-distribution evaluation). Unreadable rows get no split.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from .manifest import SPLITS, ManifestRow
from .phash import hashes_to_array, near_pairs

__all__ = [
    "DEFAULT_PHASH_THRESHOLD",
    "DEFAULT_RATIOS",
    "LeakageReport",
    "SplitConfig",
    "SplitResult",
    "class_counts",
    "duplicate_groups",
    "duplicate_pairs",
    "leakage",
    "parse_ratios",
    "random_split",
    "split_rows",
]

# Chosen by measurement on the reference data (datasets/wildvision-ref/README.md, "Near-
# duplicates"): at 10 the hash still finds 99% of 2%-per-side re-crops and all re-encodes and
# resizes, while duplicate groups stay small (largest 28 images); at 12 one group swallows
# 9% of the data.
DEFAULT_PHASH_THRESHOLD = 10
DEFAULT_RATIOS = (0.7, 0.15, 0.15)
DUP_GROUP_FIELD = "dup_group"


def parse_ratios(text: str | Sequence[float]) -> tuple[float, float, float]:
    """``"0.7,0.15,0.15"`` (or 3 numbers) -> a validated train/val/test ratio triple.

    Raises:
        ConfigError: not three non-negative numbers summing to 1 with a positive train share.
    """
    if isinstance(text, str):
        try:
            parts = [float(x) for x in text.split(",")]
        except ValueError:
            raise ConfigError(f"--ratios {text!r}: expected three numbers like 0.7,0.15,0.15") \
                from None
    else:
        parts = [float(x) for x in text]
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6:
        raise ConfigError(
            f"ratios {parts}: need three non-negative train,val,test shares summing to 1"
        )
    if parts[0] <= 0:
        raise ConfigError("ratios: the train share must be positive")
    return (parts[0], parts[1], parts[2])


@dataclass(frozen=True)
class SplitConfig:
    """How to split. See the module docstring."""

    seed: int = 0
    ratios: tuple[float, float, float] = DEFAULT_RATIOS
    holdout_sources: tuple[str, ...] = ()
    phash_threshold: int = DEFAULT_PHASH_THRESHOLD

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratios", parse_ratios(self.ratios))
        if not 0 <= self.phash_threshold <= 32:
            raise ConfigError(f"phash threshold must be in [0, 32], got {self.phash_threshold}")


@dataclass(frozen=True)
class LeakageReport:
    """Duplicate pairs whose two images are in different splits.

    Attributes:
        exact: pairs with equal sha256 across splits.
        near: pairs within the phash threshold across splits (exact pairs not counted again).
        examples: up to 20 ``(path_a, split_a, path_b, split_b, distance)``; distance -1 means
            an exact duplicate.
        threshold: the phash threshold used.
        pairs_total: all duplicate pairs among the rows that have a split, any split.
    """

    exact: int
    near: int
    threshold: int
    pairs_total: int = 0
    examples: tuple[tuple[str, str, str, str, int], ...] = ()

    @property
    def total(self) -> int:
        return self.exact + self.near

    def summary(self) -> str:
        return (f"leakage check (phash distance <= {self.threshold}): {self.exact} exact and "
                f"{self.near} near-duplicate pairs across splits "
                f"(of {self.pairs_total} duplicate pairs in all)")


@dataclass(frozen=True)
class SplitResult:
    """Split rows (input order), plus what the split did."""

    rows: tuple[ManifestRow, ...]
    config: SplitConfig
    leakage: LeakageReport
    groups: int = 0  # duplicate groups with more than one image
    grouped_images: int = 0
    largest_group: int = 1
    pulled_into_test: int = 0  # non-holdout images joined to a holdout source's group
    notes: tuple[str, ...] = field(default_factory=tuple)


def _exact_pairs(rows: Sequence[ManifestRow], idx: Sequence[int]) -> list[tuple[int, int]]:
    by_sha: dict[str, list[int]] = defaultdict(list)
    for i in idx:
        if rows[i].sha256:
            by_sha[rows[i].sha256].append(i)
    out = []
    for members in by_sha.values():
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                out.append((members[a], members[b]))
    return out


def duplicate_pairs(rows: Sequence[ManifestRow], threshold: int,
                    indices: Sequence[int] | None = None
                    ) -> tuple[list[tuple[int, int]], list[tuple[int, int, int]]]:
    """Exact and near-duplicate pairs among ``rows`` (or the subset ``indices``).

    Returns:
        ``(exact, near)``: exact pairs ``(i, j)`` (same sha256) and near pairs
        ``(i, j, distance)`` (phash within ``threshold``, not already an exact pair), with
        ``i < j`` indices into ``rows``.
    """
    idx = list(range(len(rows))) if indices is None else list(indices)
    exact = _exact_pairs(rows, idx)
    exact_set = {(min(a, b), max(a, b)) for a, b in exact}
    hashed = [i for i in idx if rows[i].phash]
    near: list[tuple[int, int, int]] = []
    if len(hashed) > 1:
        h = hashes_to_array([rows[i].phash for i in hashed])
        pairs = near_pairs(h, threshold)
        if len(pairs):
            dist = np.bitwise_xor(h[pairs[:, 0]], h[pairs[:, 1]])
            from .phash import popcount64

            d = popcount64(dist)
            for (a, b), dd in zip(pairs.tolist(), d.tolist(), strict=True):
                i, j = hashed[a], hashed[b]
                key = (min(i, j), max(i, j))
                if key not in exact_set:
                    near.append((key[0], key[1], int(dd)))
    return sorted(exact_set), near


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        p = self.parent
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def duplicate_groups(rows: Sequence[ManifestRow], threshold: int,
                     indices: Sequence[int] | None = None) -> dict[int, list[int]]:
    """Connected components of the duplicate graph: ``root index -> member indices``.

    Every index in ``indices`` (default: all rows) is in exactly one component; rows without
    a phash join components only through equal sha256.
    """
    idx = list(range(len(rows))) if indices is None else list(indices)
    uf = _UnionFind(len(rows))
    exact, near = duplicate_pairs(rows, threshold, idx)
    for a, b in exact:
        uf.union(a, b)
    for a, b, _ in near:
        uf.union(a, b)
    comps: dict[int, list[int]] = defaultdict(list)
    for i in idx:
        comps[uf.find(i)].append(i)
    return dict(comps)


def _stratum(row: ManifestRow) -> str:
    return row.fine_label or f"label:{row.label}"


def _targets(n: int, ratios: Sequence[float]) -> list[int]:
    """Integer counts summing to n, proportional to ratios (largest remainder, ties to the
    earlier split)."""
    raw = [n * r for r in ratios]
    base = [int(x) for x in raw]
    rest = n - sum(base)
    order = sorted(range(len(ratios)), key=lambda k: (-(raw[k] - base[k]), k))
    for k in order[:rest]:
        base[k] += 1
    return base


def split_rows(rows: Iterable[ManifestRow], config: SplitConfig | None = None,
               keep: Mapping[str, str] | None = None) -> SplitResult:
    """Assign ``train``/``val``/``test`` to every readable row (see the module docstring).

    The ``dup_group`` extra column names the duplicate group of rows that have duplicates
    (empty for singletons), so later tools can keep groups together too.

    Args:
        rows: manifest rows (``fine_label`` filled, ideally; else the dataset label is used
            for stratification).
        config: seed, ratios, holdout sources and phash threshold.
        keep: ``sha256 -> split`` of an earlier split (e.g. read from the previous
            manifest): images found there keep their split, and so does every new image in
            their duplicate group, so a model trained on the earlier split has still never
            seen the new test split's earlier images. Only the other images are split by
            the stratified rule. A duplicate group whose kept images disagree (a new image
            bridging two earlier groups) goes to the latest of them (test over val over
            train), reported in ``notes``.

    Returns:
        A :class:`SplitResult` with the rows in input order and the leakage check.

    Raises:
        ConfigError: a holdout source that no readable row has.
    """
    cfg = config or SplitConfig()
    rows = list(rows)
    readable = [i for i, r in enumerate(rows) if r.readable]
    sources = {rows[i].source for i in readable}
    missing = [s for s in cfg.holdout_sources if s not in sources]
    if missing:
        raise ConfigError(f"holdout source(s) {missing} not in the manifest; "
                          f"sources: {', '.join(sorted(sources))}")
    comps = duplicate_groups(rows, cfg.phash_threshold, readable)
    holdout = set(cfg.holdout_sources)
    assign: dict[int, str] = {}
    pulled = 0
    kept = bridged = 0
    strata: dict[str, list[list[int]]] = defaultdict(list)
    for members in comps.values():
        if holdout and any(rows[i].source in holdout for i in members):
            for i in members:
                assign[i] = "test"
                pulled += rows[i].source not in holdout
            continue
        earlier = {keep[rows[i].sha256] for i in members
                   if keep and rows[i].sha256 and keep.get(rows[i].sha256) in SPLITS}
        if earlier:
            split = max(earlier, key=SPLITS.index)
            bridged += len(earlier) > 1
            for i in members:
                assign[i] = split
                kept += 1
            continue
        labels = Counter(_stratum(rows[i]) for i in members)
        primary = min(labels, key=lambda lab: (-labels[lab], lab))
        strata[primary].append(members)

    usable = [k for k, r in enumerate(cfg.ratios) if r > 0]
    for label in sorted(strata):
        groups = strata[label]
        # A stable key from content, then a seeded shuffle: independent of row order.
        groups.sort(key=lambda m: min(rows[i].sha256 or rows[i].path for i in m))
        rng = random.Random(f"wildvision-split/{cfg.seed}/{label}")
        rng.shuffle(groups)
        groups.sort(key=len, reverse=True)  # stable: shuffled order within equal sizes
        n = sum(len(g) for g in groups)
        target = _targets(n, cfg.ratios)
        count = [0, 0, 0]
        for g in groups:
            k = max(usable, key=lambda s: (target[s] - count[s], -s))
            count[k] += len(g)
            for i in g:
                assign[i] = SPLITS[k]

    group_of: dict[int, str] = {}
    sizes = []
    for members in comps.values():
        if len(members) > 1:
            sizes.append(len(members))
            gid = "g" + min(rows[i].sha256 or rows[i].path for i in members)[:12]
            for i in members:
                group_of[i] = gid
    out = []
    for i, r in enumerate(rows):
        extra = dict(r.extra)
        extra[DUP_GROUP_FIELD] = group_of.get(i, "")
        out.append(r.with_(split=assign.get(i, ""), extra=extra))
    report = leakage(out, cfg.phash_threshold)
    notes = []
    if keep is not None:
        notes.append(f"{kept} image(s) kept the split of the earlier manifest (or joined an "
                     "earlier image's duplicate group there)")
    if bridged:
        notes.append(f"{bridged} duplicate group(s) joined earlier images of different "
                     "splits and went to the latest of them")
    if pulled:
        notes.append(f"{pulled} image(s) from other sources joined the holdout test split "
                     "because they duplicate a holdout image")
    return SplitResult(tuple(out), cfg, report, len(sizes), sum(sizes), max(sizes, default=1),
                       pulled, tuple(notes))


def random_split(rows: Iterable[ManifestRow], ratios: Sequence[float] = (0.6, 0.2, 0.2),
                 seed: int = 0) -> list[ManifestRow]:
    """A plain random split of the readable rows, ignoring duplicates — the baseline whose
    leakage :func:`leakage` measures."""
    rows = list(rows)
    idx = [i for i, r in enumerate(rows) if r.readable]
    rng = random.Random(f"wildvision-random-split/{seed}")
    rng.shuffle(idx)
    target = _targets(len(idx), parse_ratios(list(ratios)))
    assign: dict[int, str] = {}
    pos = 0
    for k, t in enumerate(target):
        for i in idx[pos:pos + t]:
            assign[i] = SPLITS[k]
        pos += t
    return [r.with_(split=assign.get(i, "")) for i, r in enumerate(rows)]


def leakage(rows: Sequence[ManifestRow], threshold: int = DEFAULT_PHASH_THRESHOLD) -> LeakageReport:
    """Count exact and near-duplicate pairs whose images are in different splits.

    Only rows with a split take part. Needs only the manifest (sha256 and phash columns),
    not the images.
    """
    rows = list(rows)
    idx = [i for i, r in enumerate(rows) if r.split]
    exact, near = duplicate_pairs(rows, threshold, idx)
    examples: list[tuple[str, str, str, str, int]] = []
    n_exact = n_near = 0
    for a, b in exact:
        if rows[a].split != rows[b].split:
            n_exact += 1
            if len(examples) < 20:
                examples.append((rows[a].path, rows[a].split, rows[b].path, rows[b].split, -1))
    for a, b, d in near:
        if rows[a].split != rows[b].split:
            n_near += 1
            if len(examples) < 20:
                examples.append((rows[a].path, rows[a].split, rows[b].path, rows[b].split, d))
    return LeakageReport(n_exact, n_near, threshold, len(exact) + len(near), tuple(examples))


def class_counts(rows: Iterable[ManifestRow], key: str = "fine_label"
                 ) -> dict[str, dict[str, int]]:
    """``{label: {"train": n, "val": n, "test": n, "": n_without_split}}`` by ``key``
    (``fine_label``, ``group``, ``label`` or ``source``)."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        name = getattr(r, key) or "(unmapped)"
        d = out.setdefault(name, {"train": 0, "val": 0, "test": 0, "": 0})
        d[r.split if r.split in SPLITS else ""] += 1
    return dict(sorted(out.items()))
