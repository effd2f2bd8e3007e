"""Explanations: the head read from ONNX files without the onnx package, the class activation
maps, and the map carried back through the preprocessing onto the original photo."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import wildvision
from wildvision.errors import ConfigError, ModelIntegrityError
from wildvision.explain import (
    Explanation,
    activation_maps,
    group_direction,
    heatmap_on_image,
    input_transform,
    overlay_png,
    render_overlay,
)
from wildvision.head import head_weights, read_onnx_head
from wildvision.modelcard_md import write_card
from wildvision.modelpack import load_package
from wildvision.predict import Classifier
from wildvision.preprocess import PreprocessConfig, preprocess_image, resize_crop

from conftest import photo_like

BASE = Path(wildvision.__file__).parent / "models" / "wildvision-base"


# -- the head, read without onnx ------------------------------------------------------------

@pytest.mark.parametrize("name", ["model.onnx", "model.int8.onnx"])
def test_head_of_the_default_model_equals_onnx_initializers(name: str) -> None:
    head = read_onnx_head(BASE / name)
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(BASE / name).graph.initializer}
    np.testing.assert_array_equal(head.weight, inits["head.weight"])
    np.testing.assert_array_equal(head.bias, inits["head.bias"])


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_head_maps_the_embedding_output_to_the_logits_output(precision: str) -> None:
    clf = Classifier(precision=precision, open_set=False)
    x = preprocess_image(photo_like(320, 240, seed=3), clf.card.preprocess)[None]
    out = clf.backend.run(np.concatenate([x, x[:, :, ::-1]]))
    head = head_weights(clf.package, precision)
    np.testing.assert_allclose(head.logits(out["embedding"]), out["logits"], atol=2e-4)
    # features -> embedding is a global average pool: the CAM decomposition is exact
    # (int8 requantizes the pooled value, clipping the largest few: compared on average).
    diff = np.abs(out["features"].mean(axis=(2, 3)) - out["embedding"])
    if precision == "fp32":
        assert diff.max() < 1e-5
    else:
        assert diff.mean() < 0.01 and np.mean(diff < 0.05) > 0.99


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def _emb_input() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [None, 4])


def _logits_output() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 3])


def _check_head(path: Path, w: np.ndarray, b: np.ndarray) -> None:
    import onnxruntime as ort

    head = read_onnx_head(path)
    np.testing.assert_allclose(head.weight, w, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(head.bias, b, rtol=1e-6, atol=1e-6)
    e = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    ref = ort.InferenceSession(str(path)).run(["logits"], {"embedding": e})[0]
    np.testing.assert_allclose(head.logits(e), ref, rtol=1e-5, atol=1e-5)


def test_head_reader_covers_gemm_variants_matmul_constants_and_int8(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 4)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    # Gemm without transB (B is dim x labels), alpha and beta, float_data instead of raw_data.
    wt = helper.make_tensor("B", TensorProto.FLOAT, [4, 3], w.T.ravel().tolist())
    bt = helper.make_tensor("C", TensorProto.FLOAT, [3], b.tolist())
    g = helper.make_graph([helper.make_node("Gemm", ["embedding", "B", "C"], ["logits"],
                                            alpha=2.0, beta=0.5)],
                          "g", [_emb_input()], [_logits_output()], [wt, bt])
    _check_head(_save(g, tmp_path / "gemm.onnx"), 2 * w, 0.5 * b)
    # MatMul + Add, the weight in a Constant node.
    g = helper.make_graph(
        [helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w.T, "W")),
         helper.make_node("MatMul", ["embedding", "W"], ["mm"]),
         helper.make_node("Add", ["mm", "C"], ["logits"])],
        "g", [_emb_input()], [_logits_output()], [numpy_helper.from_array(b, "C")])
    _check_head(_save(g, tmp_path / "matmul.onnx"), w, b)
    # An int8 weight behind a per-axis DequantizeLinear.
    scale = (np.abs(w).max(axis=1) / 127).astype(np.float32)
    q = np.round(w / scale[:, None]).astype(np.int8)
    g = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["Wq", "s", "z"], ["W"], axis=0),
         helper.make_node("Gemm", ["embedding", "W", "C"], ["logits"], transB=1)],
        "g", [_emb_input()], [_logits_output()],
        [numpy_helper.from_array(q, "Wq"), numpy_helper.from_array(scale, "s"),
         numpy_helper.from_array(np.zeros(3, np.int8), "z"), numpy_helper.from_array(b, "C")])
    _check_head(_save(g, tmp_path / "int8.onnx"), (q.astype(np.float32) * scale[:, None]), b)


def test_head_reader_refuses_what_it_cannot_explain(tmp_path: Path) -> None:
    w = np.ones((3, 4), np.float32)
    relu = helper.make_graph([helper.make_node("Relu", ["embedding"], ["logits"])],
                             "g", [_emb_input()], [helper.make_tensor_value_info(
                                 "logits", TensorProto.FLOAT, [None, 4])])
    with pytest.raises(ModelIntegrityError, match="not a linear head"):
        read_onnx_head(_save(relu, tmp_path / "relu.onnx"))
    other = helper.make_graph(
        [helper.make_node("Relu", ["embedding"], ["r"]),
         helper.make_node("Gemm", ["r", "W"], ["logits"], transB=1)],
        "g", [_emb_input()], [_logits_output()], [numpy_helper.from_array(w, "W")])
    with pytest.raises(ModelIntegrityError, match="not the 'embedding' output"):
        read_onnx_head(_save(other, tmp_path / "other.onnx"))
    data = (BASE / "model.int8.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelIntegrityError, match=r"cut\.onnx"):
        read_onnx_head(tmp_path / "cut.onnx")
    with pytest.raises(ModelIntegrityError):
        read_onnx_head(tmp_path / "missing.onnx")


# -- the maps ------------------------------------------------------------------------------

def test_group_direction_is_the_gradient_of_the_group_log_odds() -> None:
    rng = np.random.default_rng(2)
    w = rng.normal(size=(6, 5))
    e = rng.normal(size=5)
    in_g = np.array([1, 1, 0, 0, 0, 0], bool)

    def log_odds(emb: np.ndarray) -> float:
        z = w @ emb
        p = np.exp(z - z.max())
        p /= p.sum()
        return float(np.log(p[in_g].sum()) - np.log(p[~in_g].sum()))

    z = w @ e
    p = np.exp(z - z.max())
    p /= p.sum()
    d = group_direction(w, p[None], in_g)[0]
    eps = 1e-5
    numeric = [(log_odds(e + eps * np.eye(5)[i]) - log_odds(e - eps * np.eye(5)[i])) / (2 * eps)
               for i in range(5)]
    np.testing.assert_allclose(d, numeric, rtol=1e-4, atol=1e-6)
    # Saturated P(g) = 1 - 1e-12: the direction neither vanishes nor turns to noise.
    p_sat = np.array([[0.5, 0.5 - 1e-12, 5e-13, 5e-13, 0, 0]])
    d_sat = group_direction(w, p_sat, in_g)[0]
    np.testing.assert_allclose(d_sat, (w[0] + w[1]) / 2 - (w[2] + w[3]) / 2, rtol=1e-5)


def test_activation_maps_are_scaled_positive_evidence() -> None:
    f = np.zeros((2, 3, 4, 4), np.float32)
    f[0, 0, 1, 2] = 2.0
    f[0, 1, 3, 3] = 1.0  # negative evidence for row 0
    d = np.array([[1.0, -1.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
    cams = activation_maps(f, d)
    assert cams[0, 1, 2] == 1.0 and cams[0, 3, 3] == 0.0 and cams[0].sum() == 1.0
    assert not cams[1].any()  # no positive evidence: an all-zero map, not NaN


# -- back onto the original photo ------------------------------------------------------------

def _coordinate_image(w: int, h: int) -> Image.Image:
    """Each pixel holds its own position: R = x, G = y (scaled to 0..255)."""
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([(x + 0.5) * 255 / w, (y + 0.5) * 255 / h, np.zeros_like(x)], -1)
    return Image.fromarray(np.round(arr).astype(np.uint8), "RGB")


@pytest.mark.parametrize("mode", ["center_crop", "squash", "letterbox"])
@pytest.mark.parametrize("size", [(400, 300), (180, 420), (3000, 90)])
def test_input_transform_matches_resize_crop(mode: str, size: tuple[int, int]) -> None:
    cfg = PreprocessConfig(input_size=64, resize_mode=mode, crop_pct=0.875,
                           interpolation="bilinear")
    w, h = size
    out = np.asarray(resize_crop(_coordinate_image(w, h), cfg), np.float32)
    sx, sy, tx, ty = input_transform(cfg, size)
    # Where each model-input pixel centre comes from in the original, by the inverse map.
    yi, xi = np.mgrid[0:64, 0:64] + 0.5
    x_orig, y_orig = (xi - tx) / sx, (yi - ty) / sy
    inside = (x_orig > 1) & (x_orig < w - 1) & (y_orig > 1) & (y_orig < h - 1)
    assert inside.sum() > 100  # (a 3000x90 letterbox keeps 2 rows of 64)
    # In original pixels; allowed: two grey levels of the encoding plus half the footprint of
    # one model-input pixel (a strong downscale averages many source pixels into one).
    err_x = np.abs(out[..., 0] * w / 255 - x_orig)[inside]
    err_y = np.abs(out[..., 1] * h / 255 - y_orig)[inside]
    assert np.percentile(err_x, 95) < 2 * w / 255 + 0.5 / sx
    assert np.percentile(err_y, 95) < 2 * h / 255 + 0.5 / sy
    # A map off by one model-input pixel would fail: the bound is tighter than that shift.
    assert 2 * w / 255 + 0.5 / sx < np.median(np.abs(np.diff(x_orig, axis=1))) * 2 + 2 * w / 255
    if mode == "letterbox":  # the padding is outside the photo
        assert not inside[0].all() or not inside[:, 0].all()


def test_a_hot_cell_lands_where_the_model_saw_it() -> None:
    cfg = PreprocessConfig(input_size=64, resize_mode="center_crop", crop_pct=0.8)
    cam = np.zeros((4, 4), np.float32)
    cam[0, 3] = 1.0  # top-right cell of the model input
    heat, box = heatmap_on_image(cam, cfg, (400, 200), image_size=(800, 400))
    assert heat.shape[1] > heat.shape[0]  # the photo's aspect, not the square input
    # Resized to 160x80, cropped to (48, 8, 112, 72): in the 800x400 photo (240, 40, 560, 360).
    assert box == pytest.approx((240, 40, 560, 360))
    rows, cols = np.nonzero(heat > 0.5)
    gy, gx = heat.shape
    # Hot near the top and at the right edge of the kept band, nothing outside the band.
    assert rows.max() < gy / 3 and rows.min() >= 40 / 400 * gy - 1
    x_hot = (cols + 0.5) / gx * 800
    assert x_hot.min() > 400 and x_hot.max() <= box[2] + 800 / gx
    outside = (np.arange(gx) + 0.5) / gx * 800 < box[0]
    assert not heat[:, outside].any()


# -- end to end, real model ----------------------------------------------------------------

def _two_halves(left: Image.Image, right: Image.Image, side: int = 260) -> Image.Image:
    canvas = Image.new("RGB", (2 * side, side))
    canvas.paste(left.convert("RGB").resize((side, side)), (0, 0))
    canvas.paste(right.convert("RGB").resize((side, side)), (side, 0))
    return canvas


def _photo(shared: Path, folder: str) -> Image.Image:
    return Image.open(sorted((shared / folder).rglob("*.jpg"))[0])


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_heatmap_points_at_the_animal_on_the_displayed_photo(shared_data: Path, precision: str,
                                                             tmp_path: Path) -> None:
    tiger = _photo(shared_data, "bigcats/live_tiger")
    shirt = _photo(shared_data, "clothing")
    clf = Classifier(precision=precision, explain=True)
    for swap in (False, True):
        img = _two_halves(shirt, tiger) if swap else _two_halves(tiger, shirt)
        p = clf.classify(img)
        e = p.explanation
        assert e is not None and e.group == "live_protected_animal"
        assert e.image_size == (520, 260) and e.heatmap.shape[1] > e.heatmap.shape[0]
        half = e.heatmap.shape[1] // 2
        left, right = e.heatmap[:, :half].sum(), e.heatmap[:, half:].sum()
        assert (right > 2 * left) if swap else (left > 2 * right), (swap, left, right)
    # The same photo stored on its side with an EXIF rotation: the map follows the display.
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    _two_halves(tiger, shirt).transpose(Image.Transpose.ROTATE_90).save(
        buf, "JPEG", quality=90, exif=exif)
    path = tmp_path / "turned.jpg"
    path.write_bytes(buf.getvalue())
    p = clf.classify(path)
    assert (p.width, p.height) == (260, 520)  # stored size
    e = p.explanation
    assert e is not None and e.image_size == (520, 260)
    half = e.heatmap.shape[1] // 2
    assert e.heatmap[:, :half].sum() > 2 * e.heatmap[:, half:].sum()


def test_explain_on_real_photos_batch_equals_single_and_round_trips(shared_data: Path) -> None:
    photos = sorted((shared_data / "met_ivory" / "ivory_artifact").rglob("*.jpg"))[:3] + sorted(
        (shared_data / "monkey10").rglob("*.jpg"))[:3]
    clf = Classifier(explain=True)
    batch = clf.classify_many([*photos, b"not an image"], batch_size=4)
    assert not batch[-1].ok
    seen_groups = set()
    for path, r in zip(photos, batch, strict=False):
        assert isinstance(r, wildvision.Prediction) and r.explanation is not None
        e = r.explanation
        flaggable = [g for g in r.groups if g.group != "benign"]
        assert e.group == max(flaggable, key=lambda g: g.probability).group
        seen_groups.add(e.group)
        # Sampled between feature-cell centres, the peak 1 of the map is approached, not hit
        # (all 0 where nothing speaks for the group, possible only when it is improbable).
        assert e.heatmap.dtype == np.float32 and e.heatmap.max() <= 1.0
        assert e.heatmap.max() > 0.75 or e.probability < 0.05
        assert e.heatmap.min() >= 0
        with Image.open(path) as im:
            assert e.image_size == im.size
        single = clf.classify(path).explanation
        assert single is not None
        np.testing.assert_allclose(single.heatmap, e.heatmap, atol=2e-3)
        d = json.loads(r.to_json())["explanation"]
        back = Explanation.from_dict(d)
        np.testing.assert_allclose(back.heatmap, e.heatmap, atol=5e-4)
        assert back.image_size == e.image_size and back.group == e.group
    assert seen_groups == {"ivory", "live_protected_animal"}
    assert Classifier().classify(photos[0]).explanation is None
    assert "explanation" not in Classifier().classify(photos[0]).to_dict()
    # Any group on request, e.g. ivory on a monkey photo.
    e = clf.explain(photos[-1], group="ivory")
    assert e.group == "ivory" and e.probability < 0.5
    with pytest.raises(ConfigError, match="no group 'pangolin'"):
        clf.explain(photos[-1], group="pangolin")


def test_overlay_png_is_the_photo_tinted_where_hot() -> None:
    img = Image.new("RGB", (300, 200), (40, 120, 40))
    heat = np.zeros((10, 15), np.float32)
    heat[:, :5] = 1.0
    e = Explanation("ivory", 0.9, heat, (300, 200), (0, 0, 300, 200))
    over = render_overlay(img, e, alpha=0.6)
    arr = np.asarray(over, np.int16)
    assert over.size == (300, 200)
    assert np.abs(arr[:, 250] - (40, 120, 40)).max() <= 1  # cold: untouched
    assert np.abs(arr[:, 20] - (40, 120, 40)).max() > 60  # hot: tinted
    png = overlay_png(img, e, max_side=120)
    with Image.open(io.BytesIO(png)) as small:
        assert small.format == "PNG" and max(small.size) == 120
    with pytest.raises(ConfigError):
        render_overlay(img, e, alpha=2)
    with pytest.raises(ConfigError):
        Explanation.from_dict({"group": "ivory", "heatmap": [1, 2], "image_size": [1, 1],
                               "box": [0, 0, 1, 1]})


def test_a_model_without_features_refuses_explain_at_load(tiny_model_dir: Path,
                                                          tmp_path: Path) -> None:
    pkg = tmp_path / "no-features"
    shutil.copytree(tiny_model_dir, pkg)
    model = onnx.load(pkg / "model.onnx")
    keep = [o for o in model.graph.output if o.name != "features"]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    onnx.save(model, pkg / "model.onnx")
    card = load_package(pkg, verify=False).card
    write_card(pkg, card)
    assert Classifier(pkg).classify(photo_like(64, 64)).ok
    with pytest.raises(ConfigError, match="no 'features' output"):
        Classifier(pkg, explain=True)
    tiny = Classifier(tiny_model_dir, explain=True).classify(photo_like(90, 60))
    assert tiny.explanation is not None and tiny.explanation.image_size == (90, 60)


def test_cli_classify_explain_writes_heatmaps(shared_data: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from wildvision.cli import main

    photo = sorted((shared_data / "monkey10").rglob("*.jpg"))[0]
    out = tmp_path / "r.jsonl"
    assert main(["classify", str(photo), "--explain", "-o", str(out)]) == 0
    d = json.loads(out.read_text())
    e = Explanation.from_dict(d["explanation"])
    assert e.group == "live_protected_animal" and e.heatmap.max() > 0.75
    assert main(["classify", str(photo), "-o", str(out), "--force"]) == 0
    assert "explanation" not in json.loads(out.read_text())
    assert main(["classify", str(photo), "--explain", "--format", "csv"]) == 2
    assert "--explain" in capsys.readouterr().err
