"""The one preprocessing of wildvision, shared by inference (ONNX and torch), training
evaluation, training augmentation (which only adds random steps before :func:`normalize`)
and the benchmark. Pure numpy + Pillow.

Its parameters live in :class:`PreprocessConfig`, stored in every model card.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .errors import ConfigError

__all__ = ["PreprocessConfig", "normalize", "preprocess", "preprocess_image", "resize_crop"]

_INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
_RESIZE_MODES = ("center_crop", "squash", "letterbox")
# center_crop resizes the whole image (exactly as torchvision does) up to this many times the
# crop area; beyond that (extreme aspect ratios) it resizes only the cropped region.
_MAX_FULL_RESIZE = 8


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes the model's input tensor.

    Attributes:
        input_size: side of the square model input, in pixels.
        resize_mode: ``center_crop`` (resize the shorter side to ``input_size / crop_pct``, then
            crop the centre, as timm's eval transform), ``squash`` (resize to a square, ignoring
            aspect) or ``letterbox`` (fit inside, pad with ``pad_value``).
        crop_pct: fraction of the resized shorter side kept by ``center_crop``.
        interpolation: Pillow resampling filter name.
        mean, std: per-channel normalisation of values scaled to [0, 1].
        jpeg_draft: decode JPEGs at the cheapest DCT scale still at least the resize size
            (see :func:`wildvision.imaging.decode_image`); applied in training too.
        pad_value: RGB fill for ``letterbox``.
        resize_crop_only: ``center_crop`` resizes only the source region the crop keeps
            (``True``, the default for new models: about half the resize work on listing
            photos) instead of the whole image before cropping (``False``: bit-identical to
            torchvision's ``Resize`` + ``CenterCrop``). The two differ by a few grey levels on
            about 2% of the pixels. A card without this key was made before it existed and
            reads as ``False``, the way its model was trained.
    """

    input_size: int = 224
    resize_mode: str = "center_crop"
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    jpeg_draft: bool = True
    pad_value: tuple[int, int, int] = field(default=(0, 0, 0))
    resize_crop_only: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.input_size, int) or not 8 <= self.input_size <= 4096:
            raise ConfigError(f"input_size must be an int in [8, 4096], got {self.input_size!r}")
        if self.resize_mode not in _RESIZE_MODES:
            raise ConfigError(
                f"resize_mode must be one of {_RESIZE_MODES}, got {self.resize_mode!r}"
            )
        if not 0.1 <= float(self.crop_pct) <= 1.0:
            raise ConfigError(f"crop_pct must be in [0.1, 1], got {self.crop_pct!r}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ConfigError(
                f"interpolation must be one of {sorted(_INTERPOLATIONS)}, "
                f"got {self.interpolation!r}"
            )
        for key in ("mean", "std"):
            value = getattr(self, key)
            if len(value) != 3:
                raise ConfigError(f"{key} must have 3 values, got {value!r}")
            object.__setattr__(self, key, tuple(float(v) for v in value))
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std must be positive, got {self.std!r}")
        object.__setattr__(self, "pad_value", tuple(int(v) for v in self.pad_value))

    @property
    def resize_size(self) -> int:
        """Shorter-side size before the centre crop (timm: ``floor(size / crop_pct)``)."""
        if self.resize_mode == "center_crop":
            return math.floor(self.input_size / self.crop_pct)
        return self.input_size

    @property
    def draft_size(self) -> tuple[int, int] | None:
        """The size to ask the JPEG decoder for, or ``None`` when draft decoding is off."""
        if not self.jpeg_draft:
            return None
        return (self.resize_size, self.resize_size)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["pad_value"] = list(self.pad_value)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ConfigError(
                f"unknown preprocess keys {sorted(unknown)}; known: {sorted(known)}"
            )
        kwargs = dict(data)
        # cards written before the option existed were made with the whole-image resize
        kwargs.setdefault("resize_crop_only", False)
        for key in ("mean", "std", "pad_value"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


def resize_crop(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """The geometric part: resize (and crop or pad) an RGB image to ``input_size`` square."""
    size = cfg.input_size
    resample = _INTERPOLATIONS[cfg.interpolation]
    w, h = img.size
    if cfg.resize_mode == "squash":
        return img.resize((size, size), resample)
    if cfg.resize_mode == "letterbox":
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = Image.new("RGB", (size, size), cfg.pad_value)
        canvas.paste(img.resize((nw, nh), resample), ((size - nw) // 2, (size - nh) // 2))
        return canvas
    # center_crop: the geometry of torchvision Resize(int) + CenterCrop (timm's eval transform)
    short = cfg.resize_size
    if w <= h:
        nw, nh = short, int(short * h / w)
    else:
        nw, nh = int(short * w / h), short
    left = round((nw - size) / 2.0)
    top = round((nh - size) / 2.0)
    crop = (left, top, left + size, top + size)
    if (nw, nh) == (w, h):
        return img.crop(crop)
    if not cfg.resize_crop_only and nw * nh <= _MAX_FULL_RESIZE * size * size:
        return img.resize((nw, nh), resample).crop(crop)
    # Resize only the source region the crop keeps, plus the filter's reach: the default
    # (resize_crop_only), and always for an extreme aspect ratio (a 1x100000 strip would be
    # resized to 256x25600000 first, gigabytes). The output pixels sample the same source
    # positions as the whole-image resize, but Pillow gets the box in float32 and computes
    # the filter weights from it, so some pixels differ by a few grey levels.
    sx, sy = w / nw, h / nh
    x0, x1 = left * sx, min(w, (left + size) * sx)
    y0, y1 = top * sy, min(h, (top + size) * sy)
    mx, my = math.ceil(3 * max(sx, 1.0)) + 2, math.ceil(3 * max(sy, 1.0)) + 2  # lanczos: 3
    c0, c1 = max(0, math.floor(x0) - mx), min(w, math.ceil(x1) + mx)
    r0, r1 = max(0, math.floor(y0) - my), min(h, math.ceil(y1) + my)
    # Cropping first also keeps the box coordinates small: Pillow holds them in float32.
    region = img.crop((c0, r0, c1, r1))
    return region.resize((size, size), resample, box=(x0 - c0, y0 - r0, x1 - c0, y1 - r0))


@functools.lru_cache(maxsize=32)
def _normalize_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: ``(v / 255 - mean[c]) / std[c]`` for every uint8 value ``v``, in the
    float32 arithmetic a direct computation does (element by element, so a lookup in this table
    gives bit-identical results, several times faster)."""
    v = np.arange(256, dtype=np.float32) / np.float32(255.0)
    m = np.asarray(mean, dtype=np.float32)[:, None]
    s = np.asarray(std, dtype=np.float32)[:, None]
    table = np.ascontiguousarray((v[None, :] - m) / s, dtype=np.float32)
    table.flags.writeable = False
    return table


def normalize(array: np.ndarray, cfg: PreprocessConfig, out: np.ndarray | None = None
              ) -> np.ndarray:
    """uint8 HxWx3 (or NxHxWx3) RGB -> float32 CxHxW (or NxCxHxW), ``(x/255 - mean) / std``.

    Args:
        array: the uint8 RGB pixels.
        cfg: mean and std come from here.
        out: a float32 array of the output's shape to write into (e.g. a row of a batch);
            a new one when ``None``.
    """
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise ValueError(f"expected uint8 ...x3 RGB, got {array.dtype} {array.shape}")
    shape = (*array.shape[:-3], 3, *array.shape[-3:-1])
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {shape}, got {out.dtype} {out.shape}")
    table = _normalize_table(cfg.mean, cfg.std)
    for c in range(3):  # a gather per channel ("clip": uint8 indices are always in range)
        np.take(table[c], array[..., c], out=out[..., c, :, :], mode="clip")
    return out


def preprocess_image(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """One RGB image -> float32 CxHxW model input."""
    if img.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {img.mode!r}")
    return normalize(np.asarray(resize_crop(img, cfg)), cfg)


def preprocess(images: Sequence[Image.Image], cfg: PreprocessConfig) -> np.ndarray:
    """RGB images -> float32 NxCxHxW batch."""
    if not images:
        return np.zeros((0, 3, cfg.input_size, cfg.input_size), dtype=np.float32)
    return np.stack([preprocess_image(im, cfg) for im in images])
