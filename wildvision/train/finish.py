"""The end of a run: calibration (temperature), thresholds per group, ONNX export, the torch
vs ONNX parity check, the model card and the open-set gate.
"""

from __future__ import annotations

import logging
import os
import platform
import shlex
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..calibration import (
    choose_group_thresholds,
    fit_temperature,
    thresholds_from_reports,
)
from ..errors import ConfigError, ModelIntegrityError
from ..modelcard_md import write_card
from ..modelpack import ModelCard, Thresholds, load_package
from ..preprocess import PreprocessConfig, normalize
from ..scores import group_matrix, softmax
from ..taxonomy import FLAGGABLE_GROUPS, GROUP_NAMES
from ..torch_model import WildvisionNet, export_onnx, save_state_file
from .data import EvalDataset, TrainData
from .headonly import _logits_from_embeddings
from .loops import _labels, _run_model
from .metrics import evaluate
from .recipe import Recipe
from .weights import PretrainedWeights

log = logging.getLogger("wildvision.train")


def _parity(model: WildvisionNet, onnx_path: Path, data: TrainData, cfg: PreprocessConfig,
            n: int) -> dict[str, Any]:
    from ..runtime import OnnxBackend

    samples = (data.val or data.train)[:n]
    ds = EvalDataset(samples, cfg)
    batch = np.stack([normalize(ds.array(i), cfg) for i in range(len(ds))])
    model.eval()
    with torch.no_grad():
        outs = model(torch.from_numpy(batch))
    ref = dict(zip(("logits", "embedding", "features"), outs, strict=True))
    got = OnnxBackend(onnx_path, threads=1).run(batch)
    diffs = {k: float(np.abs(got[k] - ref[k].numpy()).max()) for k in ref}
    return {"images": len(samples), "split": "val" if data.val else "train",
            "max_abs_diff": {k: float(f"{v:.3g}") for k, v in diffs.items()}}


def _command(manifest: Any, recipe: Recipe, out: Path, opts: dict[str, Any]) -> str:
    parts = ["wildvision", "train", "--data", str(manifest), "--recipe",
             recipe.path or "<recipe object>", "--out", str(out)]
    for k, v in opts.items():
        if v is None or v is False:
            continue
        flag = "--" + k.replace("_", "-")
        parts += [flag] if v is True else [flag, str(v)]
    return shlex.join(parts)


