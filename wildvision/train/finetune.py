"""Fine-tuning (``method: finetune``): the staged optimiser, the class-balanced sampler, the
trunk cache of frozen blocks, validation and checkpoints, resumable epoch by epoch.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..preprocess import PreprocessConfig
from ..scores import group_matrix
from ..torch_model import WildvisionNet, load_state_file, save_state_file
from .caches import TrunkCache, cache_key, find_donor, write_trunk_index
from .data import EvalDataset, TrainData, TrainDataset
from .head import class_weights
from .loops import _bar, _batches, _labels, _loader, _run_model
from .metrics import macro_f1
from .model import TopModel, check_split, set_stage, stage_for_epoch, supports_blocks, trunk
from .recipe import Recipe
from .rundir import _append_jsonl, _truncate_log, _write_json

log = logging.getLogger("wildvision.train")

EpochCallback = Callable[[int, dict[str, Any]], None]
_SHARD_IMAGES = 1024  # embeddings written to the cache every this many images


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
