"""``drop_labels``: a model package that no longer knows some of its base model's labels.

The result runs the base network unchanged with a numpy head (``head.npz``) that has the
kept labels' rows of the base head: the model's scores of the kept labels are the base's,
renormalised without the dropped ones. Its extension bank loses the dropped labels' rows
and its open-set gate their reference photos, so that extending it with those labels again
starts from a model that has no head rows, no bank rows and no gate references for them.

What it is for: measuring :func:`~wildvision.extend.extend_model` on labels a model was
trained with (the network itself still saw them in training: this checks the head refit,
retention and thresholds, not whether the embedding can represent an unseen concept), and
removing a label a platform does not want reported.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..bank import BANK_FILE, TRAIN, Bank, package_bank
from ..errors import ConfigError
from ..head import HEAD_FILE, LinearHead, head_weights
from ..modelpack import ModelPackage, load_package, sha256_file
from ..openset import FAMILIARITY_FILE, Familiarity, load_familiarity
from ..registry import load_model
from ..scores import unit_rows
from .extension import write_head_package

__all__ = ["drop_labels"]

_SAME_PHOTO = 0.995  # cosine above which a gate reference is a dropped row's own photo


def _gate_without(gate: Familiarity, bank: Bank, drop_rows: np.ndarray
                  ) -> tuple[Familiarity, int]:
    """``gate`` without the references that are the dropped training rows' photos (found by
    projecting those rows into the gate's space: the gate's projection lies in the bank's)."""
    m = gate.projection @ bank.projection.T
    if np.abs(m @ bank.projection - gate.projection).max() >= 1e-3 or not len(drop_rows):
        return gate, 0
    z = unit_rows(bank.embeddings[drop_rows].astype(np.float32) @ m.T)
    refs = gate.references.astype(np.float32)
    remove = np.zeros(len(refs), dtype=bool)
    for i in range(0, len(refs), 1024):
        remove[i:i + 1024] = (refs[i:i + 1024] @ z.T).max(axis=1) > _SAME_PHOTO
    return Familiarity(gate.projection, gate.references[~remove], {}), int(remove.sum())


def drop_labels(
    base: str | os.PathLike[str] | ModelPackage | None,
    labels: Sequence[str],
    out: str | os.PathLike[str],
    *,
    name: str | None = None,
    version: str | None = None,
    command: str = "",
) -> ModelPackage:
    """Write a package that is ``base`` without ``labels``.

    The ONNX files are copied unchanged; ``head.npz`` holds the kept rows of the base head
    (the ONNX graph's, or an extended package's ``head.npz``); the temperature, thresholds,
    familiarity thresholds and review-budget policy are the base card's (a group left without
    labels loses its thresholds). The base metrics no longer describe the result and are not
    copied; the step is recorded in the card's ``lineage``.

    Args:
        base: a model name (``None``: the default model), package folder or package.
        labels: base labels to remove (at least two labels must remain).
        out: the new package folder (must not exist, or be empty).
        name, version: of the result (default: ``out``'s name, the base version).
        command: recorded in the lineage.

    Raises:
        ConfigError: an unknown label, nothing left, ``out`` holding files.
        UnknownModelError: an unknown base model.
    """
    out_path = Path(out)
    if out_path.exists() and (not out_path.is_dir() or any(out_path.iterdir())):
        raise ConfigError(f"{out_path}: already exists; choose a new folder (nothing was "
                          "written)")
    pkg = load_model(base)
    card = pkg.card
    drop = list(dict.fromkeys(labels))
    unknown = [lab for lab in drop if lab not in card.label_groups]
    if unknown:
        raise ConfigError(f"model {card.name} has no label(s) {', '.join(unknown)}")
    keep = [i for i, lab in enumerate(card.labels) if lab not in drop]
    if len(keep) < 2:
        raise ConfigError("drop_labels: at least two labels must remain")
    kept_labels = tuple(card.labels[i] for i in keep)
    groups = {lab: card.label_groups[lab] for lab in kept_labels}
    present = set(groups.values())

    full = head_weights(pkg)
    head = LinearHead(full.weight[keep], full.bias[keep])

    bank = package_bank(pkg)
    new_bank: Bank | None = None
    gate: Familiarity | None = None
    removed_refs = 0
    if bank is not None:
        if bank.label_names != card.labels:
            raise ConfigError(f"{pkg.path / BANK_FILE}: its labels differ from the card's")
        old_to_new = np.full(len(card.labels), -1, dtype=np.int64)
        old_to_new[keep] = np.arange(len(keep))
        rows = old_to_new[bank.labels.astype(np.int64)] >= 0
        new_bank = Bank(
            projection=bank.projection, embeddings=bank.embeddings[rows],
            labels=old_to_new[bank.labels[rows].astype(np.int64)].astype(np.int16),
            label_names=kept_labels, splits=bank.splits[rows],
            train_counts=bank.train_counts[keep], head_weight=bank.head_weight[keep],
            head_bias=bank.head_bias[keep])
        if FAMILIARITY_FILE in card.files:
            base_gate = load_familiarity(pkg.file(FAMILIARITY_FILE), {})
            gate, removed_refs = _gate_without(
                base_gate, bank, np.nonzero(~rows & (bank.splits == TRAIN))[0])
    elif FAMILIARITY_FILE in card.files:
        gate = load_familiarity(pkg.file(FAMILIARITY_FILE), {})

    extra: dict[str, Any] = {k: v for k, v in card.extra.items()
                             if k not in ("lineage", "head", "bank", "familiarity", "policy")}
    step = {"step": "drop_labels", "base": card.name, "base_version": card.version,
            "base_files": dict(card.files),
            "base_card_sha256": sha256_file(pkg.path / "card.json"),
            "dropped": {lab: card.label_groups[lab] for lab in drop},
            "gate_references_removed": removed_refs, "command": command,
            "wildvision": __version__,
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    extra["lineage"] = [*list(card.extra.get("lineage", [])), step]
    extra["head"] = {"file": HEAD_FILE, "input": "embedding", "labels": len(kept_labels),
                     "width": head.width}
    if new_bank is not None:
        extra["bank"] = {**dict(card.extra.get("bank", {})),
                         "rows": {"train": int((new_bank.splits == TRAIN).sum()),
                                  "val": int((new_bank.splits != TRAIN).sum())},
                         "array_bytes": new_bank.nbytes(), "dropped_labels": drop}
    fam = card.extra.get("familiarity")
    if isinstance(fam, Mapping):
        extra["familiarity"] = {
            **fam, "thresholds": {g: t for g, t in dict(fam.get("thresholds", {})).items()
                                  if g in present},
            **({"references": len(gate.references)} if gate is not None else {})}
    pol = card.extra.get("policy")
    if isinstance(pol, Mapping):
        extra["policy"] = {**pol, "thresholds": {
            g: t for g, t in dict(pol.get("thresholds", {})).items() if g in present}}
    extra["not_covered"] = (str(card.extra.get("not_covered", "")) + " Labels removed by "
                            "drop_labels (the model never outputs them): "
                            + ", ".join(drop) + ".").strip()
    new_card = card.with_updates(
        name=name or out_path.name, version=version or card.version, labels=kept_labels,
        label_groups=groups,
        thresholds={g: t for g, t in card.thresholds.items() if g in present},
        description=f"{card.name} {card.version} without the label(s) {', '.join(drop)} "
                    "(rows removed from its head, extension bank and open-set gate).",
        metrics={}, extra=extra)

    write_head_package(pkg, out_path, new_card, head, new_bank, gate)
    return load_package(out_path)
