"""INT8 export (wildvision.export.quantize, `wildvision export int8`): a loadable package with
``model.int8.onnx`` recorded in the card, selectable with ``precision="int8"``, and close to
fp32 on generated images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from wildvision.cli import main
from wildvision.errors import ConfigError, ModelIntegrityError
from wildvision.modelcard_md import write_card
from wildvision.modelpack import load_package, sha256_file
from wildvision.predict import Classifier, Prediction

from conftest import encode, photo_like

onnx = pytest.importorskip("onnx", reason="INT8 quantization needs onnx ([train] extra)")
from onnx import numpy_helper  # noqa: E402

from wildvision.export.quantize import (  # noqa: E402
    calibration_images,
    measure_agreement,
    quantize_package,
)


def _photos(root: Path, n: int, seed: int) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = root / f"img{i:03d}.jpg"
        p.write_bytes(encode(photo_like(90 + 3 * i, 70 + 2 * i, seed=seed + i), "JPEG",
                            quality=90))
        out.append(str(p))
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    root = tmp_path_factory.mktemp("quant-images")
    return {"calib": _photos(root / "calib", 40, 0), "check": _photos(root / "check", 30, 1000)}


@pytest.fixture(scope="module")
def fp32_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny test model: its top label depends on the image (a colour rule), so
    top-1 agreement between FP32 and INT8 is not trivially 1.0."""
    pkg = tmp_path_factory.mktemp("fp32") / "model"
    shutil.copytree(tiny_model_dir, pkg)
    return pkg


