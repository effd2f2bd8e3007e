"""The views of a photo that an index stores and a query compares, so that a re-posted copy
still matches after the edits that move its content: a border or frame around it (a screenshot
of a listing, letterboxing, the photo pasted on a white or black canvas) and a crop.

- :func:`trim_borders` cuts uniform or nearly uniform margins (text lines on a plain margin,
  such as a price under a screenshot, count as margin). Index and query both use it: a
  photo's trimmed view is stored next to the photo, and a query's trimmed view is compared
  next to the query, so a framed copy matches its original whichever side had the frame.
- :func:`index_views`: the extra views stored per indexed photo: the trimmed photo (when
  anything was trimmed) and crops keeping :data:`CROP_AREA` of it (the centre and the four
  corners), so that a crop of the photo is compared with a crop of similar extent.
- :func:`query_views`: the extra views of a query: only the trimmed photo (when anything was
  trimmed), so a query without a frame costs no extra model run.

Every view is matched by its PDQ hash and its model embedding; a query's similarity to an
indexed photo is the best over both sides' views.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image

__all__ = ["CROP_AREA", "CROP_VIEWS", "index_views", "query_views", "trim_borders", "trim_box"]

CROP_AREA = 0.7
CROP_VIEWS = ("centre", "top_left", "top_right", "bottom_left", "bottom_right")
_SIDE = 256          # the margins are found on a copy at most this big
_TOLERANCE = 24      # a pixel within this (per channel, 0-255) of its line's median is plain
_PLAIN = 0.96        # a line with this share of plain pixels is margin
_TEXT_RUN = 0.15     # text on a margin: a run of other lines, at most this share of the
                     # side, between plain lines of one colour
_MAX_EDGE = 0.7      # never trim more than this share of a side from one edge
_MIN_TRIM = 0.02     # trimming less than this share of a side does not count
_MIN_AREA = 0.05     # a trimmed view keeps at least this share of the area
_MIN_CUT = 0.08      # and removes at least this share (less: no trimmed view)


def _lines(lines: NDArray[np.int16]) -> tuple[NDArray[np.float64], NDArray[np.int16]]:
    """Per line (lines: L x M x 3): the share of its pixels close to its median colour, and
    that colour."""
    med = np.median(lines, axis=1, keepdims=True)
    plain = np.abs(lines - med).max(axis=2) <= _TOLERANCE
    return plain.mean(axis=1), med[:, 0, :].astype(np.int16)


def _edge_cut(share: NDArray[np.float64], colour: NDArray[np.int16]) -> int:
    """How many lines to cut from the start of ``share`` (the plain share of each line,
    from the edge inwards; ``colour``: each line's median colour): every plain line, and
    text runs between plain lines. When the plain lines go on past the most one edge may
    lose (a photo on a plain background, inside a plain frame), the cut is at the last
    change of colour between plain lines (the frame's inner edge), if any."""
    n = len(share)
    limit = int(n * _MAX_EDGE)
    run = max(2, int(n * _TEXT_RUN))
    cut = i = 0
    step = 0  # the last line where the plain colour changed
    last_run = 0  # where the last run of text began
    while i < limit:
        if share[i] >= _PLAIN:
            if i >= 2 and share[i - 2] >= _PLAIN and \
                    np.abs(colour[i] - colour[i - 2]).max() > _TOLERANCE:
                step = i
            i += 1
            cut = i
            continue
        j = i
        while j < min(limit, i + run + 1) and share[j] < _PLAIN:
            j += 1
        # text on the margin: a short run between plain lines of the same colour
        if (j >= limit or share[j] < _PLAIN or i == 0
                or np.abs(colour[j] - colour[i - 1]).max() > _TOLERANCE):
            break
        last_run = i
        i = j
    else:  # plain (or text) up to the limit: cut at the frame's inner edge, if any
        cut = max(step, last_run)
    return cut if cut >= max(1, int(n * _MIN_TRIM)) else 0


def trim_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    """The box ``(left, top, right, bottom)`` of ``image`` without its uniform margins, or
    ``None`` when there is nothing (or too much) to trim."""
    w, h = image.size
    if w < 16 or h < 16:
        return None
    small = image.convert("RGB")
    if max(w, h) > _SIDE:
        f = _SIDE / max(w, h)
        small = small.resize((max(8, round(w * f)), max(8, round(h * f))),
                             Image.Resampling.BOX)
    a = np.asarray(small, dtype=np.int16)
    sh, sw = a.shape[:2]
    top, bottom, left, right = 0, sh, 0, sw
    # rows over the columns kept, then columns over the rows kept, each from the image's
    # edge, until neither moves: a frame's side margins do not change where its top and
    # bottom end, so a framed copy is trimmed as its original is
    for _ in range(4):
        before = (top, bottom, left, right)
        region = a[:, left:right]
        if region.shape[1] < 8:
            return None
        rows, rc = _lines(region)
        top, bottom = _edge_cut(rows, rc), sh - _edge_cut(rows[::-1], rc[::-1])
        region = a[top:bottom]
        if region.shape[0] < 8:
            return None
        cols, cc = _lines(region.transpose(1, 0, 2))
        left, right = _edge_cut(cols, cc), sw - _edge_cut(cols[::-1], cc[::-1])
        if (top, bottom, left, right) == before:
            break
    if (top, bottom, left, right) == (0, sh, 0, sw):
        return None
    kept = (bottom - top) * (right - left) / (sh * sw)
    if not _MIN_AREA <= kept <= 1 - _MIN_CUT:
        return None
    fx, fy = w / sw, h / sh
    return (round(left * fx), round(top * fy), round(right * fx), round(bottom * fy))


def trim_borders(image: Image.Image) -> Image.Image:
    """``image`` without its uniform margins (the image itself when it has none)."""
    box = trim_box(image)
    return image if box is None else image.crop(box)


def _crops(image: Image.Image) -> list[Image.Image]:
    w, h = image.size
    cw, ch = max(1, round(w * CROP_AREA ** 0.5)), max(1, round(h * CROP_AREA ** 0.5))
    x = ((w - cw) // 2, 0, w - cw, 0, w - cw)
    y = ((h - ch) // 2, 0, 0, h - ch, h - ch)
    return [image.crop((x[i], y[i], x[i] + cw, y[i] + ch)) for i in range(len(CROP_VIEWS))]


def index_views(image: Image.Image, *, crops: bool = True) -> list[Image.Image]:
    """The extra views stored for an indexed photo: its trimmed view (when it has margins),
    then (``crops``) the :data:`CROP_VIEWS` crops of the trimmed photo."""
    trimmed = trim_borders(image)
    out = [trimmed] if trimmed is not image else []
    if crops:
        out += _crops(trimmed)
    return out


def query_views(image: Image.Image) -> list[Image.Image]:
    """The extra views of a query photo: its trimmed view, when it has margins."""
    trimmed = trim_borders(image)
    return [trimmed] if trimmed is not image else []
