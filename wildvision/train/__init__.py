"""Training (``[train]`` extra): ``wildvision train`` and its Python API.

Fine-tune a timm backbone on a manifest with a recipe, or fit only a linear head on cached
embeddings (``head_only``, the few-shot route for new species); then calibrate, choose
thresholds, export ONNX, check parity and write a model package. See ``docs/train.md``.

Heavy modules (torch, timm, albumentations) load on first use of a name below.

Example:
    >>> from wildvision.train import train  # doctest: +SKIP
    >>> res = train("manifest.csv", "training/recipes/quick.yaml", "runs/q")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Recipe",
    "TrainResult",
    "imagenet_classifier",
    "imagenet_labels",
    "load_recipe",
    "prepare_data",
    "resolve_weights",
    "train",
]

_LAZY = {
    "Recipe": "recipe",
    "load_recipe": "recipe",
    "TrainResult": "engine",
    "train": "engine",
    "prepare_data": "data",
    "imagenet_classifier": "weights",
    "imagenet_labels": "weights",
    "resolve_weights": "weights",
}
_EXTRA_MODULES = {"torch", "timm", "albumentations", "cv2", "yaml", "safetensors", "tqdm", "onnx"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        try:
            mod = importlib.import_module(f".{_LAZY[name]}", __name__)
        except ImportError as e:
            if (e.name or "").split(".")[0] not in _EXTRA_MODULES:
                raise
            from ..errors import MissingExtraError

            raise MissingExtraError(str(e.name), "train", "wildvision.train") from e
        return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
