"""The one preprocessing: config validation, geometry, normalisation, and parity with the
torchvision eval transform that timm models are trained and evaluated with: exact with the
whole-image resize (``resize_crop_only=False``, models made before the option existed), within
a few grey levels with the default crop-region resize."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from wildvision.errors import ConfigError
from wildvision.imaging import decode_image
from wildvision.preprocess import (
    PreprocessConfig,
    normalize,
    preprocess,
    preprocess_image,
    resize_crop,
)

from conftest import encode, photo_like

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def _torchvision_eval(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """timm's eval transform, written with torchvision."""
    from torchvision import transforms as T

    modes = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}
    tf = T.Compose([
        T.Resize(int(cfg.input_size / cfg.crop_pct), interpolation=modes[cfg.interpolation]),
        T.CenterCrop(cfg.input_size),
        T.ToTensor(),
        T.Normalize(cfg.mean, cfg.std),
    ])
    out: np.ndarray = tf(img).numpy()
    return out


def test_config_defaults_and_derived_sizes() -> None:
    cfg = PreprocessConfig()
    assert cfg.resize_crop_only  # new models resize only what the centre crop keeps
    # a card written before the option existed was made with the whole-image resize
    old = {k: v for k, v in cfg.to_dict().items() if k != "resize_crop_only"}
    assert PreprocessConfig.from_dict(old).resize_crop_only is False
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.resize_size == 256  # floor(224 / 0.875), as timm
    assert cfg.draft_size == (256, 256)
    assert PreprocessConfig(jpeg_draft=False).draft_size is None
    assert PreprocessConfig(input_size=64, crop_pct=0.875).resize_size == 73
    assert PreprocessConfig(resize_mode="squash").resize_size == 224


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_size": 4},
        {"input_size": 224.0},
        {"resize_mode": "stretch"},
        {"crop_pct": 0.0},
        {"crop_pct": 1.5},
        {"interpolation": "cubic"},
        {"mean": (0.5, 0.5)},
        {"std": (0.5, 0.0, 0.5)},
    ],
)
def test_invalid_config_is_a_config_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        PreprocessConfig(**kwargs)


def test_config_round_trip() -> None:
    cfg = PreprocessConfig(input_size=96, resize_mode="letterbox", crop_pct=0.9,
                           interpolation="bilinear", pad_value=(1, 2, 3), **IMAGENET)
    d = cfg.to_dict()
    assert d["mean"] == [0.485, 0.456, 0.406] and d["pad_value"] == [1, 2, 3]
    assert PreprocessConfig.from_dict(d) == cfg
    with pytest.raises(ConfigError, match="unknown preprocess keys"):
        PreprocessConfig.from_dict({**d, "antialias": True})


NON_SQUARE = [(640, 480), (333, 500), (1000, 250), (50, 80), (257, 256), (97, 300)]


@pytest.mark.parametrize("size", NON_SQUARE)
@pytest.mark.parametrize(
    "cfg",
    [
        PreprocessConfig(input_size=224, crop_pct=0.875, **IMAGENET),
        PreprocessConfig(input_size=64, crop_pct=0.875),
        PreprocessConfig(input_size=96, crop_pct=0.95, interpolation="bilinear", **IMAGENET),
    ],
    ids=["224-bicubic-imagenet", "64-bicubic", "96-bilinear"],
)
def test_matches_torchvision_eval_transform(size: tuple[int, int], cfg: PreprocessConfig) -> None:
    """Whole-image resize: tolerance 1e-6: both run the same Pillow resize and crop, so the
    uint8 pixels are identical; what is left is float32 rounding of ``(x / 255 - mean) / std``
    (values within about [-2.2, 2.7], float32 epsilon 1.2e-7).

    Crop-region resize (the default): the same source positions, filter weights computed from a
    float32 box. Measured over these shapes and sizes: 1 grey level on at most 0.1% of the
    pixels, except 97x300 at 64 and 96 px (1-3 levels on 26% and 18%); hence at most 3
    levels and 0.3 level on average (on the grey-centred photo-like images)."""
    img = photo_like(*size, seed=size[0], grey=True)
    whole = dataclasses.replace(cfg, resize_crop_only=False)
    ours = preprocess_image(img, whole)
    ref = _torchvision_eval(img, whole)
    assert ours.shape == ref.shape == (3, cfg.input_size, cfg.input_size)
    assert ours.dtype == np.float32
    assert float(np.abs(ours - ref).max()) <= 1e-6
    region = preprocess_image(img, cfg)
    level = 1 / 255 / min(cfg.std)
    assert float(np.abs(region - ref).max()) <= 3 * level + 1e-6
    assert float(np.abs(region - ref).mean()) <= 0.3 * level


