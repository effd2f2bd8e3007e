"""``extend_model``: a model package that knows its base model's labels and new ones, fitted
in numpy on the base package's extension bank plus embeddings of the new photos.

Steps (core install only: numpy, Pillow, onnxruntime):

1. check the new data (groups, clashes, minimum photos) and embed it with the base model's
   own ``embedding`` output; unreadable photos are listed, not fatal;
2. fit a softmax head over the base labels and the new ones on the bank's training rows and
   the new training photos, warm-started from (and pulled towards) the base head, the pull's
   strength chosen on validation (the bank's validation rows and a held-out share of the new
   photos);
3. refit the temperature, the per-group thresholds (the base card's policy) and the open-set
   gate (the new training photos join its references);
4. measure retention: each base group's F1 on the bank's validation rows before and after;
   refuse when one drops more than ``max_drop`` unless forced;
5. write an ordinary package into a temporary folder next to ``out`` and rename it into
   place: the base ONNX files unchanged, ``head.npz`` (applied by every load path), the grown
   ``bank.npz`` (so the result can be extended again) and ``familiarity.npz``, with the
   lineage in the card.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._version import __version__
from ..bank import BANK_FILE, TRAIN, VAL, Bank, ImageFailure, embed_images, package_bank
from ..calibration import (
    DEFAULT_FLAG_PRECISION,
    DEFAULT_REVIEW_PRECISION,
    choose_group_thresholds,
    fit_temperature,
    thresholds_from_reports,
)
from ..errors import ConfigError, DataError, RetentionError
from ..head import HEAD_FILE, LinearHead
from ..modelcard_md import write_card
from ..modelpack import ModelCard, ModelPackage, Thresholds, load_package, sha256_file
from ..openset import FAMILIARITY_FILE, Familiarity, load_familiarity
from ..registry import load_model
from ..scores import group_matrix, softmax, unit_rows
from ..taxonomy import FLAGGABLE_GROUPS, GROUP_NAMES
from .data import NewData, read_new_data, resolve_groups
from .fit import balanced_weights, fit_head

__all__ = ["MIN_PHOTOS", "ExtensionResult", "Policy", "extend_model"]

MIN_PHOTOS = 10  # readable photos per new label, at least
_WEIGHT_POWER = 0.5  # label weights count^-0.5, as the default model's training sampler


@dataclass(frozen=True)
class Policy:
    """How thresholds are chosen on validation (defaults: the default model's recipe)."""

    flag_precision: float = DEFAULT_FLAG_PRECISION
    review_precision: float = DEFAULT_REVIEW_PRECISION
    min_flag: float = 0.5
    min_review: float = 0.2
    fallback: Thresholds = field(default_factory=lambda: Thresholds(flag=0.5, review=0.3))

    def to_dict(self) -> dict[str, Any]:
        return {"flag_precision": self.flag_precision,
                "review_precision": self.review_precision, "min_flag": self.min_flag,
                "min_review": self.min_review, "fallback": self.fallback.to_dict()}


@dataclass(frozen=True)
class ExtensionResult:
    """What :func:`extend_model` wrote and measured.

    Attributes:
        path: the new package (``None`` when nothing was written: ``dry_run``).
        card: its card.
        retention: per base group, F1 of the most probable group on the bank's validation
            rows ``before`` and ``after``, and the ``drop`` (points of F1, 0-100).
        new_labels: per new label, precision/recall/F1 of the most probable label on the
            validation rows (the bank's and the held-out new photos).
        failures: photos that could not be read (left out).
        seconds: wall time.
    """

    path: Path | None
    card: ModelCard
    retention: Mapping[str, Mapping[str, float]]
    new_labels: Mapping[str, Mapping[str, float]]
    failures: tuple[ImageFailure, ...]
    seconds: float
    forced: bool = False

    def summary(self) -> dict[str, Any]:
        return {"path": os.fspath(self.path) if self.path else None,
                "name": self.card.name, "version": self.card.version,
                "labels": len(self.card.labels), "retention": dict(self.retention),
                "new_labels": dict(self.new_labels),
                "unreadable": [f.to_dict() for f in self.failures],
                "forced": self.forced, "seconds": round(self.seconds, 2)}


def _group_f1(pred: NDArray[np.int64], truth: NDArray[np.int64], k: int) -> float:
    tp = int(((pred == k) & (truth == k)).sum())
    fp = int(((pred == k) & (truth != k)).sum())
    fn = int(((pred != k) & (truth == k)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def _prf(pred: NDArray[np.int64], truth: NDArray[np.int64], k: int) -> dict[str, float]:
    tp = int(((pred == k) & (truth == k)).sum())
    fp = int(((pred == k) & (truth != k)).sum())
    fn = int(((pred != k) & (truth == k)).sum())
    return {"support": tp + fn,
            "precision": round(tp / (tp + fp), 6) if tp + fp else 0.0,
            "recall": round(tp / (tp + fn), 6) if tp + fn else 0.0,
            "f1": round(2 * tp / (2 * tp + fp + fn), 6) if tp + fp + fn else 0.0}


def _group_matrix(labels: Sequence[str], label_groups: Mapping[str, str]
                  ) -> tuple[tuple[str, ...], NDArray[np.float64]]:
    """The groups present (taxonomy order) and the label -> group matrix."""
    present = {label_groups[lab] for lab in labels}
    groups = tuple(g for g in GROUP_NAMES if g in present)
    return groups, group_matrix(labels, label_groups, groups)


def _split_new(labels: Sequence[str], splits: Sequence[str], holdout: float, seed: int
               ) -> NDArray[np.uint8]:
    """TRAIN/VAL per new photo: a given split is kept; the others of each label are split
    at random, ``holdout`` of them (at least one) to validation."""
    rng = np.random.default_rng(seed)
    out = np.full(len(labels), TRAIN, dtype=np.uint8)
    arr = np.asarray(labels, dtype=object)
    for lab in dict.fromkeys(labels):
        idx = np.nonzero(arr == lab)[0]
        given_val = [int(i) for i in idx if splits[int(i)] == "val"]
        free = [int(i) for i in idx if splits[int(i)] == ""]
        out[given_val] = VAL
        if free and not given_val:
            n_val = max(1, round(holdout * len(idx))) if len(idx) > 1 else 0
            out[rng.permutation(free)[:n_val]] = VAL
    return out


def _retention_table(before: Mapping[str, float], after: Mapping[str, float]
                     ) -> dict[str, dict[str, float]]:
    return {g: {"before": round(before[g], 6), "after": round(after[g], 6),
                "drop": round(100 * (before[g] - after[g]), 3)} for g in before}


def _familiarity_rows(gate: Familiarity, bank: Bank, x: NDArray[np.float32]) -> NDArray[np.float32]:
    """The gate's score of bank rows (projected embeddings): the gate's projection lies in
    the bank's span, so ``P_gate e = (P_gate P_bank^T) x`` exactly."""
    m = gate.projection @ bank.projection.T
    z = unit_rows(x @ m.T)
    refs = gate.references.astype(np.float32)
    out = np.empty(len(z), dtype=np.float32)
    for i in range(0, len(z), 512):
        out[i:i + 512] = (z[i:i + 512] @ refs.T).max(axis=1)
    return out


def _gate_in_span(gate: Familiarity, bank: Bank) -> bool:
    m = gate.projection @ bank.projection.T
    back = m @ bank.projection
    return bool(np.abs(back - gate.projection).max() < 1e-3)


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: already exists; choose a new folder for the extended "
                          "package (nothing was written)")


def write_head_package(base: ModelPackage, out: Path, card: ModelCard, head: LinearHead,
                       bank: Bank | None, gate: Familiarity | None) -> ModelCard:
    """Write a package of ``base``'s ONNX files with ``head`` (and ``bank``, ``gate``) and
    ``card`` into ``out`` atomically: built in a temporary sibling folder, every hash verified,
    then renamed into place (``out`` must not exist or be empty). Returns the written card."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for fname in base.card.files:
            if fname.endswith(".onnx"):
                shutil.copy2(base.path / fname, tmp / fname)
        head.save(tmp / HEAD_FILE)
        if bank is not None:
            bank.save(tmp / BANK_FILE)
        if gate is not None:
            gate.save(tmp / FAMILIARITY_FILE)
        written = write_card(tmp, card)
        load_package(tmp)  # verify every hash before it is in place
        _check_out(out)
        if out.exists():
            out.rmdir()  # empty (checked)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


def extend_model(
    base: str | os.PathLike[str] | ModelPackage | None,
    data: NewData | str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None,
    *,
    groups: Mapping[str, str] | None = None,
    name: str | None = None,
    version: str = "1.0.0",
    description: str | None = None,
    holdout: float = 0.2,
    min_photos: int = MIN_PHOTOS,
    max_drop: float = 2.0,
    force: bool = False,
    policy: Policy | None = None,
    l2_grid: Sequence[float] = (1.0, 0.1, 0.01, 0.001),
    seed: int = 0,
    threads: int | None = None,
    data_root: str | os.PathLike[str] | None = None,
    command: str = "",
    log: Callable[[str], None] | None = None,
) -> ExtensionResult:
    """Extend a model package with new labels (or more photos of its labels).

    Args:
        base: the base model: a name (default ``wildvision-base`` for ``None``), a package
            folder or a :class:`~wildvision.modelpack.ModelPackage`. It must carry an
            extension bank (``bank.npz``; ``wildvision export bank`` adds one).
        data: a manifest ``.csv``, folders of photos (see
            :func:`~wildvision.extend.read_new_data`) or a :class:`NewData`.
        out: the folder to write (must not exist, or be empty); ``None``: measure only.
        groups: ``{new_label: group}``, e.g. ``{"rhino_horn_raw": "rhino_horn"}``.
        name, version, description: of the new package (default name: ``out``'s name).
        holdout: share of each new label's photos kept for validation (when the data does
            not give splits).
        min_photos: readable photos each new label needs.
        max_drop: the largest F1 drop (points, 0-100) a base group may take on the bank's
            validation rows.
        force: write even when a base group drops more (the card records it).
        policy: threshold targets (default: the default model's).
        l2_grid: pull strengths towards the base head to choose from on validation.
        seed: of the random validation split.
        threads: inference threads for embedding the new photos.
        data_root: root of a manifest's relative paths.
        command: the command line, recorded in the card.
        log: receives progress lines (default: stderr).

    Returns:
        An :class:`ExtensionResult`.

    Raises:
        UnknownModelError: an unknown base model.
        ConfigError: no bank in the base package, a label clash, a new label without a group,
            ``out`` already holding files, bad options.
        DataError: missing paths, fewer than ``min_photos`` readable photos of a new label.
        RetentionError: a base group would lose more than ``max_drop`` points of F1 (not
            raised with ``force``); nothing is written.

    Example:
        >>> extend_model("wildvision-base", "takedowns/", "models/ours",  # doctest: +SKIP
        ...              groups={"rhino_horn_raw": "rhino_horn"})
    """
    t0 = time.perf_counter()
    say = log or (lambda s: print(s, file=sys.stderr))
    policy = policy or Policy()
    if not 0.0 < holdout < 1.0:
        raise ConfigError(f"holdout must be in (0, 1), got {holdout}")
    if min_photos < 2:
        raise ConfigError(f"min_photos must be >= 2, got {min_photos}")
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        _check_out(out_path)
    pkg = load_model(base)
    card = pkg.card
    bank = package_bank(pkg)
    if bank is None:
        raise ConfigError(
            f"model {card.name} {card.version} has no extension bank ({BANK_FILE}); add one "
            f"with `wildvision export bank {pkg.path} --data TRAINING_MANIFEST`")
    if bank.label_names != card.labels:
        raise ConfigError(f"{pkg.path / BANK_FILE}: its labels differ from the card's; rebuild "
                          "it with `wildvision export bank`")
    new = data if isinstance(data, NewData) else read_new_data(data, groups,
                                                               data_root=data_root)
    if isinstance(data, NewData) and groups:
        new = NewData(new.photos, {**new.groups, **groups}, new.source, new.manifest_sha256,
                      new.left_out)
    label_group = resolve_groups(new.labels, new.groups, card.label_groups)
    added = [lab for lab in new.labels if lab not in card.label_groups]

    # 1. embed
    say(f"extend: embedding {len(new.photos)} photos with {card.name} {card.version}")
    from ..predict import Classifier

    clf = Classifier(pkg, open_set=False, threads=threads)
    emb = embed_images(clf, [p.path for p in new.photos])
    for f in emb.failures:
        say(f"extend: unreadable, left out: {f.source} ({f.error_type}: {f.message})")
    ok = [new.photos[int(i)] for i in emb.index]
    counts = {lab: sum(1 for p in ok if p.label == lab) for lab in new.labels}
    short = {lab: counts[lab] for lab in added if counts[lab] < min_photos}
    if short:
        raise DataError(f"new label(s) with fewer than {min_photos} readable photos: "
                        + ", ".join(f"{lab} ({n})" for lab, n in short.items())
                        + (f"; {len(emb.failures)} photo(s) were unreadable"
                           if emb.failures else ""))
    if not ok:
        raise DataError("extend: none of the new photos could be read")

    # 2. label space and rows
    labels = (*card.labels, *added)
    groups_all = {**card.label_groups, **{lab: label_group[lab] for lab in added}}
    index = {lab: i for i, lab in enumerate(labels)}
    new_split = _split_new([p.label for p in ok], [p.split for p in ok], holdout, seed)
    x_new = bank.project(emb.embeddings)
    y_new = np.array([index[p.label] for p in ok], dtype=np.int64)
    x_bank_tr, lab_tr = bank.rows(TRAIN)
    x_bank_va, lab_va = bank.rows(VAL)
    y_bank_tr = np.array([index[x] for x in lab_tr], dtype=np.int64)
    y_bank_va = np.array([index[x] for x in lab_va], dtype=np.int64)
    tr, va = new_split == TRAIN, new_split == VAL
    for lab in added:
        k = index[lab]
        if not (y_new[tr] == k).any() or not (y_new[va] == k).any():
            raise DataError(f"new label {lab!r} needs photos for training and for validation "
                            f"(has {int((y_new[tr] == k).sum())} and "
                            f"{int((y_new[va] == k).sum())})")
    x_tr = np.vstack([x_bank_tr, x_new[tr]])
    y_tr = np.concatenate([y_bank_tr, y_new[tr]])
    x_va = np.vstack([x_bank_va, x_new[va]])
    y_va = np.concatenate([y_bank_va, y_new[va]])
    true_counts = np.zeros(len(labels))
    true_counts[: len(card.labels)] = bank.train_counts
    true_counts += np.bincount(y_new[tr], minlength=len(labels))
    w_tr = balanced_weights(y_tr, true_counts, _WEIGHT_POWER)
    w_va = balanced_weights(y_va, np.bincount(y_va, minlength=len(labels)).astype(np.float64),
                            _WEIGHT_POWER)

    # 3. fit the head, warm-started from the base head
    c_new = len(added)
    w0 = np.vstack([bank.head_weight.astype(np.float64), np.zeros((c_new, bank.dims))])
    b0 = np.concatenate([bank.head_bias.astype(np.float64),
                         np.full(c_new, float(np.median(bank.head_bias)))])
    say(f"extend: fitting a {len(labels)}-label head on {len(y_tr)} rows "
        f"({int(tr.sum())} new), validating on {len(y_va)} ({int(va.sum())} new)")
    # the base model's own rows stay as they are, except for labels that got new photos
    trainable = sorted({index[lab] for lab in new.labels})
    fit = fit_head(x_tr, y_tr, w_tr, x_va, y_va, w_va, w0, b0, trainable=trainable,
                   l2_grid=l2_grid)
    val_logits = x_va @ fit.weight.T + fit.bias
    temperature = fit_temperature(val_logits, y_va)

    # 4. thresholds on validation
    groups_t, gm = _group_matrix(labels, groups_all)
    gp_va = softmax(val_logits, temperature) @ gm
    true_group_va = [groups_all[labels[k]] for k in y_va]
    reports = choose_group_thresholds(
        gp_va, true_group_va, groups_t, flaggable=FLAGGABLE_GROUPS,
        flag_precision=policy.flag_precision, review_precision=policy.review_precision,
        fallback=policy.fallback, min_flag=policy.min_flag, min_review=policy.min_review)
    thresholds = thresholds_from_reports(reports)

    # 5. retention on the bank's validation rows (base groups, most probable group)
    base_groups, base_gm = _group_matrix(card.labels, card.label_groups)
    gi_truth = np.array([base_groups.index(card.label_groups[x]) for x in lab_va])
    before_gp = softmax(x_bank_va @ bank.head_weight.T + bank.head_bias,
                        card.temperature) @ base_gm
    after_gp = softmax(x_bank_va @ fit.weight.T + fit.bias, temperature) @ gm
    before_pred = before_gp.argmax(axis=1)
    after_pred_g = np.array([groups_t[i] for i in after_gp.argmax(axis=1)], dtype=object)
    after_pred = np.array([base_groups.index(g) if g in base_groups else -1
                           for g in after_pred_g])
    before = {g: _group_f1(before_pred, gi_truth, k) for k, g in enumerate(base_groups)}
    after = {g: _group_f1(after_pred, gi_truth, k) for k, g in enumerate(base_groups)}
    retention = _retention_table(before, after)
    worst = max(retention.values(), key=lambda r: r["drop"])
    lost = {g: r for g, r in retention.items() if r["drop"] > max_drop}
    for g, r in retention.items():
        say(f"extend: retention {g}: F1 {r['before']:.4f} -> {r['after']:.4f} "
            f"({-r['drop']:+.2f} points)")
    forced = False
    if lost:
        msg = ("base group(s) lose more than "
               f"{max_drop} points of F1 on the base model's validation bank: "
               + ", ".join(f"{g} {r['before']:.4f} -> {r['after']:.4f}" for g, r in lost.items()))
        if not force:
            raise RetentionError(msg + "; nothing was written (add photos of the look-alike "
                                 "negatives, or force it)")
        forced = True
        warnings.warn("FORCED: " + msg, stacklevel=2)
        say("extend: WARNING, FORCED: " + msg)

    # 6. new labels on validation (most probable label)
    pred_va = val_logits.argmax(axis=1)
    new_metrics = {lab: _prf(pred_va, y_va, index[lab]) for lab in new.labels}
    for lab, mtr in new_metrics.items():
        say(f"extend: {lab}: validation F1 {mtr['f1']:.3f} (precision {mtr['precision']:.3f}, "
            f"recall {mtr['recall']:.3f}, {mtr['support']} photos)")

    # 7. the open-set gate: the new training photos join the references
    base_gate = None
    fam_record: dict[str, Any] | None = None
    if FAMILIARITY_FILE in card.files:
        base_gate = load_familiarity(pkg.file(FAMILIARITY_FILE), {})
    gate = None
    if base_gate is not None:
        z = unit_rows(unit_rows(emb.embeddings[tr]) @ base_gate.projection.T)
        refs = np.vstack([base_gate.references, z.astype(np.float16)])
        gate = Familiarity(base_gate.projection, refs, {})
        old = dict(card.extra.get("familiarity", {}))
        quantile = float(old.get("quantile", 0.01))
        fam_scores = np.concatenate([
            _familiarity_rows(gate, bank, x_bank_va) if _gate_in_span(gate, bank)
            else np.full(len(x_bank_va), np.nan, np.float32),
            gate.score(emb.embeddings[va])])
        flag_va = np.zeros(len(y_va), dtype=bool)
        fam_thresholds: dict[str, float] = {}
        positives: dict[str, int] = {}
        old_th = {str(g): float(t) for g, t in dict(old.get("thresholds", {})).items()}
        for gi, g in enumerate(groups_t):
            if g not in thresholds:
                continue
            flag_va = (gp_va[:, gi] >= thresholds[g].flag) & (np.array(true_group_va) == g)
            s = fam_scores[flag_va]
            s = s[np.isfinite(s)]
            positives[g] = len(s)
            if len(s):
                fam_thresholds[g] = round(float(np.quantile(s, quantile)), 6)
            elif g in old_th:
                fam_thresholds[g] = old_th[g]
        gate = Familiarity(base_gate.projection, refs, fam_thresholds)
        fam_record = {
            **{k: v for k, v in old.items() if k not in ("thresholds", "validation_positives",
                                                         "references", "command")},
            "thresholds": fam_thresholds, "quantile": quantile,
            "references": len(refs), "validation_positives": positives,
            "extended_with": int(tr.sum()),
            "command": command or "wildvision extend",
        }

    # 7b. a base card with a review-budget policy: review (and flag) thresholds re-derived
    # for the same budget on the validation rows, the gate's reviews counted first
    policy_record: dict[str, Any] | None = None
    base_policy = card.extra.get("policy")
    if isinstance(base_policy, Mapping) and "review_budget" in base_policy:
        from ..policy import ReviewPolicy, derive_thresholds

        rp = ReviewPolicy(review_budget=float(base_policy["review_budget"]),
                          flag_precision=float(base_policy.get("flag_precision",
                                                               policy.flag_precision)),
                          min_positives=int(base_policy.get("min_positives", 20)),
                          min_flag=float(base_policy.get("min_flag", policy.min_flag)))
        gated = np.zeros(gp_va.shape, dtype=bool)
        if gate is not None:
            for gi, g in enumerate(groups_t):
                t = gate.thresholds.get(g)
                if t is not None:
                    gated[:, gi] = np.nan_to_num(fam_scores, nan=1.0) < t
        derived = derive_thresholds(gp_va, true_group_va, groups_t, thresholds, rp,
                                    gated=gated)
        thresholds = dict(derived.thresholds)
        # Never looser than the base: the base card's thresholds were derived from photos the
        # bank does not hold (sources the training never saw, see its policy), so a refit on
        # in-source validation rows alone would flag and review more open-world photos.
        # Loosen deliberately with `wildvision calibrate` on the platform's own photos.
        kept: dict[str, dict[str, float]] = {}
        for g, base_t in card.thresholds.items():
            if g in thresholds and (base_t.flag > thresholds[g].flag
                                    or base_t.review > thresholds[g].review):
                new_t = Thresholds(max(base_t.flag, thresholds[g].flag),
                                   max(base_t.review, thresholds[g].review))
                kept[g] = {"refit_flag": thresholds[g].flag,
                           "refit_review": thresholds[g].review}
                thresholds[g] = new_t
        policy_record = {**derived.to_dict(),
                         "thresholds": {g: t.to_dict() for g, t in thresholds.items()},
                         "base_thresholds_kept": kept,
                         "notes": [*derived.to_dict()["notes"],
                                   "benign shares are at the refit thresholds; where the "
                                   "base card's thresholds were stricter they are kept "
                                   "(base_thresholds_kept)"],
                         "calibration_photos": {
                             "source": "wildvision extend: the base bank's validation rows "
                                       "and the held-out new photos",
                             "count": len(y_va)}}
        say(f"extend: review-budget policy {rp.review_budget:.2%}: benign review share "
            f"{derived.benign_review_share:.2%} on validation")

    # 8. the package
    full_w = (fit.weight @ bank.projection.astype(np.float64)).astype(np.float32)
    head = LinearHead(full_w, fit.bias.astype(np.float32))
    new_bank = Bank(
        projection=bank.projection,
        embeddings=np.vstack([bank.embeddings, x_new.astype(np.float16)]),
        labels=np.concatenate([bank.labels, y_new.astype(np.int16)]),
        label_names=tuple(labels),
        splits=np.concatenate([bank.splits, new_split]),
        train_counts=true_counts.astype(np.int64),
        head_weight=fit.weight.astype(np.float32),
        head_bias=fit.bias.astype(np.float32),
    )
    photo_counts = {lab: {"group": groups_all[lab], "kind": "new" if lab in added else "added",
                          "train": int(((y_new == index[lab]) & tr).sum()),
                          "val": int(((y_new == index[lab]) & va).sum())}
                    for lab in new.labels}
    step = {
        "step": "extend", "base": card.name, "base_version": card.version,
        "base_files": dict(card.files), "base_card_sha256": sha256_file(pkg.path / "card.json"),
        "data": new.source, "data_sha256": new.manifest_sha256, "labels": photo_counts,
        "unreadable": len(emb.failures), "left_out_test_rows": new.left_out,
        "command": command, "wildvision": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    lineage = [*list(card.extra.get("lineage", [])), step]
    ext_record: dict[str, Any] = {
        "method": "softmax head on the base model's embedding (numpy): the base head's rows "
                  "kept, new labels' rows (and those of base labels given new photos) "
                  "fitted with an L2 pull towards the base head, every bias refitted; bank "
                  "training rows plus the new photos",
        "trainable_labels": [labels[i] for i in trainable],
        "l2": fit.l2, "trials": fit.trials, "holdout": holdout, "seed": seed,
        "label_weights": f"count^-{_WEIGHT_POWER}",
        "policy": policy.to_dict(),
        "max_drop_points": max_drop, "forced": forced,
        "retention_split": "the base bank's validation rows",
        "unreadable": [f.to_dict() for f in emb.failures][:100],
    }
    if forced:
        ext_record["warning"] = ("written with force although a base group lost more than "
                                 f"{max_drop} points of F1: "
                                 + ", ".join(f"{g} ({r['drop']} points)"
                                             for g, r in lost.items()))
    metrics: dict[str, Any] = {
        "extension_validation": {
            "split": "bank validation rows + held-out new photos", "n": len(y_va),
            "new_photos": int(va.sum()), "temperature": round(temperature, 6),
            "new_labels": new_metrics,
            "thresholds": {g: r.to_dict() for g, r in reports.items()},
            "command": command},
        "retention": {"split": "base bank validation rows", "n": len(y_bank_va),
                      "metric": "F1 of the most probable group", "per_group": retention,
                      "worst_drop_points": worst["drop"], "command": command},
    }
    still_missing = [g for g in FLAGGABLE_GROUPS if g not in set(groups_all.values())]
    extra: dict[str, Any] = {
        k: v for k, v in card.extra.items()
        if k in ("intended_use", "limitations", "data_sources", "thresholds_note")}
    extra["not_covered"] = (
        "This model has no training photos of, and never outputs, the groups: "
        + ", ".join(still_missing) + "." if still_missing else
        "Every flaggable group has at least one label.")
    extra.update({"lineage": lineage, "extension": ext_record,
                  "head": {"file": HEAD_FILE, "input": "embedding",
                           "labels": len(labels), "width": head.width}})
    pol = policy
    extra["thresholds_note"] = (
        f"Chosen by `wildvision extend` on the base bank's validation rows plus the held-out "
        f"new photos: flag at precision >= {pol.flag_precision}, review at precision >= "
        f"{pol.review_precision} (floors {pol.min_flag}/{pol.min_review}). Check them on your "
        "own labelled photos before relying on them.")
    if policy_record is not None:
        extra["thresholds_note"] += (
            f" Then, as the base model's review-budget policy requires, re-derived for a "
            f"review budget of {policy_record['review_budget']:.2%} of benign photos "
            f"(flag precision {policy_record['flag_precision']}; card entry `policy`).")
    if fam_record is not None:
        extra["familiarity"] = fam_record
    if policy_record is not None:
        extra["policy"] = policy_record
    if out_path is None:
        new_card = card.with_updates(labels=tuple(labels), label_groups=groups_all,
                                     temperature=temperature, thresholds=thresholds,
                                     metrics=metrics, extra=extra)
        return ExtensionResult(None, new_card, retention, new_metrics, emb.failures,
                               time.perf_counter() - t0, forced)

    new_card = ModelCard(
        name=name or out_path.name,
        version=version,
        labels=tuple(labels),
        label_groups=groups_all,
        preprocess=card.preprocess,
        temperature=float(temperature),
        thresholds=thresholds,
        arch=card.arch,
        outputs=card.outputs,
        license=card.license,
        description=description or (
            f"{card.name} {card.version} extended with "
            + ", ".join(f"{lab} ({groups_all[lab]})" for lab in new.labels)
            + " by `wildvision extend` (a new head on the same network)."),
        metrics=metrics,
        training={"mode": "extend", "command": command, "base": f"{card.name} {card.version}",
                  "manifest": new.source, "manifest_sha256": new.manifest_sha256,
                  "train_counts": {lab: int(true_counts[i]) for i, lab in enumerate(labels)}},
        extra={**extra, "bank": {**dict(card.extra.get("bank", {})),
                                 "rows": {"train": int((new_bank.splits == TRAIN).sum()),
                                          "val": int((new_bank.splits == VAL).sum())},
                                 "array_bytes": new_bank.nbytes(),
                                 "extended_with": len(y_new)}},
    )
    written = write_head_package(pkg, out_path, new_card, head, new_bank, gate)
    say(f"extend: wrote {out_path} ({len(labels)} labels; "
        f"{json.dumps({g: t.to_dict() for g, t in thresholds.items()})})")
    return ExtensionResult(out_path, written, retention, new_metrics, emb.failures,
                           time.perf_counter() - t0, forced)
