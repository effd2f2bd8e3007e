"""The wildvision network in PyTorch (``[torch]`` extra): a timm backbone, global pooling and a
linear head, returning ``logits``, the pooled ``embedding`` and the last ``features`` map.

Used by training, by the torch inference backend and by ONNX export, so all three run the same
module. Importing this module imports torch; the core never does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["WildvisionNet", "export_onnx", "load_state_file", "save_state_file"]

ONNX_OPSET = 17


class WildvisionNet(nn.Module):
    """timm backbone (no classifier) + dropout + linear head."""

    def __init__(self, arch: str, num_classes: int, *, drop_rate: float = 0.2,
                 **timm_kwargs: Any) -> None:
        import timm

        super().__init__()
        self.arch = arch
        # Any: timm models have forward_features/forward_head/num_features, nn.Module does not.
        backbone: Any = timm.create_model(arch, pretrained=False, num_classes=0, **timm_kwargs)
        self.backbone = backbone
        self.num_features = int(backbone.num_features)
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes)

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.backbone.forward_features(x)
        embedding = self.backbone.forward_head(features, pre_logits=True)
        logits = self.head(self.dropout(embedding))
        return logits, embedding, features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.forward_all(x)


def save_state_file(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Save weights as safetensors (never pickles)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, os.fspath(path))


def load_state_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return dict(load_file(os.fspath(path)))


def export_onnx(model: WildvisionNet, path: str | Path, input_size: int,
                *, opset: int = ONNX_OPSET) -> None:
    """Export to ONNX with a dynamic batch axis and outputs logits, embedding, features."""
    model = model.eval()
    dummy = torch.zeros(2, 3, input_size, input_size)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (dummy,),
            os.fspath(path),
            input_names=["input"],
            output_names=["logits", "embedding", "features"],
            dynamic_axes={
                "input": {0: "batch"},
                "logits": {0: "batch"},
                "embedding": {0: "batch"},
                "features": {0: "batch"},
            },
            opset_version=opset,
            dynamo=False,
        )
