"""The zero-training ImageNet baseline (issue 8, baseline a): the documented class mapping, and
the built package, which must give exactly the summed ImageNet softmax probabilities through the
core API."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("yaml")

from wildvision import Classifier  # noqa: E402
from wildvision.errors import ConfigError, ModelIntegrityError  # noqa: E402
from wildvision.imaging import decode_image  # noqa: E402
from wildvision.modelpack import ModelPackage, load_package  # noqa: E402
from wildvision.predict import Prediction  # noqa: E402
from wildvision.preprocess import preprocess_image  # noqa: E402
from wildvision.taxonomy import FINE_LABELS, group_of  # noqa: E402
from wildvision.train.baselines import (  # noqa: E402
    DEFAULT_MAPPING,
    ZeroShotNet,
    load_mapping,
    main,
)
from wildvision.train.weights import (  # noqa: E402
    WEIGHT_PACKAGES,
    imagenet_classifier,
    imagenet_labels,
)

from conftest import missing_data  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LITE0 = "tf_efficientnet_lite0"


# --------------------------------------------------------------------------------------------
# the mapping


def test_mapping_is_a_partition_of_imagenet_into_taxonomy_labels() -> None:
    import yaml

    raw = yaml.safe_load(DEFAULT_MAPPING.read_text(encoding="utf-8"))
    listed = [int(i) for entries in raw["labels"].values() for i in entries]
    # YAML silently keeps the last of two equal keys in one section, so count the text too
    text_keys = [line.split(":")[0].strip() for line in DEFAULT_MAPPING.read_text().splitlines()
                 if line.startswith("    ") and line.strip()[:1].isdigit()]
    assert len(text_keys) == len(listed) == len(set(listed))
    m = load_mapping()
    assert len(m.class_label) == 1000
    assert all(lab in FINE_LABELS for lab in m.labels)
    assert set(m.class_label) == set(m.labels)
    counts = m.assignment().sum(axis=0)
    assert counts.shape == (1000,) and np.all(counts == 1)  # every index exactly once
    names = imagenet_labels()
    for idx, label in ((i, lab) for lab, e in raw["labels"].items() for i in e):
        assert m.class_label[idx] == label
        assert raw["labels"][label][idx] == names[idx].split(",")[0].strip()
    assert m.class_label.count(m.default) == 1000 - len(listed)
    # the products have no ImageNet class: no label of those groups
    groups = {group_of(lab) for lab in m.labels}
    assert groups == {"live_protected_animal", "benign"}
    # the documented look-alike decisions
    desc = {n.split(",")[0]: i for i, n in enumerate(names)}
    assert m.class_label[desc["tiger"]] == "live_tiger"
    assert m.class_label[desc["tiger cat"]] == "domestic_cat"
    assert m.class_label[desc["armadillo"]] == m.default
    assert m.class_label[desc["teddy"]] == m.default


def _write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "m.yaml"
    p.write_text("default: everyday_object\nlabels:\n" + body, encoding="utf-8")
    return p


@pytest.mark.parametrize(("body", "message"), [
    ("  live_tiger:\n    291: tiger\n", "index 291 is 'lion'"),
    ("  live_tiger:\n    292: tiger\n  live_lion:\n    292: tiger\n", "listed under both"),
    ("  live_unicorn:\n    292: tiger\n", "not a taxonomy fine label"),
    ("  live_tiger:\n    1000: tiger\n", "not an ImageNet index"),
    ("  live_tiger: {}\n", "at least one"),
])
def test_mapping_errors_are_named(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_mapping(_write(tmp_path, body))


def test_pooling_gives_summed_imagenet_probabilities() -> None:
    m = load_mapping()
    net = ZeroShotNet("test_efficientnet", m.assignment()).eval()
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(6, 1000, generator=gen) * 8
    z[0, 5] = 200.0  # one dominant class: the others underflow in exp
    z[1] -= 300.0
    got = torch.softmax(net.pool(z).double(), dim=1).numpy()
    p = torch.softmax(z.double(), dim=1).numpy()
    want = np.stack([p[:, list(m.classes_of(lab))].sum(axis=1) for lab in m.labels], axis=1)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert np.isfinite(net.pool(z).numpy()).all()


# --------------------------------------------------------------------------------------------
# the built package


def _weights_installed() -> None:
    _dist, module, _cls = WEIGHT_PACKAGES[LITE0]
    try:
        importlib.import_module(module)
    except ImportError:
        pytest.skip(f"{module} is not installed (the [train] extra installs it)")


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> ModelPackage:
    _weights_installed()
    out = tmp_path_factory.mktemp("zs") / "imagenet-zero-shot-lite0"
    assert main(["--out", str(out)]) == 0
    return load_package(out)


def test_package_card(package: ModelPackage) -> None:
    card = package.card
    assert (card.name, card.version, card.temperature) == ("imagenet-zero-shot-lite0", "1.0.0",
                                                          1.0)
    assert card.labels == load_mapping().labels
    assert set(card.files) == {"model.onnx"}  # no safetensors: not a WildvisionNet head
    assert card.groups == ("live_protected_animal", "benign")
    assert {g: (t.flag, t.review) for g, t in card.thresholds.items()} == {
        "live_protected_animal": (0.5, 0.3)}
    pp = card.preprocess
    assert (pp.input_size, pp.crop_pct, pp.interpolation, pp.mean, pp.std) == (
        224, 0.875, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert card.training["mapping"]["sha256"] == load_mapping().sha256
    assert "ivory" in card.extra["not_covered"] and "tiger_parts" in card.extra["not_covered"]
    assert max(card.training["parity"]["max_abs_diff"].values()) < 1e-3


def test_refuses_to_overwrite(package: ModelPackage, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(package.path)]) == 2
    assert "not empty" in capsys.readouterr().err
    load_package(package.path)  # untouched


def test_torch_backend_is_refused_clearly(package: ModelPackage) -> None:
    with pytest.raises(ModelIntegrityError, match=r"model\.safetensors"):
        Classifier(package.path, backend="torch")


def _images() -> list[tuple[str, Image.Image]]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:180, 0:240]
    grad = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
    stripes = np.where(((xx // 12) % 2)[..., None] == 1, [230, 140, 30], [20, 20, 20])
    return [
        ("noise", Image.fromarray(rng.integers(0, 256, (200, 150, 3), dtype=np.uint8))),
        ("gradient", Image.fromarray(grad)),
        ("stripes", Image.fromarray(stripes.astype(np.uint8))),
    ]


def _label_probs(model: torch.nn.Module, files: list[Path], package: ModelPackage) -> np.ndarray:
    cfg = package.card.preprocess
    x = np.stack([preprocess_image(decode_image(f, draft_size=cfg.draft_size).image, cfg)
                  for f in files])
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy(x)).double(), dim=1).numpy()
    m = load_mapping()
    return np.stack([p[:, list(m.classes_of(lab))].sum(axis=1) for lab in package.card.labels],
                    axis=1)


@pytest.fixture(scope="module")
def imagenet_model(package: ModelPackage) -> torch.nn.Module:
    model, _w = imagenet_classifier(LITE0)  # the timm model with its own head, same weights
    return model


@pytest.fixture(scope="module")
def classifier(package: ModelPackage) -> Classifier:
    return Classifier(package.path, threads=1, top_k=len(package.card.labels))


def _check_against_torch(package: ModelPackage, model: torch.nn.Module, clf: Classifier,
                         files: list[Path]) -> list[Prediction]:
    """Classify ``files`` through the core API (ONNX) and compare every label and group
    probability with the summed ImageNet softmax computed directly in torch."""
    want = _label_probs(model, files, package)
    labels = package.card.labels
    preds = []
    for k, f in enumerate(files):
        pred = clf.classify(f)
        assert isinstance(pred, Prediction)
        got = {s.label: s.probability for s in pred.top_labels}
        assert set(got) == set(labels)
        np.testing.assert_allclose([got[lab] for lab in labels], want[k], atol=1e-5, rtol=0,
                                   err_msg=f.name)
        for g in package.card.groups:
            gwant = sum(want[k][i] for i, lab in enumerate(labels) if group_of(lab) == g)
            assert abs(pred.group(g).probability - gwant) < 1e-5, (f.name, g)
        preds.append(pred)
    return preds


def test_generated_images_get_summed_imagenet_probabilities(
        package: ModelPackage, imagenet_model: torch.nn.Module, classifier: Classifier,
        tmp_path: Path) -> None:
    files = []
    for name, img in _images():
        files.append(tmp_path / f"{name}.png")
        img.save(files[-1])
    preds = _check_against_torch(package, imagenet_model, classifier, files)
    assert len(preds) == 3


def test_real_photos_get_summed_imagenet_probabilities(
        package: ModelPackage, imagenet_model: torch.nn.Module, classifier: Classifier) -> None:
    tigers_dir = SHARED / "bigcats" / "live_tiger"
    cats_dir = SHARED / "dogs_vs_cats" / "domestic_cat"
    if not tigers_dir.is_dir() or not cats_dir.is_dir():
        missing_data(f"real photos not found under {SHARED} (bigcats/live_tiger, "
                     "dogs_vs_cats/domestic_cat)")
    tigers = sorted(tigers_dir.iterdir())[:2]
    cats = sorted(cats_dir.iterdir())[:2]
    preds = _check_against_torch(package, imagenet_model, classifier, tigers + cats)
    for f, pred in zip(tigers, preds[:2], strict=True):
        assert pred.top_group == "live_protected_animal", (f.name, pred.to_dict())
    for f, pred in zip(cats, preds[2:], strict=True):
        assert pred.top_group == "benign", (f.name, pred.to_dict())
