"""The network during training: building it, the freezing schedule, and the trunk/top split
used by the frozen-trunk cache.

The split is supported for timm EfficientNet-style backbones (``conv_stem``, ``bn1``,
``blocks``, ``conv_head``, ``bn2``: EfficientNet, EfficientNet-Lite, ``test_efficientnet``);
it is verified numerically against ``forward_features`` before use.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..torch_model import WildvisionNet

__all__ = [
    "Stage", "TopModel", "check_split", "set_stage", "stage_for_epoch", "supports_blocks", "trunk",
]

Stage = str  # "head", "all", or "top:N"


def supports_blocks(backbone: nn.Module) -> bool:
    """Whether the backbone has the EfficientNet layout the block schedule understands."""
    return all(hasattr(backbone, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")) \
        and isinstance(backbone.blocks, nn.Sequential)


def stage_for_epoch(epoch: int, head_epochs: int, top_blocks: int,
                    unfreeze_all_at: int | None) -> Stage:
    """The trainable part at 1-based ``epoch``."""
    if epoch <= head_epochs:
        return "head"
    if unfreeze_all_at is not None and epoch >= unfreeze_all_at:
        return "all"
    return "all" if top_blocks < 0 else f"top:{top_blocks}"


def _top_modules(model: WildvisionNet, k: int) -> list[nn.Module]:
    b = model.backbone
    if not supports_blocks(b):
        raise ConfigError(
            f"freeze.top_blocks needs an EfficientNet-style timm backbone (with blocks); "
            f"{model.arch} is not one: set freeze.top_blocks: -1 (train all after the head "
            "epochs)"
        )
    n = len(b.blocks)
    if k > n:
        raise ConfigError(f"freeze.top_blocks={k}, but {model.arch} has {n} block stages")
    return [*list(b.blocks)[n - k:], b.conv_head, b.bn2]


def set_stage(model: WildvisionNet, stage: Stage) -> list[nn.Parameter]:
    """Make only ``stage``'s parameters trainable, put the model in train mode with the frozen
    parts in eval mode (frozen BatchNorm statistics stay fixed); returns the trainable ones."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.train()
    trainable: list[nn.Module] = [model.head]
    if stage == "all":
        trainable.append(model.backbone)
    elif stage.startswith("top:"):
        trainable += _top_modules(model, int(stage[4:]))
        model.backbone.eval()
    elif stage == "head":
        model.backbone.eval()
    else:  # pragma: no cover - internal
        raise ValueError(stage)
    for m in trainable:
        m.train()
        for p in m.parameters():
            p.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def trunk(model: WildvisionNet, k: int, x: torch.Tensor) -> torch.Tensor:
    """The frozen part: stem and all but the top ``k`` block stages."""
    b = model.backbone
    n = len(b.blocks)
    x = b.bn1(b.conv_stem(x))
    for blk in list(b.blocks)[: n - k]:
        x = blk(x)
    return x


class TopModel(nn.Module):
    """The part above the trunk (top ``k`` block stages, head conv/norm, pooling, head) as a
    module over cached trunk outputs; shares parameters with ``model``."""

    def __init__(self, model: WildvisionNet, k: int) -> None:
        super().__init__()
        self.model = model
        self.k = k
        self.top = nn.Sequential(*_top_modules(model, k))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.top(h)
        emb = self.model.backbone.forward_head(feats, pre_logits=True)
        return self.model.head(self.model.dropout(emb)), emb


def check_split(model: WildvisionNet, k: int, input_size: int) -> float:
    """Max abs difference between ``TopModel(trunk(x))`` and the full model (eval mode)."""
    was = model.training
    model.eval()
    x = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)[0]
        got = TopModel(model, k)(trunk(model, k, x))[0]
    model.train(was)
    return float((ref - got).abs().max())
