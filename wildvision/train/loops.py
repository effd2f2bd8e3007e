"""Shared pieces of the training loops: batching, data loaders, progress bars, and running a
model over an evaluation set.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..torch_model import WildvisionNet
from .data import EvalDataset, Sample, worker_init


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
