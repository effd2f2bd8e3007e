"""Re-derive a model's thresholds for a review budget from your own labelled photos.

``wildvision calibrate MODEL --data my_traffic.csv --review-budget 0.01 --out DIR`` runs the
model (ONNX Runtime, core install; no torch, no retraining) on the manifest's photos, derives
per-group ``flag`` thresholds at the flag precision and ``review`` thresholds within the review
budget (:mod:`wildvision.policy`), and writes a copy of the package whose card holds the new
thresholds, the policy, the trade-off curve on your photos and where it came from.

The manifest needs a ``path`` column and the true ``group`` of each photo (or a ``fine_label``
the model or the taxonomy maps to a group): ``benign`` for the photos you want passed, a
flaggable group (``ivory``, ``live_protected_animal`` ...) for the ones you want caught.
Instead of running the model, ``--results`` reads the JSONL that ``wildvision classify`` wrote
for those photos (joined on the path).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ConfigError, DataError, WildvisionError
from ..modelcard_md import write_card
from ..modelpack import ModelPackage, Thresholds, load_package, sha256_file
from ..policy import DEFAULT_BUDGETS, PolicyResult, ReviewPolicy, derive_thresholds, measure
from ..taxonomy import FLAGGABLE_GROUPS, GROUP_NAMES, group_of

__all__ = [
    "CalibrationReport",
    "LabelledScores",
    "calibrate_package",
    "score_manifest",
    "scores_from_results",
]


@dataclass(frozen=True)
class LabelledScores:
    """Calibrated group probabilities of labelled photos, and the open-set gate's verdicts."""

    paths: tuple[str, ...]
    true_groups: tuple[str, ...]
    groups: tuple[str, ...]
    probabilities: NDArray[np.float64]   # (N, G)
    gated: NDArray[np.bool_]             # (N, G): a flag of that group would become review
    failures: tuple[tuple[str, str], ...] = ()   # (path, reason): not used, listed
    manifest_sha256: str = ""

    def subset(self, mask: NDArray[np.bool_]) -> LabelledScores:
        idx = np.nonzero(mask)[0]
        return replace(self, paths=tuple(self.paths[i] for i in idx),
                       true_groups=tuple(self.true_groups[i] for i in idx),
                       probabilities=self.probabilities[idx], gated=self.gated[idx])


@dataclass(frozen=True)
class CalibrationReport:
    """What ``calibrate_package`` chose and measured."""

    result: PolicyResult
    curve: list[dict[str, Any]]
    before: dict[str, Any]
    after: dict[str, Any]
    photos: int
    failures: tuple[tuple[str, str], ...]
    out: Path | None