def test_extreme_aspect_ratio_close_to_torchvision() -> None:
    """Beyond an 8x crop area, center_crop resizes only the source region the crop keeps
    (bounded memory). Pillow may run its two separable passes in the other order than for the
    full image, rounding to uint8 in between, so some pixels move by a few grey levels. Over 150
    random extreme shapes the worst was 4 levels and a mean of 0.26 level, hence the tolerance:
    6 levels (6 / 255 / std in normalised units) at most, 0.35 level on average."""
    cfg = PreprocessConfig(input_size=64, crop_pct=0.875)
    level = 1 / 255 / cfg.std[0]
    for size in ((2000, 60), (60, 2000), (5000, 30), (200, 3000), (3000, 200)):
        img = photo_like(*size, seed=7)
        ours = preprocess_image(img, cfg)
        ref = _torchvision_eval(img, cfg)
        assert float(np.abs(ours - ref).max()) <= 6 * level + 1e-6, size
        assert float(np.abs(ours - ref).mean()) <= 0.35 * level, size


def test_extreme_aspect_ratio_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1x200000 strip would otherwise be resized to 256x51200000 (39 GB) before cropping."""
    sizes: list[tuple[int, int]] = []
    real_resize = Image.Image.resize

    def recording_resize(self: Image.Image, size: Any, *args: Any, **kwargs: Any) -> Image.Image:
        sizes.append(tuple(size))
        return real_resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording_resize)
    cfg = PreprocessConfig()
    for strip in (Image.new("RGB", (1, 200_000), (9, 99, 199)),
                  Image.new("RGB", (200_000, 1), (9, 99, 199))):
        out = resize_crop(strip, cfg)
        assert out.size == (224, 224)
        assert np.asarray(out).reshape(-1, 3).tolist()[0] == [9, 99, 199]
    assert sizes and max(w * h for w, h in sizes) <= 8 * 224 * 224


def test_squash_and_letterbox() -> None:
    img = photo_like(120, 60, seed=1)
    squash = PreprocessConfig(input_size=32, resize_mode="squash")
    np.testing.assert_array_equal(
        np.asarray(resize_crop(img, squash)),
        np.asarray(img.resize((32, 32), Image.Resampling.BICUBIC)),
    )
    lb = PreprocessConfig(input_size=32, resize_mode="letterbox", pad_value=(7, 8, 9))
    arr = np.asarray(resize_crop(img, lb))
    assert arr.shape == (32, 32, 3)
    # 120x60 -> 32x16 centred: 8 padding rows above and below
    np.testing.assert_array_equal(arr[:8], np.broadcast_to([7, 8, 9], (8, 32, 3)))
    np.testing.assert_array_equal(arr[-8:], np.broadcast_to([7, 8, 9], (8, 32, 3)))
    np.testing.assert_array_equal(
        arr[8:24], np.asarray(img.resize((32, 16), Image.Resampling.BICUBIC))
    )
    for mode in ("center_crop", "squash", "letterbox"):
        cfg = PreprocessConfig(input_size=16, resize_mode=mode)
        for size in ((1, 1), (1, 500), (500, 1), (16, 16)):
            assert resize_crop(Image.new("RGB", size), cfg).size == (16, 16), (mode, size)


def test_normalize_table_is_bit_identical_to_the_arithmetic() -> None:
    """normalize looks values up in a table made with the float32 arithmetic it replaces;
    every uint8 value, every channel, batch or not, with ``out`` or not: the same bits."""
    rng = np.random.default_rng(3)
    for cfg in (PreprocessConfig(), PreprocessConfig(**IMAGENET),
                PreprocessConfig(mean=(0.1, 0.9, 0.3), std=(0.7, 0.05, 1.9))):
        mean, std = np.asarray(cfg.mean, np.float32), np.asarray(cfg.std, np.float32)
        for arr in (np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3),
                    rng.integers(0, 256, (2, 37, 23, 3), dtype=np.uint8)):
            direct = np.moveaxis((arr.astype(np.float32) / np.float32(255.0) - mean) / std,
                                 -1, -3)
            np.testing.assert_array_equal(normalize(arr, cfg), direct)
            out = np.full(direct.shape, np.nan, np.float32)
            assert normalize(arr, cfg, out=out) is out
            np.testing.assert_array_equal(out, direct)
    with pytest.raises(ValueError, match="out must be float32"):
        normalize(np.zeros((4, 4, 3), np.uint8), PreprocessConfig(), out=np.zeros((3, 4, 5)))


def test_normalize() -> None:
    cfg = PreprocessConfig(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    arr = np.array([[[0, 255, 51]]], np.uint8)
    out = normalize(arr, cfg)
    assert out.shape == (3, 1, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], [-1.0, 3.0, 0.2], rtol=1e-6)
    batch = np.stack([arr, arr[..., ::-1]])
    nb = normalize(batch, cfg)
    assert nb.shape == (2, 3, 1, 1) and nb.flags.c_contiguous
    np.testing.assert_array_equal(nb[0], out)
    with pytest.raises(ValueError, match="uint8"):
        normalize(arr.astype(np.float32), cfg)
    with pytest.raises(ValueError):
        normalize(np.zeros((2, 2, 4), np.uint8), cfg)


def test_preprocess_batch_and_mode_check() -> None:
    cfg = PreprocessConfig(input_size=32)
    imgs = [photo_like(50, 40, seed=s) for s in range(3)]
    batch = preprocess(imgs, cfg)
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[1], preprocess_image(imgs[1], cfg))
    assert preprocess([], cfg).shape == (0, 3, 32, 32)
    with pytest.raises(ValueError, match="RGB"):
        preprocess_image(imgs[0].convert("L"), cfg)


def test_eval_path_with_jpeg_draft(tmp_path: Path) -> None:
    """decode with the config's draft size, then preprocess: close to decoding at full size."""
    cfg = PreprocessConfig(input_size=64)
    path = tmp_path / "big.jpg"
    path.write_bytes(encode(photo_like(1200, 900, seed=5), "JPEG", quality=92))
    drafted = decode_image(path, draft_size=cfg.draft_size).image
    assert drafted.size == (150, 113)  # DCT scale 1/8, both sides still >= 73
    full = decode_image(path).image
    a, b = preprocess_image(drafted, cfg), preprocess_image(full, cfg)
    assert a.shape == b.shape == (3, 64, 64)
    assert float(np.abs(a - b).mean()) < 0.05  # same picture, a slightly different decode


def test_real_photos_match_torchvision(shared_data: Path) -> None:
    """The same parity on a few real listing photos of different shapes."""
    with open(shared_data / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    picked = [r for r in rows if r["width"] != r["height"]][:: max(1, len(rows) // 8)][:8]
    cfg = PreprocessConfig(input_size=224, **IMAGENET)
    whole = dataclasses.replace(cfg, resize_crop_only=False)
    level = 1 / 255 / min(cfg.std)
    for row in picked:
        img = decode_image(shared_data / row["path"]).image
        ref = _torchvision_eval(img, cfg)
        diff = np.abs(preprocess_image(img, whole) - ref).max()
        assert float(diff) <= 1e-6, row["path"]
        region = np.abs(preprocess_image(img, cfg) - ref)
        assert float(region.max()) <= 3 * level + 1e-6, row["path"]
        assert float(region.mean()) <= 0.05 * level, row["path"]
