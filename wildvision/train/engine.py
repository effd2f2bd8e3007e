"""``wildvision train``: fit, calibrate, choose thresholds, export and check a model package.

Run directory layout::

    RUN_DIR/
      run.json            options of the run (what --resume checks)
      recipe.yaml         the recipe, verbatim
      metrics.jsonl       one JSON line per epoch (or per head fit)
      checkpoint/         last.safetensors, last.optim.pt, best.safetensors, state.json
      cache/              trunk cache and embeddings (unless --cache-dir)
      package/            model.onnx, model.safetensors, card.json, README.md
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

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
from ..torch_model import WildvisionNet, export_onnx, load_state_file, save_state_file
from .caches import EmbeddingCache, TrunkCache, cache_key, find_donor, write_trunk_index
from .data import EvalDataset, Sample, TrainData, TrainDataset, prepare_data, worker_init
from .head import class_weights, fit_linear_head
from .metrics import evaluate, macro_f1
from .model import TopModel, check_split, set_stage, stage_for_epoch, supports_blocks, trunk
from .recipe import Recipe, load_recipe
from .weights import PretrainedWeights, load_backbone_weights, resolve_weights

__all__ = ["EpochCallback", "TrainResult", "preprocess_config", "train"]

log = logging.getLogger("wildvision.train")

EpochCallback = Callable[[int, dict[str, Any]], None]
STATE_VERSION = 1
_SHARD_IMAGES = 1024  # embeddings written to the cache every this many images


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


# ---------------------------------------------------------------------------------------------
# helpers


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


def _git_info() -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "-C", str(here), "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                timeout=10)
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")


def _truncate_log(path: Path, last_epoch: int) -> None:
    """Drop epoch lines after ``last_epoch`` (written by a run interrupted before its
    checkpoint)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("epoch") is None or int(rec["epoch"]) <= last_epoch:
            keep.append(line)
    path.write_text("".join(x + "\n" for x in keep), encoding="utf-8")


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, file=sys.stderr,
                dynamic_ncols=True)


def _batches(indices: Sequence[int], size: int) -> list[list[int]]:
    out = [list(indices[i:i + size]) for i in range(0, len(indices), size)]
    # a last batch of one breaks BatchNorm in train mode; fold it into the previous one
    if len(out) > 1 and len(out[-1]) == 1:
        out[-2].extend(out.pop())
    return out


# ---------------------------------------------------------------------------------------------
# inference over samples


def _loader(dataset: Any, batches: list[list[int]], workers: int,
            generator: torch.Generator | None = None) -> Any:
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, worker_init_fn=worker_init,
        generator=generator, persistent_workers=False,
    )


@torch.no_grad()
def _run_model(model: WildvisionNet, ds: EvalDataset, batch_size: int, workers: int,
               desc: str, show: bool) -> tuple[np.ndarray, np.ndarray]:
    """Logits and embeddings of every sample (eval mode, exact inference preprocessing)."""
    model.eval()
    logits, embs = [], []
    bar = _bar(len(ds), desc, show)
    for x, _y in _loader(ds, _batches(range(len(ds)), batch_size), workers):
        lo, emb, _f = model(x)
        logits.append(lo.numpy())
        embs.append(emb.numpy())
        bar.update(len(x))
    bar.close()
    n_cls = model.head.out_features
    if not logits:
        return np.zeros((0, n_cls), np.float32), np.zeros((0, model.num_features), np.float32)
    return np.concatenate(logits), np.concatenate(embs)