def _finish(model: WildvisionNet, data: TrainData, recipe: Recipe, cfg: PreprocessConfig,
            run_dir: Path, weights: PretrainedWeights | None, info: dict[str, Any],
            show: bool, embeddings: tuple[np.ndarray, np.ndarray] | None) -> ModelCard:
    t0 = time.perf_counter()
    labels = data.labels
    cal = recipe.calibration
    if embeddings is not None:
        val_logits = _logits_from_embeddings(model, embeddings[0])
        test_logits = _logits_from_embeddings(model, embeddings[1])
    else:
        val_logits, _ = _run_model(model, EvalDataset(data.val, cfg), recipe.eval_batch_size,
                                   recipe.workers, "evaluate val", show)
        test_logits, _ = _run_model(model, EvalDataset(data.test, cfg), recipe.eval_batch_size,
                                    recipe.workers, "evaluate test", show)
    y_val, y_test = _labels(data.val), _labels(data.test)
    notes = list(data.notes)
    if len(y_val):
        temperature = fit_temperature(val_logits, y_val)
    else:
        temperature = 1.0
        notes.append("no validation images: temperature 1.0, fallback thresholds")
    groups = [g for g in GROUP_NAMES if g in set(data.label_groups.values())]
    gm = group_matrix(labels, data.label_groups, groups)
    gp = softmax(val_logits, temperature) @ gm if len(y_val) else np.zeros((0, len(groups)))
    true_groups = [data.label_groups[labels[k]] for k in y_val]
    reports = choose_group_thresholds(
        gp, true_groups, groups, flaggable=FLAGGABLE_GROUPS,
        flag_precision=cal.flag_precision, review_precision=cal.review_precision,
        fallback=Thresholds(cal.fallback_flag, cal.fallback_review),
        min_flag=cal.min_flag, min_review=cal.min_review,
    )
    thresholds = thresholds_from_reports(reports)
    fallbacks = sorted({f"{g} ({r.flag['reason']})" for g, r in reports.items()
                        if r.flag["source"] == "fallback" or r.review["source"] == "fallback"})
    provenance = {"command": info["command"], "data": str(info["manifest_path"]),
                  "manifest_sha256": data.manifest.sha256, "commit": info["git"]["commit"]}
    metrics: dict[str, Any] = {}
    if len(y_val):
        metrics["validation"] = {"split": "val", **provenance, **evaluate(
            val_logits, y_val, labels, data.label_groups, temperature=temperature,
            thresholds=thresholds, ece_bins=cal.ece_bins)}
    if len(y_test):
        metrics["test"] = {"split": "test", **provenance, **evaluate(
            test_logits, y_test, labels, data.label_groups, temperature=temperature,
            thresholds=thresholds, ece_bins=cal.ece_bins)}

    pkg = run_dir / "package"
    if pkg.exists():
        shutil.rmtree(pkg)
    pkg.mkdir()
    save_state_file(model, pkg / "model.safetensors")
    export_onnx(model, pkg / "model.onnx", cfg.input_size)
    parity = _parity(model, pkg / "model.onnx", data, cfg, recipe.parity_images)
    worst = max(parity["max_abs_diff"].values())
    if worst > recipe.parity_tolerance:
        raise ModelIntegrityError(
            f"parity check failed: ONNX and torch outputs differ by up to {worst:.3g} on "
            f"{parity['images']} real images (tolerance {recipe.parity_tolerance}): "
            f"{parity['max_abs_diff']}; the package in {pkg} must not be used"
        )
    w_info = weights.describe() if weights else {
        "source": "none (random initialisation, --from-scratch)", "license": "n/a",
        "sha256": ""}
    training = {
        "mode": info["mode"],
        "command": info["command"],
        "manifest": str(info["manifest_path"]),
        "manifest_sha256": data.manifest.sha256,
        "data_root": str(data.manifest.root),
        "recipe_path": recipe.path,
        "recipe_sha256": recipe.sha256,
        "recipe": recipe.text,
        "git_commit": info["git"]["commit"],
        "git_dirty": info["git"]["dirty"],
        "wildvision_version": __version__,
        "torch_version": torch.__version__,
        "timm_version": info["timm_version"],
        "python": platform.python_version(),
        "backbone": recipe.backbone,
        "backbone_weights": w_info,
        "train_counts": data.counts("train"),
        "val_counts": data.counts("val"),
        "test_counts": data.counts("test"),
        "new_labels": dict(data.new_labels),
        "balance": info["balance"],
        "seed": recipe.seed,
        "epochs_run": info.get("epochs_run", 0),
        "best_epoch": info.get("best_epoch"),
        "stopped_early": info.get("stopped_early", False),
        "trunk_cache": info.get("trunk_cache", ""),
        "head_fit": info.get("head_fit"),
        "temperature": round(temperature, 6),
        "threshold_choice": {g: r.to_dict() for g, r in reports.items()},
        "parity": {**parity, "tolerance": recipe.parity_tolerance},
        "notes": notes,
        "wall_seconds": round(time.perf_counter() - info["t_start"], 1),
    }
    not_covered = [g for g in FLAGGABLE_GROUPS if g not in groups]
    th_note = (f"Chosen on validation: flag at precision >= {cal.flag_precision}, review at "
               f"precision >= {cal.review_precision} (floors {cal.min_flag}/{cal.min_review}).")
    if fallbacks:
        th_note += (f" Fallback thresholds ({cal.fallback_flag}/{cal.fallback_review}) for: "
                    + "; ".join(fallbacks) + ".")
    extra: dict[str, Any] = {
        "intended_use": recipe.intended_use or (
            "Screening marketplace listing photos for review by trained moderators; not for "
            "automated enforcement without human review."),
        "limitations": recipe.limitations,
        "data_sources": recipe.data_sources,
        "thresholds_note": th_note,
    }
    if not_covered:
        extra["not_covered"] = ("This model has no labels for the groups "
                                + ", ".join(not_covered) + ": it cannot flag them.")
    card = ModelCard(
        name=recipe.name,
        version=recipe.version,
        arch=recipe.backbone,
        description=recipe.description or (
            f"{recipe.backbone} trained with `wildvision train` ({info['mode']}) on "
            f"{sum(training['train_counts'].values())} images of {len(labels)} labels."),
        license=recipe.license,
        labels=labels,
        label_groups=dict(data.label_groups),
        preprocess=cfg,
        temperature=float(temperature),
        thresholds=thresholds,
        outputs=("logits", "embedding", "features"),
        metrics=metrics,
        training=training,
        extra=extra,
    )
    card = write_card(pkg, card)
    load_package(pkg)  # verifies hashes and that the core can read it
    log.info("package written to %s (calibration + export %.1f s; parity max diff %.2g)", pkg,
             time.perf_counter() - t0, worst)
    return card


def _add_open_set(pkg: Path, manifest: str | os.PathLike[str], data: TrainData,
                  recipe: Recipe, show: bool) -> ModelCard | None:
    """The open-set gate from the package's own ONNX model (``recipe.open_set``), on the
    rows and splits this run trained and validated on (a split made here when the manifest
    has none)."""
    from ..export.familiarity import add_familiarity

    t0 = time.perf_counter()
    o = recipe.open_set
    used = replace(data.manifest, rows=tuple(s.row for s in (*data.train, *data.val,
                                                              *data.test)))
    try:
        rec = add_familiarity(pkg, manifest, dims=o.dims, quantile=o.quantile,
                              manifest_rows=used, show=show,
                              command=f"wildvision train (recipe open_set: quantile {o.quantile}"
                                      f", dims {o.dims})")
    except ConfigError as e:
        log.warning("open-set gate not added: %s", e)
        return None
    log.info("open-set gate: thresholds %s from %s correctly flagged validation images, "
             "%d references (%.1f s)", rec["thresholds"], rec["validation_positives"],
             rec["references"], time.perf_counter() - t0)
    return load_package(pkg, verify=False).card  # add_familiarity verified what it wrote
