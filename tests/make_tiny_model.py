"""Build the tiny, randomly initialised test model package in tests/data/tiny-model.

A real wildvision package (ONNX + safetensors + card.json + README.md), exported through the
same code as trained models (wildvision.torch_model), but with timm's ~100k-parameter
``test_efficientnet`` and random weights: its predictions mean nothing, it only lets the core
tests run without torch and without real weights.

    python tests/make_tiny_model.py            # needs the [torch] extra and onnx
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from wildvision.modelcard_md import write_card
from wildvision.modelpack import ModelCard, Thresholds
from wildvision.preprocess import PreprocessConfig
from wildvision.taxonomy import group_of
from wildvision.torch_model import WildvisionNet, export_onnx, save_state_file

LABELS = (
    "ivory_carving", "rhino_horn_raw", "pangolin_scales", "tiger_skin",
    "live_tiger", "live_elephant", "domestic_cat", "ceramics", "clothing",
)
INPUT_SIZE = 64


def build(out: Path) -> Path:
    torch.manual_seed(0)
    model = WildvisionNet("test_efficientnet", len(LABELS)).eval()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    save_state_file(model, out / "model.safetensors")
    export_onnx(model, out / "model.onnx", INPUT_SIZE)
    card = ModelCard(
        name="tiny-test",
        version="0.0.1",
        arch="test_efficientnet",
        description="Randomly initialised test model (tests/make_tiny_model.py). "
        "Its outputs mean nothing; it exists so the core tests run without real weights.",
        license="Apache-2.0",
        labels=LABELS,
        label_groups={lab: group_of(lab) for lab in LABELS},
        preprocess=PreprocessConfig(input_size=INPUT_SIZE, crop_pct=0.875),
        temperature=1.0,
        thresholds={
            "ivory": Thresholds(0.5, 0.2),
            "rhino_horn": Thresholds(0.5, 0.2),
            "pangolin": Thresholds(0.5, 0.2),
            "tiger_parts": Thresholds(0.5, 0.2),
            "live_protected_animal": Thresholds(0.5, 0.2),
        },
        outputs=("logits", "embedding", "features"),
        extra={"intended_use": "Tests only."},
    )
    write_card(out, card)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "tiny-model")
    print(build(ap.parse_args().out))