def _labels(samples: Sequence[Sample]) -> np.ndarray:
    return np.asarray([s.label for s in samples], dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# fine-tuning


def _param_groups(model: WildvisionNet, lr: float, mult: float, wd: float
                  ) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for part, base in ((model.head, lr), (model.backbone, lr * mult)):
        decay = [p for p in part.parameters() if p.ndim > 1]
        no_decay = [p for p in part.parameters() if p.ndim <= 1]
        groups.append({"params": decay, "lr": base, "base_lr": base, "weight_decay": wd})
        groups.append({"params": no_decay, "lr": base, "base_lr": base, "weight_decay": 0.0})
    return groups


def _lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class _Sampler:
    """Epoch orders: class-balanced sampling with replacement (``balance: sampler``), weights
    ``count ** -sampler_power``; else a shuffle."""

    def __init__(self, y: np.ndarray, n_classes: int, recipe: Recipe) -> None:
        self.y = y
        self.n = len(y)
        self.balance = recipe.balance
        counts = np.bincount(y, minlength=n_classes).astype(np.float64)
        w = np.maximum(counts[y], 1.0) ** -recipe.sampler_power
        self.p = w / w.sum()

    def order(self, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        if self.balance == "sampler":
            return rng.choice(self.n, size=self.n, replace=True, p=self.p)
        return rng.permutation(self.n)


class _ViewDataset:
    """Augmented view ``view`` of each training image, reproducible per (seed, view, image)."""

    def __init__(self, base: TrainDataset, view: int, seed: int) -> None:
        self.base, self.view, self.seed = base, view, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.base.reseed(self.seed * 1_000_003 + self.view * 100_003 + i)
        return self.base[i]


class _FineTuner:
    def __init__(self, model: WildvisionNet, data: TrainData, recipe: Recipe,
                 cfg: PreprocessConfig, run_dir: Path, cache_root: Path, cache_meta: dict[str, Any],
                 show: bool, on_epoch_end: EpochCallback | None) -> None:
        self.model, self.data, self.recipe, self.cfg = model, data, recipe, cfg
        self.run_dir, self.cache_root, self.cache_meta = run_dir, cache_root, cache_meta
        self.show, self.on_epoch_end = show, on_epoch_end
        self.ckpt = run_dir / "checkpoint"
        self.ckpt.mkdir(exist_ok=True)
        n_cls = len(data.labels)
        self.y_train = _labels(data.train)
        self.y_val = _labels(data.val)
        self.sampler = _Sampler(self.y_train, n_cls, recipe)
        weight = None
        if recipe.balance == "loss":
            weight = torch.from_numpy(
                class_weights(self.y_train, n_cls, recipe.sampler_power)).float()
        self.loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=recipe.label_smoothing)
        self.train_ds = TrainDataset(data.train, cfg, recipe.augmentation, recipe.seed,
                                     data.labels, data.manifest.root)
        self.val_ds = EvalDataset(data.val, cfg, cache=True)
        self.steps_per_epoch = len(_batches(range(len(data.train)), recipe.batch_size))
        self.total_steps = self.steps_per_epoch * recipe.epochs
        self.warmup_steps = round(recipe.warmup_epochs * self.steps_per_epoch)
        self.opt = torch.optim.AdamW(
            _param_groups(model, recipe.lr, recipe.backbone_lr_mult, recipe.weight_decay))
        fz = recipe.freeze
        self.k = fz.top_blocks
        self.use_cache, self.cache_note = self._cache_plan()
        self.trunk_cache: TrunkCache | None = None
        self.val_trunk: torch.Tensor | None = None

    # -- the trunk cache -------------------------------------------------------------------
    def _cache_plan(self) -> tuple[bool, str]:
        r = self.recipe
        fz = r.freeze
        if not r.trunk_cache.enabled:
            return False, "trunk cache disabled in the recipe"
        if fz.top_blocks < 0 or (fz.unfreeze_all_at is not None
                                 and fz.unfreeze_all_at <= r.epochs):
            return False, "not used: the whole backbone trains at some epoch"
        if fz.head_epochs >= r.epochs:
            return False, "not used: only the head trains"
        if not supports_blocks(self.model.backbone):
            return False, f"not used: {self.model.arch} has no EfficientNet-style blocks"
        diff = check_split(self.model, self.k, self.cfg.input_size)
        if diff > 1e-4:
            return False, f"not used: trunk/top split differs from the model by {diff:.2e}"
        return True, (f"trunk cache: {r.trunk_cache.views} augmented views per image below the "
                      f"top {self.k} block stages")

    def _build_trunk_cache(self) -> None:
        r = self.recipe
        views = r.trunk_cache.views
        self.model.eval()
        with torch.no_grad():
            probe = trunk(self.model, self.k,
                          torch.zeros(1, 3, self.cfg.input_size, self.cfg.input_size))
        shape = (len(self.data.train), views, *probe.shape[1:])
        images = [s.sha256 or str(s.path) for s in self.data.train]
        parts = {"kind": "trunk", "k": self.k, "views": views, "dtype": r.trunk_cache.dtype,
                 "aug": r.augmentation, "seed": r.seed, **self.cache_meta}
        key = cache_key(images=images, **parts)
        tc = TrunkCache(self.cache_root, key, shape, r.trunk_cache.dtype,
                        {"shape": shape, **self.cache_meta})
        donor = None if tc.complete else find_donor(self.cache_root, cache_key(**parts), images,
                                                    shape)
        if tc.complete:
            tc.open_for_read()
            log.info("trunk cache: reusing %s", tc.path)
        elif donor is not None:
            # Same backbone, weights, preprocessing, augmentation and seed, computed for a
            # superset of these images (e.g. the full run, for a leave-one-source-out run):
            # each image keeps the augmented views drawn for it there.
            t0 = time.perf_counter()
            arr = tc.open_for_write()
            src, idx = donor
            for lo in range(0, len(idx), 512):
                arr[lo:lo + 512] = src[idx[lo:lo + 512]]
            tc.mark_complete()
            log.info("trunk cache: %d images gathered from %s in %.1f s", len(idx),
                     src.filename if isinstance(src, np.memmap) else "a donor cache",
                     time.perf_counter() - t0)
        else:
            log.info("trunk cache: computing %d images x %d views, %s (%.1f MB)", shape[0],
                     views, tuple(shape[2:]), tc.nbytes / 1e6)
            arr = tc.open_for_write()
            bar = _bar(shape[0] * views, "trunk cache", self.show)
            t0 = time.perf_counter()
            for v in range(views):
                ds = _ViewDataset(self.train_ds, v, r.seed)
                done = 0
                for x, _y in _loader(ds, _batches(range(len(ds)), r.eval_batch_size),
                                     r.workers):
                    with torch.no_grad():
                        h = trunk(self.model, self.k, x)
                    arr[done:done + len(x), v] = h.numpy().astype(arr.dtype)
                    done += len(x)
                    bar.update(len(x))
            bar.close()
            tc.mark_complete()
            log.info("trunk cache: built in %.1f s", time.perf_counter() - t0)
        write_trunk_index(tc, cache_key(**parts), images)
        self.trunk_cache = tc
        vals = []
        with torch.no_grad():
            for x, _y in _loader(self.val_ds, _batches(range(len(self.val_ds)),
                                                       r.eval_batch_size), 0):
                vals.append(trunk(self.model, self.k, x))
        self.val_trunk = torch.cat(vals) if vals else None

    # -- epochs --------------------------------------------------------------------------------
    def _step(self, logits: torch.Tensor, y: torch.Tensor, step: int) -> float:
        loss = self.loss_fn(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        f = _lr_factor(step, self.total_steps, self.warmup_steps, self.recipe.min_lr_ratio)
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * f
        self.opt.step()
        return float(loss.detach())

    def _train_epoch(self, epoch: int, stage: str, step: int) -> tuple[float, int]:
        r = self.recipe
        seed = r.seed * 1000 + epoch
        torch.manual_seed(seed)
        order = self.sampler.order(seed)
        batches = _batches(order.tolist(), r.batch_size)
        losses: list[float] = []
        bar = _bar(len(order), f"epoch {epoch}/{r.epochs} [{stage}]", self.show)
        use_cache = self.use_cache and self.trunk_cache is not None
        if use_cache:
            assert self.trunk_cache is not None and self.trunk_cache.array is not None
            arr = self.trunk_cache.array
            views = np.random.default_rng(seed + 7).integers(arr.shape[1], size=len(order))
            top = TopModel(self.model, self.k)
            pos = 0
            for b in batches:
                idx = np.asarray(b)
                v = views[pos:pos + len(b)]
                pos += len(b)
                h = torch.from_numpy(np.asarray(arr[idx, v], dtype=np.float32))
                logits, _emb = top(h)
                losses.append(self._step(logits, torch.from_numpy(self.y_train[idx]), step))
                step += 1
                bar.update(len(b))
        else:
            self.train_ds.reseed(seed)
            gen = torch.Generator().manual_seed(seed)
            for x, y in _loader(self.train_ds, batches, r.workers, gen):
                logits, _emb, _f = self.model(x)
                losses.append(self._step(logits, y, step))
                step += 1
                bar.update(len(x))
        bar.close()
        return float(np.mean(losses)) if losses else float("nan"), step

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        """Validation metrics of the current weights: ``val_macro_f1`` (fine labels),
        ``val_group_macro_f1`` (fine argmax mapped to its group) and ``val_loss``; NaN
        without validation images."""
        r = self.recipe
        if not len(self.val_ds):
            nan = float("nan")
            return {"val_loss": nan, "val_macro_f1": nan, "val_group_macro_f1": nan}
        if self.use_cache and self.val_trunk is not None:
            self.model.eval()
            top = TopModel(self.model, self.k).eval()
            logits = torch.cat([top(self.val_trunk[i:i + r.eval_batch_size])[0]
                                for i in range(0, len(self.val_trunk), r.eval_batch_size)])
            z = logits.numpy()
        else:
            z, _ = _run_model(self.model, self.val_ds, r.eval_batch_size, 0, "validate",
                              self.show)
        y = self.y_val
        pred = z.argmax(axis=1)
        labels = self.data.labels
        groups = sorted(set(self.data.label_groups[lab] for lab in labels))
        to_group = group_matrix(labels, self.data.label_groups, groups).argmax(axis=1)
        loss = float(nn.functional.cross_entropy(torch.from_numpy(z).double(),
                                                 torch.from_numpy(y)))
        return {"val_loss": loss,
                "val_macro_f1": macro_f1(y, pred, len(labels)),
                "val_group_macro_f1": macro_f1(to_group[y], to_group[pred], len(groups))}

    def _save(self, state: dict[str, Any]) -> None:
        save_state_file(self.model, self.ckpt / "last.safetensors.tmp")
        os.replace(self.ckpt / "last.safetensors.tmp", self.ckpt / "last.safetensors")
        # Our own optimizer state; read back only with torch.load(weights_only=True).
        torch.save({"optimizer": self.opt.state_dict()}, self.ckpt / "last.optim.pt.tmp")
        os.replace(self.ckpt / "last.optim.pt.tmp", self.ckpt / "last.optim.pt")
        _write_json(self.ckpt / "state.json", state)  # written last: the commit point

    def run(self, state: dict[str, Any]) -> dict[str, Any]:
        r = self.recipe
        metrics_path = self.run_dir / "metrics.jsonl"
        if state["epoch"] > 0:
            self.model.load_state_dict(load_state_file(self.ckpt / "last.safetensors"))
            opt_state = torch.load(self.ckpt / "last.optim.pt", map_location="cpu",
                                   weights_only=True)
            self.opt.load_state_dict(opt_state["optimizer"])
            _truncate_log(metrics_path, state["epoch"])
            log.info("resuming after epoch %d of %d", state["epoch"], r.epochs)
        if self.use_cache:
            self._build_trunk_cache()
        log.info("%s", self.cache_note)
        step = int(state["global_step"])
        for epoch in range(int(state["epoch"]) + 1, r.epochs + 1):
            if state.get("stopped_early"):
                break
            stage = stage_for_epoch(epoch, r.freeze.head_epochs, r.freeze.top_blocks,
                                    r.freeze.unfreeze_all_at)
            trainable = set_stage(self.model, stage)
            t0 = time.perf_counter()
            train_loss, step = self._train_epoch(epoch, stage, step)
            t_train = time.perf_counter() - t0
            val = self._validate()
            # the monitored metric, as "higher is better"; without validation images (NaN)
            # the last epoch is kept
            es = r.early_stopping
            score = -val["val_loss"] if es.monitor == "val_loss" else val[es.monitor]
            improved = (state["best_epoch"] is None or math.isnan(score)
                        or score > state["best_metric"] + es.min_delta)
            if improved:
                state["best_metric"] = score if not math.isnan(score) else -1e30
                state["best_epoch"] = epoch
                state["bad_epochs"] = 0
                save_state_file(self.model, self.ckpt / "best.safetensors")
            else:
                state["bad_epochs"] += 1
            state["epoch"] = epoch
            state["global_step"] = step
            if state["bad_epochs"] >= r.early_stopping.patience and epoch < r.epochs:
                state["stopped_early"] = True
            record = {
                "epoch": epoch, "stage": stage, "trainable_params":
                sum(p.numel() for p in trainable), "train_loss": round(train_loss, 6),
                **{k: round(v, 6) for k, v in val.items()}, "monitor": es.monitor,
                "lr_head": self.opt.param_groups[0]["lr"], "train_seconds": round(t_train, 2),
                "epoch_seconds": round(time.perf_counter() - t0, 2),
                "trunk_cache": bool(self.use_cache), "best_epoch": state["best_epoch"],
                "stopped_early": bool(state.get("stopped_early")),
            }
            self._save(state)
            _append_jsonl(metrics_path, record)
            log.info("epoch %d/%d [%s] loss %.4f val loss %.4f macro-F1 %.4f (groups %.4f) "
                     "(%.1f s)%s", epoch, r.epochs, stage, train_loss, val["val_loss"],
                     val["val_macro_f1"], val["val_group_macro_f1"], record["epoch_seconds"],
                     " *" if improved else "")
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch, record)
            if state.get("stopped_early"):
                log.info("early stopping: no improvement for %d epochs",
                         r.early_stopping.patience)
                break
        state["finished_training"] = True
        _write_json(self.ckpt / "state.json", state)
        self.model.load_state_dict(load_state_file(self.ckpt / "best.safetensors"))
        return state


# ---------------------------------------------------------------------------------------------
# head-only


def _embed(model: WildvisionNet, samples: Sequence[Sample], cfg: PreprocessConfig,
           cache: EmbeddingCache, recipe: Recipe, show: bool, desc: str,
           view_ds: Any = None) -> np.ndarray:
    """Embeddings of ``samples``; computed only for images missing from ``cache``."""
    from .data import file_sha256

    shas = [file_sha256(s.path) for s in samples]
    todo = sorted({i for i, h in enumerate(shas) if h not in cache},
                  key=lambda i: str(samples[i].path))
    seen: dict[str, int] = {}
    todo = [i for i in todo if seen.setdefault(shas[i], i) == i]  # exact duplicates once
    if todo:
        sub: Any = (torch.utils.data.Subset(view_ds, todo) if view_ds is not None
                    else EvalDataset([samples[i] for i in todo], cfg))
        model.eval()
        out: list[np.ndarray] = []
        bar = _bar(len(todo), desc, show)
        done = flushed = 0
        t0 = time.perf_counter()
        with torch.no_grad():
            for x, _y in _loader(sub, _batches(range(len(todo)), recipe.eval_batch_size),
                                 recipe.workers):
                out.append(model(x)[1].numpy())
                done += len(x)
                bar.update(len(x))
                if done - flushed >= _SHARD_IMAGES:  # an interrupted run keeps what it did
                    cache.put_many([shas[i] for i in todo[flushed:done]], np.concatenate(out))
                    out, flushed = [], done
                    log.info("%s: %d/%d images (%.1f img/s)", desc, done, len(todo),
                             done / (time.perf_counter() - t0))
        bar.close()
        if out:
            cache.put_many([shas[i] for i in todo[flushed:done]], np.concatenate(out))
    if not shas:
        return np.zeros((0, model.num_features), np.float32)
    return cache.get_many(shas)


def _head_only(model: WildvisionNet, data: TrainData, recipe: Recipe, cfg: PreprocessConfig,
               run_dir: Path, cache_root: Path, cache_meta: dict[str, Any], show: bool
               ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    h = recipe.head_only
    t0 = time.perf_counter()
    plain = EmbeddingCache(cache_root, cache_key(view="eval", **cache_meta),
                           {"view": "eval", **cache_meta})
    n_before = len(plain)
    x_train = [_embed(model, data.train, cfg, plain, recipe, show, "embed train")]
    y_train = [_labels(data.train)]
    if h.views > 1:
        base = TrainDataset(data.train, cfg, recipe.augmentation, recipe.seed, data.labels,
                            data.manifest.root)
        for v in range(1, h.views):
            meta = {"view": v, "aug": recipe.augmentation, "seed": recipe.seed, **cache_meta}
            vc = EmbeddingCache(cache_root, cache_key(**meta), meta)
            x_train.append(_embed(model, data.train, cfg, vc, recipe, show, f"embed view {v}",
                                  view_ds=_ViewDataset(base, v, recipe.seed)))
            y_train.append(_labels(data.train))
    x_val = _embed(model, data.val, cfg, plain, recipe, show, "embed val")
    x_test = _embed(model, data.test, cfg, plain, recipe, show, "embed test")
    t_embed = time.perf_counter() - t0
    t1 = time.perf_counter()
    fit = fit_linear_head(np.concatenate(x_train), np.concatenate(y_train), len(data.labels),
                          x_val, _labels(data.val), l2_grid=h.l2, max_iter=h.max_iter,
                          balance=h.balance)
    t_fit = time.perf_counter() - t1
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(fit.weight))
        model.head.bias.copy_(torch.from_numpy(fit.bias))
    record = {
        "mode": "head_only", "train_embeddings": int(sum(len(x) for x in x_train)),
        "embeddings_computed": len(plain) - n_before, "l2": fit.l2, "trials": fit.trials,
        "embed_seconds": round(t_embed, 2), "fit_seconds": round(t_fit, 2),
    }
    _append_jsonl(run_dir / "metrics.jsonl", record)
    log.info("head-only: %d training embeddings (%d computed, the rest cached) in %.1f s; "
             "head fitted in %.2f s (l2=%g)", record["train_embeddings"],
             record["embeddings_computed"], t_embed, t_fit, fit.l2)
    return x_val, x_test, record


# ---------------------------------------------------------------------------------------------
# finishing: calibration, thresholds, export, parity, card


def _logits_from_embeddings(model: WildvisionNet, emb: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = model.head(torch.from_numpy(emb)).numpy()
    return out


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


def _add_open_set(pkg: Path, manifest: str | os.PathLike[str],
                  data_root: str | os.PathLike[str] | None, recipe: Recipe, show: bool
                  ) -> ModelCard | None:
    """The familiarity gate from the package's own ONNX model (``recipe.open_set``)."""
    from ..export.familiarity import add_familiarity

    t0 = time.perf_counter()
    o = recipe.open_set
    try:
        rec = add_familiarity(pkg, manifest, dims=o.dims, quantile=o.quantile,
                              data_root=data_root, show=show,
                              command=f"wildvision train (recipe open_set: quantile {o.quantile}"
                                      f", dims {o.dims})")
    except ConfigError as e:
        log.warning("open-set gate not added: %s", e)
        return None
    log.info("open-set gate: thresholds %s from %s correctly flagged validation images, "
             "%d references (%.1f s)", rec["thresholds"], rec["validation_positives"],
             rec["references"], time.perf_counter() - t0)
    return load_package(pkg, verify=False).card  # add_familiarity verified what it wrote


# ---------------------------------------------------------------------------------------------
# entry point


def _prepare_run_dir(out: Path, resume: bool, identity: dict[str, Any]) -> dict[str, Any] | None:
    """Create or check the run directory; returns the saved state when resuming."""
    state_path = out / "checkpoint" / "state.json"
    run_json = out / "run.json"
    if resume:
        if not run_json.is_file():
            raise ConfigError(f"--resume: {out} holds no run to resume (no run.json)")
        old = json.loads(run_json.read_text(encoding="utf-8"))
        diffs = [k for k in identity if old.get(k) != identity[k]]
        if diffs:
            raise ConfigError(
                f"--resume: {out} was started with different " + ", ".join(diffs)
                + "; resume with the same recipe, data and options, or use a new --out"
            )
        if state_path.is_file():
            state: dict[str, Any] = json.loads(state_path.read_text(encoding="utf-8"))
            return state
        return None
    if out.exists() and any(out.iterdir()):
        if run_json.exists() or (out / "package").exists():
            raise ConfigError(f"{out} already holds a training run; use --resume to continue "
                              "it, or another --out")
        raise ConfigError(f"{out} exists and is not empty; give a new or empty --out")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(run_json, identity)
    return None


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
        card = _add_open_set(out_dir / "package", manifest, data_root, rec, show) or card
    return TrainResult(out_dir, out_dir / "package", card, int(info.get("epochs_run", 0)),
                       info.get("best_epoch"), round(time.perf_counter() - t_start, 2))
