"""Explanations: where in a photo the model saw a group (class activation maps), in numpy.

A wildvision model ends ``features`` (the last convolution's ``C x h x w`` map) ->
global average pool -> ``embedding`` -> linear head -> ``logits``
(:func:`wildvision.head.head_weights`). The logits are therefore exactly the average over the
``h x w`` positions of ``head(features[:, y, x])``, and each position's share of a score is
``w · features[:, y, x]`` for the score's gradient ``w`` with respect to the embedding.

The score explained for a group ``g`` is its calibrated log-odds,
``log P(g) - log P(not g)``: its gradient is ``W̄_g - W̄_rest``, the probability-weighted mean
of the head rows of ``g``'s labels minus that of every other label. So the map shows evidence
for the group *against the alternatives the model weighed* (ivory rather than ceramics), it
does not fade when ``P(g)`` saturates near 1, and it reduces to the classic CAM of a
two-label model. Negative evidence is clipped (as Grad-CAM does) and the map is scaled to
``[0, 1]``.

The map is then carried back through the preprocessing (:mod:`wildvision.preprocess`:
resize, centre crop or letterbox) onto the whole original photo, at a low resolution (about
two cells per feature-map cell); what the crop cut off is 0 and outside :attr:`Explanation.box`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .errors import ConfigError
from .preprocess import PreprocessConfig

__all__ = [
    "Explanation",
    "group_direction",
    "heatmap_on_image",
    "input_transform",
    "overlay_png",
    "render_overlay",
]

# Longest side of a heatmap grid, in cells.
_MAX_GRID = 128


@dataclass(frozen=True, eq=False)
class Explanation:
    """Where the model saw ``group`` in one photo.

    Attributes:
        group: the explained group (by default the most probable flaggable group).
        probability: the group's calibrated probability.
        heatmap: float32 ``(rows, cols)`` in ``[0, 1]``, covering the whole photo as it is
            displayed (EXIF orientation applied), row 0 at the top; about two cells per
            feature-map cell. Cells outside ``box`` (cut off by the centre crop) are 0.
        image_size: ``(width, height)`` of the displayed photo, in pixels.
        box: ``(left, top, right, bottom)`` of the region the model saw, in ``image_size``
            pixels.
    """

    group: str
    probability: float
    heatmap: np.ndarray
    image_size: tuple[int, int]
    box: tuple[float, float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "probability": round(self.probability, 6),
            "image_size": list(self.image_size),
            "box": [round(v, 2) for v in self.box],
            "heatmap": np.round(self.heatmap, 3).tolist(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Explanation:
        """Read back :meth:`to_dict` (e.g. an ``explanation`` of a results JSONL line).

        Raises:
            ConfigError: malformed data.
        """
        try:
            heat = np.asarray(data["heatmap"], dtype=np.float32)
            size = (int(data["image_size"][0]), int(data["image_size"][1]))
            box = tuple(float(v) for v in data["box"])
            out = cls(str(data["group"]), float(data.get("probability", 0.0)), heat, size,
                      box)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ConfigError(f"not an explanation: {e}") from e
        if heat.ndim != 2 or heat.size == 0 or len(box) != 4 or min(size) < 1:
            raise ConfigError("not an explanation: heatmap must be 2-D, box 4 numbers")
        return out


def group_direction(weight: np.ndarray, probabilities: np.ndarray, in_group: np.ndarray
                    ) -> np.ndarray:
    """The gradient direction of a group's log-odds with respect to the embedding.

    Args:
        weight: the head, ``(labels, dim)``.
        probabilities: ``(N, labels)`` calibrated label probabilities.
        in_group: ``(N, labels)`` or ``(labels,)`` booleans: the labels of the explained group.

    Returns:
        ``(N, dim)``: ``W̄_g - W̄_rest`` per row (``W̄_g`` alone when every label is in ``g``).
    """
    p = np.asarray(probabilities, np.float64)
    mask = np.broadcast_to(np.asarray(in_group, bool), p.shape)
    tiny = np.finfo(np.float64).tiny
    pin = np.where(mask, p, 0.0)
    pout = np.where(mask, 0.0, p)
    pin = pin / np.maximum(pin.sum(axis=1, keepdims=True), tiny)
    sout = pout.sum(axis=1, keepdims=True)
    pout = np.where(sout > 0, pout / np.maximum(sout, tiny), 0.0)
    return ((pin - pout) @ np.asarray(weight, np.float64)).astype(np.float32)  # type: ignore[no-any-return]


def activation_maps(features: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """``(N, C, h, w)`` features and ``(N, C)`` directions -> ``(N, h, w)`` maps in ``[0, 1]``
    (negative evidence clipped, each map divided by its maximum; all-zero when none)."""
    cams = np.einsum("nc,nchw->nhw", directions, np.asarray(features, np.float32))
    np.maximum(cams, 0.0, out=cams)
    peak = cams.reshape(len(cams), -1).max(axis=1, initial=0.0)
    scale = np.where(peak > 0, 1.0 / np.maximum(peak, 1e-30), 0.0).astype(np.float32)
    return cams * scale[:, None, None]  # type: ignore[no-any-return]


def input_transform(cfg: PreprocessConfig, size: tuple[int, int]
                    ) -> tuple[float, float, float, float]:
    """How :func:`~wildvision.preprocess.resize_crop` maps an image of ``size`` = (width,
    height) onto the model input: ``x_in = x * sx + tx``, ``y_in = y * sy + ty`` in continuous
    pixel coordinates. Returns ``(sx, sy, tx, ty)``."""
    w, h = size
    s = cfg.input_size
    if cfg.resize_mode == "squash":
        return s / w, s / h, 0.0, 0.0
    if cfg.resize_mode == "letterbox":
        scale = s / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        return nw / w, nh / h, float((s - nw) // 2), float((s - nh) // 2)
    short = cfg.resize_size  # center_crop: the arithmetic of resize_crop
    if w <= h:
        nw, nh = short, int(short * h / w)
    else:
        nw, nh = int(short * w / h), short
    left = round((nw - s) / 2.0)
    top = round((nh - s) / 2.0)
    return nw / w, nh / h, -float(left), -float(top)


def displayed_size(decoded_size: tuple[int, int], stored_size: tuple[int, int]
                   ) -> tuple[int, int]:
    """The full-resolution displayed size of a photo: ``stored_size`` (before EXIF rotation),
    turned when the decoded image (orientation applied, maybe draft-reduced) is turned."""
    w, h = decoded_size
    sw, sh = stored_size
    same = abs(w / h - sw / sh)
    turned = abs(w / h - sh / sw)
    return (sh, sw) if turned < same else (sw, sh)


def heatmap_on_image(cam: np.ndarray, cfg: PreprocessConfig, decoded_size: tuple[int, int],
                     image_size: tuple[int, int] | None = None
                     ) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Carry a feature-grid map (covering the model input) back onto the whole photo.

    Args:
        cam: ``(h, w)`` map over the ``input_size`` square model input.
        cfg: the preprocessing that made the input.
        decoded_size: (width, height) of the image given to the preprocessing.
        image_size: (width, height) of the displayed full-resolution photo (default:
            ``decoded_size``); the decoded image may be a draft-reduced copy of it.

    Returns:
        ``(heatmap, box)``: a ``(rows, cols)`` float32 grid over the whole photo (bilinear
        from the feature grid, 0 where the model saw nothing) and the region the model saw,
        in ``image_size`` pixels.
    """
    fh, fw = cam.shape
    w, h = decoded_size
    W, H = image_size or decoded_size
    sx, sy, tx, ty = input_transform(cfg, decoded_size)
    s = cfg.input_size
    # About two grid cells per feature cell, keeping the photo's aspect ratio.
    cols = 2.0 * w * sx * fw / s
    rows = 2.0 * h * sy * fh / s
    shrink = min(1.0, _MAX_GRID / max(cols, rows))
    gw = max(1, round(cols * shrink))
    gh = max(1, round(rows * shrink))

    def axis(n_out: int, extent: int, scale: float, shift: float, n_feat: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        centres = (np.arange(n_out) + 0.5) * extent / n_out  # decoded-image pixels
        x_in = centres * scale + shift  # model-input pixels
        inside = (x_in >= 0) & (x_in <= s)
        f = np.clip(x_in * n_feat / s - 0.5, 0, n_feat - 1)
        lo = np.floor(f).astype(np.int64)
        hi = np.minimum(lo + 1, n_feat - 1)
        return lo, hi, (f - lo).astype(np.float32), inside

    x0, x1, ax, xin = axis(gw, w, sx, tx, fw)
    y0, y1, ay, yin = axis(gh, h, sy, ty, fh)
    c = np.asarray(cam, np.float32)
    top = c[y0][:, x0] * (1 - ax) + c[y0][:, x1] * ax
    bottom = c[y1][:, x0] * (1 - ax) + c[y1][:, x1] * ax
    grid = top * (1 - ay)[:, None] + bottom * ay[:, None]
    grid *= (yin[:, None] & xin[None, :])
    kx, ky = W / w, H / h
    box = (
        max(0.0, -tx / sx) * kx, max(0.0, -ty / sy) * ky,
        min(float(w), (s - tx) / sx) * kx, min(float(h), (s - ty) / sy) * ky,
    )
    return grid.astype(np.float32), box


def _colormap(values: np.ndarray) -> np.ndarray:
    """``[0, 1]`` -> uint8 RGB: dark purple -> red -> yellow (a perceptually ordered ramp)."""
    anchors = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]],
                       np.float32)
    pos = np.clip(values, 0, 1) * (len(anchors) - 1)
    lo = np.minimum(np.floor(pos).astype(np.int64), len(anchors) - 2)
    t = (pos - lo)[..., None]
    return (anchors[lo] * (1 - t) + anchors[lo + 1] * t).astype(np.uint8)  # type: ignore[no-any-return]


