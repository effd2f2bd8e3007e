"""The torch inference backend (``[torch]`` extra): the same network and weights as the ONNX
file, run in PyTorch eager. Useful for parity checks and for GPU research use."""

from __future__ import annotations

import numpy as np
import torch

from .errors import ModelIntegrityError
from .modelpack import ModelPackage
from .torch_model import WildvisionNet, load_state_file

__all__ = ["TorchBackend"]


class TorchBackend:
    """Runs the package's ``model.safetensors`` in PyTorch (same interface as the ONNX one)."""

    name: str = "torch"
    output_names: tuple[str, ...] = ("logits", "embedding", "features")

    def __init__(self, package: ModelPackage, *, threads: int | None = None,
                 device: str = "cpu") -> None:
        card = package.card
        if not card.arch:
            raise ModelIntegrityError(
                f"model {card.name}: card has no 'arch' for the torch backend"
            )
        weights = package.file("model.safetensors")
        kwargs = dict(card.extra.get("arch_kwargs", {}))
        self.model = WildvisionNet(card.arch, len(card.labels), **kwargs)
        try:
            self.model.load_state_dict(load_state_file(weights), strict=True)
        except (RuntimeError, KeyError) as e:
            raise ModelIntegrityError(f"{weights}: weights do not fit {card.arch} ({e})") from e
        self.model.eval().to(device)
        self.device = device
        if threads is not None:
            torch.set_num_threads(threads)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self.device)
            logits, emb, feats = self.model(x)
        return {
            "logits": logits.cpu().numpy(),
            "embedding": emb.cpu().numpy(),
            "features": feats.cpu().numpy(),
        }