def _true_groups(rows: Sequence[Any], label_groups: Mapping[str, str], where: str
                 ) -> list[str]:
    out, bad = [], []
    for r in rows:
        g = (r.group or "").strip()
        if not g and r.fine_label:
            g = label_groups.get(r.fine_label, "")
            if not g:
                try:
                    g = group_of(r.fine_label)
                except WildvisionError:
                    g = ""
        if g not in GROUP_NAMES:
            bad.append(f"{r.path} ({g or r.fine_label or 'no group'})")
        out.append(g)
    if bad:
        raise DataError(f"{where}: {len(bad)} row(s) without a known group (need a 'group' "
                        f"column with one of {', '.join(GROUP_NAMES)}, or a known "
                        f"'fine_label'): {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    return out


def _read_rows(data: str | Path, split: str | None, data_root: str | Path | None
               ) -> tuple[list[Any], Any]:
    from ..data.manifest import read_manifest

    manifest = read_manifest(data, data_root)
    rows = [r for r in manifest.rows if r.readable and (split is None or r.split == split)]
    if not rows:
        raise DataError(f"{data}: no readable rows"
                        + (f" in split {split!r}" if split else ""))
    return rows, manifest


def _gate_thresholds(package: ModelPackage, groups: Sequence[str]) -> NDArray[np.float64]:
    fam = package.card.extra.get("familiarity") or {}
    raw = fam.get("thresholds", {}) if isinstance(fam, Mapping) else {}
    return np.array([float(raw.get(g, -1.0)) for g in groups], dtype=np.float64)


def score_manifest(model: str | Path | ModelPackage, data: str | Path, *,
                   split: str | None = None, data_root: str | Path | None = None,
                   batch_size: int = 32, open_set: bool = True,
                   progress: Callable[[int, int], None] | None = None) -> LabelledScores:
    """Run ``model`` on the manifest's readable rows (of ``split``) and keep their arrays.

    Unreadable photos are listed in ``failures`` and left out; nothing else is dropped.
    """
    from ..predict import Classifier, Failure

    rows, manifest = _read_rows(data, split, data_root)
    clf = Classifier(model, open_set=open_set)
    truth = _true_groups(rows, clf.card.label_groups, str(data))
    paths = [str(manifest.abs_path(r)) for r in rows]
    groups = tuple(clf.card.groups)
    probs, fams, keep, fails = [], [], [], []
    for i, (res, arrays) in enumerate(clf.iter_arrays(paths, batch_size=batch_size)):
        if progress is not None:
            progress(i + 1, len(paths))
        if isinstance(res, Failure) or arrays is None:
            fails.append((rows[i].path, f"{res.error_type}: {res.message}"))  # type: ignore[union-attr]
            continue
        probs.append(arrays["group_probabilities"])  # per card.groups
        fams.append(float(arrays["familiarity"]) if "familiarity" in arrays else np.inf)
        keep.append(i)
    if not keep:
        raise DataError(f"{data}: none of the {len(rows)} photos could be read")
    gate = _gate_thresholds(clf.package, groups) if open_set else np.full(len(groups), -1.0)
    f = np.asarray(fams, dtype=np.float64)[:, None]
    return LabelledScores(
        paths=tuple(rows[i].path for i in keep), true_groups=tuple(truth[i] for i in keep),
        groups=groups, probabilities=np.asarray(probs, dtype=np.float64),
        gated=(f < gate[None, :]), failures=tuple(fails), manifest_sha256=manifest.sha256)


def scores_from_results(results: str | Path, data: str | Path, package: ModelPackage, *,
                        split: str | None = None, data_root: str | Path | None = None
                        ) -> LabelledScores:
    """The arrays of :func:`score_manifest` from a ``wildvision classify`` JSONL instead.

    Each manifest row is matched to the result whose ``source`` is its resolved path (or its
    path as written); rows without a result are an error, failed results are listed.
    The gate is applied with ``package``'s per-group familiarity thresholds.
    """
    rows, manifest = _read_rows(data, split, data_root)
    truth = _true_groups(rows, package.card.label_groups, str(data))
    by_source: dict[str, dict[str, Any]] = {}
    try:
        with open(results, encoding="utf-8") as fh:
            for _lineno, line in enumerate(fh, start=1):
                if line.strip():
                    rec = json.loads(line)
                    by_source[str(rec["source"])] = rec
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{results}: not a results file of `wildvision classify` (JSONL): "
                        f"{e}") from e
    groups = tuple(package.card.groups)
    probs, fams, keep, fails, missing = [], [], [], [], []
    for i, r in enumerate(rows):
        rec = by_source.get(str(manifest.abs_path(r))) or by_source.get(r.path)
        if rec is None:
            missing.append(r.path)
            continue
        if not rec.get("ok", True):
            fails.append((r.path, f"{rec.get('error_type')}: {rec.get('message')}"))
            continue
        try:
            probs.append([float(rec["groups"][g]["probability"]) for g in groups])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{results}: result for {r.path} lacks group {e} of "
                            f"{package.card.name}") from e
        fam = rec.get("familiarity")
        fams.append(float(fam) if fam is not None else np.inf)
        keep.append(i)
    if missing:
        raise DataError(f"{results}: no result for {len(missing)} manifest row(s), e.g. "
                        f"{', '.join(missing[:3])}")
    gate = _gate_thresholds(package, groups)
    f = np.asarray(fams, dtype=np.float64)[:, None]
    return LabelledScores(
        paths=tuple(rows[i].path for i in keep), true_groups=tuple(truth[i] for i in keep),
        groups=groups, probabilities=np.asarray(probs, dtype=np.float64).reshape(-1, len(groups)),
        gated=(f < gate[None, :]), failures=tuple(fails), manifest_sha256=manifest.sha256)