def render_overlay(image: Image.Image, explanation: Explanation, *, max_side: int | None = 512,
                   alpha: float = 0.6) -> Image.Image:
    """The photo with the heatmap laid over it (hot = where the model saw the group).

    Args:
        image: the photo as displayed (EXIF orientation applied), any size: the heatmap is
            stretched over it, so a thumbnail works.
        explanation: from a prediction (``explain=True``).
        max_side: shrink the result to at most this many pixels per side (``None``: keep).
        alpha: opacity of the hottest cells; cold cells stay clear.

    Returns:
        An RGB image.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    img = image.convert("RGB")
    if max_side is not None and max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    heat_img = Image.fromarray(np.asarray(explanation.heatmap, np.float32), mode="F")
    heat = np.asarray(heat_img.resize(img.size, Image.Resampling.BILINEAR), np.float32)
    heat = np.clip(heat, 0.0, 1.0)
    base = np.asarray(img, np.float32)
    a = (alpha * heat)[..., None]
    out = base * (1 - a) + _colormap(heat).astype(np.float32) * a
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")


def overlay_png(image: Image.Image, explanation: Explanation, *, max_side: int | None = 512,
                alpha: float = 0.6) -> bytes:
    """:func:`render_overlay` encoded as PNG bytes."""
    buf = io.BytesIO()
    render_overlay(image, explanation, max_side=max_side, alpha=alpha).save(
        buf, format="PNG", optimize=True)
    return buf.getvalue()


def top_flaggable(groups: Sequence[str], flaggable: Sequence[str], gprobs: np.ndarray
                  ) -> str | None:
    """The most probable flaggable group of a row of group probabilities (``None`` when the
    model has no flaggable group)."""
    best: str | None = None
    best_p = -1.0
    for gi, g in enumerate(groups):
        if g in flaggable and float(gprobs[gi]) > best_p:
            best, best_p = g, float(gprobs[gi])
    return best