@pytest.fixture(scope="module")
def int8_model(fp32_model: Path, images: dict[str, list[str]],
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    pkg = tmp_path_factory.mktemp("int8") / "model"
    shutil.copytree(fp32_model, pkg)
    path = quantize_package(pkg, images["calib"], method="static")
    assert path == pkg / "model.int8.onnx"
    return pkg


def test_int8_package_is_valid_and_recorded(int8_model: Path) -> None:
    pkg = load_package(int8_model)  # verifies every hash, the new file's included
    assert pkg.precisions == ("fp32", "int8")
    assert pkg.card.files["model.int8.onnx"] == sha256_file(int8_model / "model.int8.onnx")
    rec = pkg.card.extra["int8"]
    assert rec["method"] == "static"
    assert rec["calibration_images"] == 32  # 40 given, every 5th held out
    agree = rec["agreement_vs_fp32"]
    assert agree["images"] == 8 and agree["held_out"] is True
    assert agree["top1_agreement"] >= 0.75
    model = onnx.load(int8_model / "model.int8.onnx")
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # the first convolutions and the classifier stay in float: their weights are plain
    # initializers, not the output of a DequantizeLinear
    kept = rec["kept_fp32"]
    assert len(kept) == 4 and kept[0] == "/conv_stem/Conv"
    nodes = {n.name: n for n in model.graph.node}
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear"
                  for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    for name in kept:
        assert nodes[name].op_type in ("Conv", "Gemm", "MatMul")
        assert nodes[name].input[1] in inits and nodes[name].input[1] not in dq_outputs
    quantized = [n for n in model.graph.node if n.op_type == "Conv" and n.name not in kept]
    assert quantized and all(n.input[1] in dq_outputs for n in quantized)
    assert "int8" in (int8_model / "README.md").read_text(encoding="utf-8").lower()


def test_int8_selectable_and_close_to_fp32(int8_model: Path,
                                           images: dict[str, list[str]]) -> None:
    check = images["check"]
    fp32 = Classifier(int8_model).classify_many(check)
    int8 = Classifier(int8_model, precision="int8").classify_many(check)
    assert all(isinstance(r, Prediction) for r in fp32 + int8)
    top32 = [r.top_labels[0].label for r in fp32]  # type: ignore[union-attr]
    top8 = [r.top_labels[0].label for r in int8]  # type: ignore[union-attr]
    assert len(set(top32)) >= 4  # the comparison is not trivial
    agreement = np.mean([a == b for a, b in zip(top32, top8, strict=True)])
    assert agreement >= 0.85
    m = measure_agreement(int8_model, check)
    assert m["images"] == 30 and m["top1_agreement"] == pytest.approx(agreement)
    assert m["max_prob_diff"] < 0.25


def test_agreement_detects_a_different_model(int8_model: Path, tiny_model_dir: Path,
                                             images: dict[str, list[str]],
                                             tmp_path: Path) -> None:
    pkg = tmp_path / "mismatch"
    shutil.copytree(int8_model, pkg)
    # an "int8 model" that is really another model (the tiny model with its classifier rows
    # shifted by one label): must not agree
    model = onnx.load(tiny_model_dir / "model.onnx")
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    for name in gemm.input[1:3]:
        init = next(i for i in model.graph.initializer if i.name == name)
        rolled = np.roll(numpy_helper.to_array(init), 1, axis=0)
        init.CopyFrom(numpy_helper.from_array(rolled, name))
    onnx.save(model, pkg / "model.int8.onnx")
    write_card(pkg, load_package(pkg, verify=False).card)
    assert measure_agreement(pkg, images["check"])["top1_agreement"] < 0.5


def test_dynamic_method_makes_a_loadable_model(fp32_model: Path, images: dict[str, list[str]],
                                               tmp_path: Path) -> None:
    pkg = tmp_path / "dyn"
    shutil.copytree(fp32_model, pkg)
    quantize_package(pkg, images["calib"][:10], method="dynamic")
    rec = load_package(pkg).card.extra["int8"]
    assert rec["method"] == "dynamic" and rec["calibration_images"] == 0
    r = Classifier(pkg, precision="int8").classify(images["check"][0])
    assert r.ok


def test_bad_requests(fp32_model: Path, tmp_path: Path, images: dict[str, list[str]]) -> None:
    with pytest.raises(ConfigError, match="method"):
        quantize_package(fp32_model, images["calib"], method="fp16")
    with pytest.raises(ConfigError, match="at least one"):
        quantize_package(fp32_model, [])
    with pytest.raises(ModelIntegrityError, match=r"model\.int8\.onnx"):
        measure_agreement(fp32_model, images["check"][:2])
    with pytest.raises(ConfigError, match=r"manifest \.csv or a folder"):
        calibration_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no calibration images"):
        calibration_images(tmp_path / "empty")
    assert "model.int8.onnx" not in load_package(fp32_model).card.files


def test_calibration_images_from_a_manifest_split(tmp_path: Path,
                                                  images: dict[str, list[str]]) -> None:
    from wildvision.data.manifest import ManifestRow, write_manifest

    rows = [ManifestRow(path=Path(p).name, split="val" if i % 2 else "train",
                        error="InvalidImageError: x" if i == 5 else "")
            for i, p in enumerate(images["calib"])]
    manifest = tmp_path / "manifest.csv"
    write_manifest(manifest, rows)
    root = Path(images["calib"][0]).parent
    val = calibration_images(manifest, split="val", limit=None, data_root=root)
    assert val == [str(root / r.path) for r in rows if r.split == "val" and not r.error]
    few = calibration_images(manifest, split="val", limit=4, data_root=root)
    assert len(few) == 4 and few[0] == val[0] and few[-1] == val[-1]  # spread, not the head
    assert calibration_images(root, limit=None) == sorted(images["calib"])


def test_cli_export_int8_then_classify(fp32_model: Path, images: dict[str, list[str]],
                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    pkg = tmp_path / "cli-model"
    shutil.copytree(fp32_model, pkg)
    calib_dir = str(Path(images["calib"][0]).parent)
    assert main(["export", "int8", str(pkg), "--calib", calib_dir, "--limit", "20"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["int8_model"] == str(pkg / "model.int8.onnx")
    assert out["calibration_images"] == 16
    card = json.loads((pkg / "card.json").read_text(encoding="utf-8"))
    assert card["int8"]["command"].startswith(f"wildvision export int8 {pkg} --calib")
    assert main(["classify", "--model", str(pkg), "--precision", "int8",
                 images["check"][0]]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["ok"] is True and line["model"] == card["name"]
    assert main(["export", "int8", str(pkg), "--calib", str(tmp_path / "nothing")]) == 2


def test_cli_export_triton_is_wired(tiny_model_dir: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "repo"
    assert main(["export", "triton", str(tiny_model_dir), "--out", str(out),
                 "--max-batch-size", "8"]) == 0
    entry = Path(capsys.readouterr().out.strip())
    assert entry.parent == out and "max_batch_size: 8" in (entry / "config.pbtxt").read_text()
    assert main(["export"]) == 2  # no format given: usage