def scores_from_bench(predictions: str | Path, package: ModelPackage, *,
                      sources: Sequence[str] | None = None,
                      groups_only: Sequence[str] | None = None) -> LabelledScores:
    """The arrays of :func:`score_manifest` from a ``wildvision bench`` ``predictions.jsonl``
    of ``package`` (group probabilities summed from its label probabilities; the gate applied
    with ``package``'s thresholds to the recorded familiarity). ``sources`` / ``groups_only``
    keep only rows of those sources / true groups."""
    from ..bench.predictions import read_predictions

    pset = read_predictions(predictions)
    runs = list(pset.models)
    if len(runs) != 1:
        raise DataError(f"{predictions}: expected the predictions of one model, found "
                        f"{len(runs)}")
    run = runs[0]
    label_groups = run.label_groups
    groups = tuple(package.card.groups)
    if set(label_groups.values()) != set(groups):
        raise ConfigError(f"{predictions}: its model's groups do not match {package.card.name}")
    paths, truth, probs, fams, fails = [], [], [], [], []
    for rec in run.records:
        if sources is not None and rec.get("source") not in sources:
            continue
        if groups_only is not None and rec.get("group") not in groups_only:
            continue
        if not rec.get("ok"):
            fails.append((str(rec.get("path")), f"{rec.get('error_type')}: {rec.get('message')}"))
            continue
        if rec.get("group") not in GROUP_NAMES:
            continue
        gp = dict.fromkeys(groups, 0.0)
        for lab, p in rec["probabilities"].items():
            gp[label_groups[lab]] += float(p)
        paths.append(str(rec["path"]))
        truth.append(str(rec["group"]))
        probs.append([gp[g] for g in groups])
        fam = rec.get("familiarity")
        fams.append(float(fam) if fam is not None else np.inf)
    if not paths:
        raise DataError(f"{predictions}: no labelled, readable rows were selected")
    gate = _gate_thresholds(package, groups)
    f = np.asarray(fams, dtype=np.float64)[:, None]
    return LabelledScores(paths=tuple(paths), true_groups=tuple(truth), groups=groups,
                          probabilities=np.asarray(probs, dtype=np.float64),
                          gated=(f < gate[None, :]), failures=tuple(fails),
                          manifest_sha256=str(pset.run.get("manifest_sha256", "")))


def concat_scores(parts: Sequence[LabelledScores]) -> LabelledScores:
    """One score set of several (same groups), e.g. in-source validation photos and the
    out-of-source photos of leave-one-source-out models."""
    if not parts or len({p.groups for p in parts}) != 1:
        raise ConfigError("concat_scores needs score sets of the same groups")
    return LabelledScores(
        paths=tuple(x for p in parts for x in p.paths),
        true_groups=tuple(x for p in parts for x in p.true_groups), groups=parts[0].groups,
        probabilities=np.concatenate([p.probabilities for p in parts]),
        gated=np.concatenate([p.gated for p in parts]),
        failures=tuple(x for p in parts for x in p.failures),
        manifest_sha256="+".join(p.manifest_sha256 for p in parts if p.manifest_sha256))


def _flaggable_thresholds(package: ModelPackage) -> dict[str, Thresholds]:
    card = package.card
    return {g: card.threshold(g) for g in card.groups if g in FLAGGABLE_GROUPS}


