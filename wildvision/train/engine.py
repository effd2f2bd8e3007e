"""``wildvision train``: fit, calibrate, choose thresholds, export and check a model package.

Run directory layout::

    RUN_DIR/
      run.json            options of the run (what --resume checks)
      recipe.yaml         the recipe, verbatim
      metrics.jsonl       one JSON line per epoch (or per head fit)
      checkpoint/         last.safetensors, last.optim.pt, best.safetensors, state.json
      cache/              trunk cache and embeddings (unless --cache-dir)
      package/            model.onnx, model.safetensors, card.json, README.md

This module runs the steps; each lives in its own module: :mod:`.rundir` (the run directory),
:mod:`.finetune` (fine-tuning), :mod:`.headonly` (a linear head on frozen embeddings),
:mod:`.finish` (calibration, thresholds, export, parity, card, open-set gate) and
:mod:`.loops` (batching and evaluation runs they share).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..modelpack import ModelCard
from ..preprocess import PreprocessConfig
from ..torch_model import WildvisionNet, load_state_file
from .data import prepare_data
from .finetune import EpochCallback, _FineTuner
from .finish import _add_open_set, _command, _finish
from .headonly import _head_only
from .recipe import Recipe, load_recipe
from .rundir import STATE_VERSION, _git_info, _prepare_run_dir, _seed_all
from .weights import load_backbone_weights, resolve_weights

__all__ = ["EpochCallback", "TrainResult", "preprocess_config", "train"]

log = logging.getLogger("wildvision.train")


@dataclass(frozen=True)
class TrainResult:
    """What a run produced.

    Attributes:
        run_dir: the run directory.
        package_dir: the model package (``RUN_DIR/package``).
        card: the written model card.
        epochs_run: epochs trained in total (0 for ``--head-only``).
        best_epoch: the epoch whose weights were exported (``None`` for head-only).
        wall_seconds: time of this invocation.
    """

    run_dir: Path
    package_dir: Path
    card: ModelCard
    epochs_run: int
    best_epoch: int | None
    wall_seconds: float


def preprocess_config(recipe: Recipe) -> PreprocessConfig:
    """The preprocessing of a recipe: its own values, else timm's pretrained config of the
    backbone (e.g. lite0: 224, crop 0.875, bicubic, mean = std = 0.5)."""
    import timm

    try:
        pc = timm.models.get_pretrained_cfg(recipe.backbone)
    except Exception:  # unknown arch is reported when the model is built
        pc = None
    size = recipe.input_size or (int(pc.input_size[-1]) if pc else 224)
    return PreprocessConfig(
        input_size=size,
        resize_mode=recipe.resize_mode,
        crop_pct=recipe.crop_pct if recipe.crop_pct is not None
        else float(pc.crop_pct if pc and pc.crop_pct else 0.875),
        interpolation=recipe.interpolation or (pc.interpolation if pc and pc.interpolation
                                               else "bicubic"),
        mean=tuple(pc.mean) if pc else (0.5, 0.5, 0.5),  # type: ignore[arg-type]
        std=tuple(pc.std) if pc else (0.5, 0.5, 0.5),  # type: ignore[arg-type]
    )


def train(
    manifest: str | os.PathLike[str],
    recipe: str | os.PathLike[str] | Recipe,
    out: str | os.PathLike[str],
    *,
    data_root: str | os.PathLike[str] | None = None,
    resume: bool = False,
    head_only: bool = False,
    from_scratch: bool = False,
    weights: str | os.PathLike[str] | None = None,
    epochs: int | None = None,
    limit_per_class: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> TrainResult:
    """Train a model and write its package to ``out/package``.

    Everything is checked first (recipe, data, weights); then either fine-tuning (freezing
    schedule, AdamW, warmup + cosine, label smoothing, early stopping on validation
    macro-F1, a checkpoint per epoch) or ``head_only`` (a linear head on cached embeddings);
    then temperature scaling and per-group thresholds on validation, ONNX export, a torch vs
    ONNX parity check on real validation images, and the model card.

    Args:
        manifest: the manifest CSV (see :mod:`wildvision.data.manifest`).
        recipe: a recipe file or :class:`~wildvision.train.recipe.Recipe`.
        out: the run directory (new or empty, or an interrupted run with ``resume``).
        data_root: root of the manifest's relative paths (default: see the manifest docs).
        resume: continue an interrupted run in ``out``.
        head_only: the fast path: fit only a linear head on frozen, cached embeddings.
        from_scratch: random initialisation (explicitly; never a silent fallback).
        weights: backbone weights file or model package folder (overrides the recipe).
        epochs: override the recipe's epochs.
        limit_per_class: use at most N images per class in each split (quick runs).
        cache_dir: where embeddings / trunk outputs are cached (default ``out/cache``).
        progress: tqdm bars on stderr (default: when stderr is a terminal).
        on_epoch_end: called with (epoch, metrics record) after each epoch's checkpoint.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ConfigError: bad recipe or options, no pretrained weights, a run dir conflict.
        DataError: every problem with the data, listed at once, before training.
        ModelIntegrityError: the torch vs ONNX parity check failed.

    Example:
        >>> from wildvision.train import train  # doctest: +SKIP
        >>> res = train("manifest.csv", "training/recipes/quick.yaml", "runs/q1")  # doctest: +SKIP
        >>> res.package_dir  # doctest: +SKIP
        PosixPath('runs/q1/package')
    """
    t_start = time.perf_counter()
    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    if from_scratch and weights is not None:
        raise ConfigError("--from-scratch and --weights exclude each other")
    if from_scratch and head_only:
        raise ConfigError("--head-only on a randomly initialised backbone makes no sense; "
                          "drop --from-scratch")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    if limit_per_class is not None and limit_per_class < 1:
        raise ConfigError(f"--limit-per-class must be >= 1, got {limit_per_class}")
    rec = rec.with_overrides(
        epochs=epochs, limit_per_class=limit_per_class,
        weights="none" if from_scratch else (os.fspath(weights) if weights is not None else None),
    )
    show = progress if progress is not None else sys.stderr.isatty()
    out_dir = Path(out)
    data = prepare_data(manifest, rec, data_root=data_root, limit_per_class=rec.limit_per_class)
    cfg = preprocess_config(rec)
    if rec.threads:
        torch.set_num_threads(rec.threads)
    w = resolve_weights(rec.backbone, rec.weights, license=rec.weights_license)
    mode = "head_only" if head_only else "fine_tune"
    identity = {
        "state_version": STATE_VERSION, "mode": mode, "recipe_sha256": rec.sha256,
        "manifest_sha256": data.manifest.sha256, "epochs": rec.epochs,
        "limit_per_class": rec.limit_per_class, "weights": w.source if w else "none",
    }
    saved = _prepare_run_dir(out_dir, resume, identity)
    if not (out_dir / "recipe.yaml").exists() and rec.text:
        (out_dir / "recipe.yaml").write_text(rec.text, encoding="utf-8")
    cache_root = Path(cache_dir) if cache_dir is not None else out_dir / "cache"
    import timm

    info: dict[str, Any] = {
        "t_start": t_start, "mode": mode, "git": _git_info(), "manifest_path": manifest,
        "timm_version": timm.__version__,
        "command": _command(manifest, rec, out_dir, {
            "data_root": data_root, "head_only": head_only, "from_scratch": from_scratch,
            "weights": weights, "epochs": epochs, "limit_per_class": limit_per_class}),
        "balance": (f"head-only: {rec.head_only.balance} (class-weighted loss)" if head_only
                    else {"sampler": f"class-balanced sampler, weights count^-"
                                     f"{rec.sampler_power}",
                          "loss": f"class-weighted loss, weights count^-{rec.sampler_power}",
                          "none": "none"}[rec.balance]),
    }
    log.info("%d labels; train %d, val %d, test %d images; weights: %s", len(data.labels),
             len(data.train), len(data.val), len(data.test), w.source if w else "random")
    _seed_all(rec.seed)
    model = WildvisionNet(rec.backbone, len(data.labels), drop_rate=rec.drop_rate)
    if w is not None:
        load_backbone_weights(model.backbone, w)
    cache_meta = {"arch": rec.backbone, "weights_sha256": w.sha256 if w else f"random-{rec.seed}",
                  "preprocess": cfg.to_dict()}
    try:
        if head_only:
            x_val, x_test, head_rec = _head_only(model, data, rec, cfg, out_dir, cache_root,
                                                 cache_meta, show)
            info["head_fit"] = head_rec
            embeddings: tuple[np.ndarray, np.ndarray] | None = (x_val, x_test)
        else:
            state = saved or {"epoch": 0, "global_step": 0, "best_metric": -1.0,
                              "best_epoch": None, "bad_epochs": 0, "stopped_early": False,
                              "finished_training": False}
            tuner = _FineTuner(model, data, rec, cfg, out_dir, cache_root, cache_meta, show,
                               on_epoch_end)
            if state.get("finished_training"):
                model.load_state_dict(load_state_file(out_dir / "checkpoint" /
                                                      "best.safetensors"))
            else:
                state = tuner.run(state)
            info.update(epochs_run=state["epoch"], best_epoch=state["best_epoch"],
                        stopped_early=bool(state.get("stopped_early")),
                        trunk_cache=tuner.cache_note)
            embeddings = None
    except KeyboardInterrupt:
        log.warning("interrupted; continue with: %s --resume", info["command"])
        raise
    card = _finish(model, data, rec, cfg, out_dir, w, info, show, embeddings)
    if rec.open_set.enabled:
        card = _add_open_set(out_dir / "package", manifest, data, rec, show) or card
    return TrainResult(out_dir, out_dir / "package", card, int(info.get("epochs_run", 0)),
                       info.get("best_epoch"), round(time.perf_counter() - t_start, 2))
