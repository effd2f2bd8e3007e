"""Head-only training (``method: head_only``): embeddings of the frozen backbone (cached), a
linear head fitted on them, and logits from embeddings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..preprocess import PreprocessConfig
from ..torch_model import WildvisionNet
from .caches import EmbeddingCache, cache_key
from .data import EvalDataset, Sample, TrainData, TrainDataset
from .finetune import _SHARD_IMAGES, _ViewDataset
from .head import fit_linear_head
from .loops import _bar, _batches, _labels, _loader
from .recipe import Recipe
from .rundir import _append_jsonl

log = logging.getLogger("wildvision.train")


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


def _logits_from_embeddings(model: WildvisionNet, emb: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = model.head(torch.from_numpy(emb)).numpy()
    return out