def calibrate_package(
    model: str | Path | ModelPackage,
    scores: LabelledScores,
    policy: ReviewPolicy,
    *,
    out: str | Path | None = None,
    evaluate: Mapping[str, LabelledScores] | None = None,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    source: Mapping[str, Any] | None = None,
    version: str | None = None,
    overwrite: bool = False,
) -> CalibrationReport:
    """Derive thresholds for ``policy`` from ``scores`` and (with ``out``) write a package.

    Args:
        model: the package whose thresholds change (its weights are copied unchanged).
        scores: labelled scores of the calibration photos (:func:`score_manifest`).
        policy: review budget and flag precision.
        out: folder for the new package (must not exist unless ``overwrite``); ``None``
            measures only.
        evaluate: more labelled score sets to measure the trade-off curve on (by name).
        budgets: the review budgets of the trade-off curve.
        source: what the calibration photos were (recorded in the card's ``policy``).
        version: the written package's version (default: the model's, plus ``+calibrated``
            local label).

    Raises:
        ConfigError: ``out`` exists, or the scores do not fit the model.
    """
    from ..registry import load_model

    package = model if isinstance(model, ModelPackage) else load_model(model)
    if tuple(package.card.groups) != scores.groups:
        raise ConfigError(f"scores are for groups {scores.groups}, {package.card.name} has "
                          f"{package.card.groups}")
    current = _flaggable_thresholds(package)
    result = derive_thresholds(scores.probabilities, scores.true_groups, scores.groups,
                               current, policy, gated=scores.gated)
    sets = {"calibration": scores, **dict(evaluate or {})}
    before = {k: measure(s.probabilities, s.true_groups, s.groups, current, gated=s.gated)
              for k, s in sets.items()}
    after = {k: measure(s.probabilities, s.true_groups, s.groups, result.thresholds,
                        gated=s.gated) for k, s in sets.items()}
    curve = []
    for b in budgets:
        r = derive_thresholds(scores.probabilities, scores.true_groups, scores.groups, current,
                              replace(policy, review_budget=b), gated=scores.gated)
        curve.append({"review_budget": b,
                      "thresholds": {g: t.to_dict() for g, t in r.thresholds.items()},
                      **{k: measure(s.probabilities, s.true_groups, s.groups, r.thresholds,
                                    gated=s.gated) for k, s in sets.items()}})
    written: Path | None = None
    if out is not None:
        written = _write(package, result, curve, before, after, scores, out,
                         source=source, version=version, overwrite=overwrite)
    return CalibrationReport(result=result, curve=curve, before=before, after=after,
                             photos=len(scores.paths), failures=scores.failures, out=written)


def policy_block(result: PolicyResult, curve: list[dict[str, Any]], after: Mapping[str, Any],
                 scores: LabelledScores, source: Mapping[str, Any] | None) -> dict[str, Any]:
    """The card's ``policy`` entry."""
    counts: dict[str, int] = {}
    for g in scores.true_groups:
        counts[g] = counts.get(g, 0) + 1
    src = dict(source or {})
    extra = {"cross_source": src.pop("cross_source")} if "cross_source" in src else {}
    return {**result.to_dict(), "measured": dict(after), "tradeoff_curve": curve, **extra,
            "calibration_photos": {"count": len(scores.paths), "by_group": counts,
                                   "manifest_sha256": scores.manifest_sha256,
                                   "unreadable": len(scores.failures), **src}}


def _write(package: ModelPackage, result: PolicyResult, curve: list[dict[str, Any]],
           before: Mapping[str, Any], after: Mapping[str, Any], scores: LabelledScores,
           out: str | Path, *, source: Mapping[str, Any] | None, version: str | None,
           overwrite: bool) -> Path:
    dest = Path(out)
    if dest.exists() and not overwrite:
        raise ConfigError(f"{dest} exists: choose a new folder (nothing was written)")
    card = package.card
    thresholds = dict(card.thresholds)
    thresholds.update(result.thresholds)
    extra = dict(card.extra)
    extra["policy"] = policy_block(result, curve, after, scores, source)
    extra["policy"]["before"] = dict(before)
    lineage = list(extra.get("lineage", []))
    lineage.append({"step": "calibrate", "base": card.name, "base_version": card.version,
                    "base_files": dict(card.files), "data_sha256": scores.manifest_sha256,
                    **result.policy.to_dict()})
    extra["lineage"] = lineage
    new_card = card.with_updates(thresholds=thresholds, extra=extra,
                                 version=version or f"{card.version}+calibrated")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for name, digest in card.files.items():
            shutil.copy2(package.path / name, tmp / name)
            if sha256_file(tmp / name) != digest:
                raise ConfigError(f"{package.path / name} changed while it was copied")
        write_card(tmp, new_card, rehash=False)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    load_package(dest)  # verifies what was written
    return dest
