"""Inference backends: the ONNX Runtime backend, its errors, and parity with the torch backend
(the same network run in PyTorch eager) on preprocessed images."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from wildvision.errors import ConfigError, MissingExtraError, ModelIntegrityError
from wildvision.imaging import decode_image
from wildvision.modelpack import ModelPackage, load_package, sha256_file
from wildvision.preprocess import preprocess, preprocess_image
from wildvision.runtime import OnnxBackend, create_backend

from conftest import photo_like


@pytest.fixture(scope="module")
def package(tiny_model_dir: Path) -> ModelPackage:
    return load_package(tiny_model_dir)


@pytest.fixture(scope="module")
def batch(package: ModelPackage) -> np.ndarray:
    sizes = [(80, 60), (60, 80), (64, 64), (300, 120), (33, 47), (500, 375)]
    imgs = [photo_like(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    return preprocess(imgs, package.card.preprocess)


def test_onnx_outputs(package: ModelPackage, batch: np.ndarray) -> None:
    backend = create_backend(package, "onnx", threads=1)
    assert isinstance(backend, OnnxBackend)
    assert backend.output_names == ("logits", "embedding", "features")
    out = backend.run(batch)
    n, k = len(batch), len(package.card.labels)
    assert out["logits"].shape == (n, k) and out["logits"].dtype == np.float32
    assert out["embedding"].shape[0] == n and out["embedding"].ndim == 2
    assert out["features"].shape[0] == n and out["features"].ndim == 4
    assert np.isfinite(out["logits"]).all()
    assert np.ptp(out["embedding"], axis=0).max() > 0  # different images, different outputs
    # dynamic batch axis, rows independent of their batch
    for i in (0, 3):
        single = backend.run(batch[i : i + 1])
        np.testing.assert_allclose(single["logits"][0], out["logits"][i], atol=1e-5)
    # float64 or non-contiguous input is accepted
    again = backend.run(np.asfortranarray(batch.astype(np.float64)))
    np.testing.assert_allclose(again["logits"], out["logits"], atol=1e-6)


def test_backend_errors(package: ModelPackage, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="backend must be one of"):
        create_backend(package, "tensorrt")
    with pytest.raises(ConfigError, match="threads"):
        create_backend(package, "onnx", threads=0)
    with pytest.raises(ModelIntegrityError, match=r"model\.int8\.onnx"):
        create_backend(package, "onnx", precision="int8")
    with pytest.raises(ConfigError, match="fp32 only"):
        create_backend(package, "torch", precision="int8")
    # without the [torch] extra the torch backend says which extra to install
    monkeypatch.setitem(sys.modules, "wildvision.torch_backend", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'wildvision\[torch\]'"):
        create_backend(package, "torch")


def test_corrupt_onnx_with_a_matching_hash(tiny_model_dir: Path, tmp_path: Path) -> None:
    pkg_dir = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, pkg_dir)
    (pkg_dir / "model.onnx").write_bytes(b"\x08\x07this is not a protobuf graph")
    card = json.loads((pkg_dir / "card.json").read_text())
    card["files"]["model.onnx"] = sha256_file(pkg_dir / "model.onnx")
    (pkg_dir / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelIntegrityError, match="ONNX Runtime cannot load"):
        create_backend(load_package(pkg_dir), "onnx")


def _parity(package: ModelPackage, x: np.ndarray) -> tuple[float, float]:
    onnx_out = create_backend(package, "onnx", threads=1).run(x)
    torch_out = create_backend(package, "torch", threads=1).run(x)
    assert set(torch_out) == {"logits", "embedding", "features"}
    dl = float(np.abs(onnx_out["logits"] - torch_out["logits"]).max())
    de = float(np.abs(onnx_out["embedding"] - torch_out["embedding"]).max())
    return dl, de


def test_torch_onnx_parity_generated(package: ModelPackage, batch: np.ndarray) -> None:
    """Same weights, same preprocessed input: logits agree to 1e-4 (float32 kernels differ)."""
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    dl, de = _parity(package, batch)
    assert dl <= 1e-4 and de <= 1e-4, (dl, de)


def test_torch_onnx_parity_real_photos(package: ModelPackage, shared_data: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    with open(shared_data / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    picked = rows[:: max(1, len(rows) // 12)][:12]
    cfg = package.card.preprocess
    x = np.stack([
        preprocess_image(decode_image(shared_data / r["path"], draft_size=cfg.draft_size).image,
                         cfg)
        for r in picked
    ])
    dl, de = _parity(package, x)
    assert dl <= 1e-4 and de <= 1e-4, (dl, de)


def test_torch_backend_needs_an_arch(package: ModelPackage) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    no_arch = ModelPackage(package.path, package.card.with_updates(arch=""))
    with pytest.raises(ModelIntegrityError, match="arch"):
        create_backend(no_arch, "torch")
    wrong = ModelPackage(package.path, package.card.with_updates(arch="resnet18"))
    with pytest.raises(ModelIntegrityError, match="do not fit resnet18"):
        create_backend(wrong, "torch")
