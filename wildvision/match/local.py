"""Local features and geometric verification: the check that tells a re-posted copy of an
indexed photo (cropped, rotated, with a phone number written on it, resized) from another
photo of the same kind of thing that only looks alike.

A global embedding puts a cropped or rotated copy close to its original, but a different
carving or cheetah photographed the same way can be just as close, so a similarity threshold
low enough to catch the edited copies also matches look-alikes. Copy-detection systems settle
it the way image retrieval always has: keypoints with binary descriptors (ORB, in OpenCV),
matched with Lowe's ratio test, then RANSAC fitting one similarity transform (rotation,
scale, shift). A copy has many matches that the same transform explains; a look-alike has
few, scattered ones.

- :func:`local_source`: the grey-level copy (at most :data:`SIDE` pixels on its long side)
  both sides detect keypoints on; the classifier keeps it with a photo's keys.
- :func:`local_features`: up to :data:`INDEX_KEYPOINTS` (index) or :data:`QUERY_KEYPOINTS`
  (query: more, because text and borders drawn on a copy take some) keypoints.
- :func:`verify`: the inliers of the best similarity transform between two feature sets,
  and :func:`accepted`: whether that makes the pair a copy (:data:`MIN_INLIERS` inliers that
  are at least :data:`MIN_INLIER_SHARE` of the indexed keypoints inside the shared area, at a
  plausible scale).

An index stores each photo's keypoints (positions and descriptors, never pixels) in fixed
arrays of :data:`INDEX_KEYPOINTS` rows; what they reveal is discussed in docs/match.md.
OpenCV (``opencv-python-headless``) comes with the ``[match]`` extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from ..errors import MissingExtraError
from .views import trim_borders

__all__ = [
    "INDEX_KEYPOINTS",
    "MIN_INLIERS",
    "MIN_INLIER_SHARE",
    "QUERY_KEYPOINTS",
    "SIDE",
    "LocalFeatures",
    "Verification",
    "accepted",
    "local_features",
    "local_source",
    "verify",
]

SIDE = 512              # keypoints are found on a grey copy at most this big
INDEX_KEYPOINTS = 256   # stored per indexed photo (36 bytes each)
QUERY_KEYPOINTS = 1000  # found on a query
RATIO = 0.8             # Lowe's ratio test on the two nearest descriptors
RANSAC_PX = 2.0         # an inlier lies within this many pixels of where the transform puts it
MIN_INLIERS = 15        # a copy: at least this many inliers
MIN_INLIER_SHARE = 0.15  # that are at least this share of the indexed keypoints in the overlap
SCALE_RANGE = (0.25, 4.0)  # and a scale between the two grey copies in this range
POINT_SCALE = 64        # positions are stored as uint16 in 1/64 pixel


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - the [match] extra installs it
        raise MissingExtraError("opencv-python-headless", "match",
                                "local-feature verification") from e
    return cv2


@dataclass(frozen=True)
class LocalFeatures:
    """Keypoints of one photo: positions (K x 2, pixels of its grey copy), ORB descriptors
    (K x 32 bytes) and the grey copy's size (width, height)."""

    points: NDArray[np.float32]
    descriptors: NDArray[np.uint8]
    size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.points)


@dataclass(frozen=True)
class Verification:
    """The best similarity transform between a query and an indexed photo: ``inliers``
    (matched keypoint pairs it explains), ``share`` (inliers / indexed keypoints that fall
    inside the query), ``scale`` and ``angle`` (degrees) from query to indexed photo."""

    inliers: int = 0
    share: float = 0.0
    scale: float = 0.0
    angle: float = 0.0


def local_source(image: Image.Image) -> NDArray[np.uint8]:
    """The grey-level copy keypoints are found on: at most :data:`SIDE` pixels on its long
    side (never enlarged), so both sides see photos at comparable scales."""
    grey = image.convert("L")
    s = SIDE / max(grey.size)
    if s < 1:
        grey = grey.resize((max(1, round(grey.width * s)), max(1, round(grey.height * s))),
                           Image.Resampling.BILINEAR)
    return np.asarray(grey, np.uint8)


def local_features(source: NDArray[np.uint8] | Image.Image, n: int = INDEX_KEYPOINTS
                   ) -> LocalFeatures:
    """Up to ``n`` ORB keypoints of ``source`` (a :func:`local_source` array, or a photo)."""
    cv2 = _cv2()
    grey = local_source(source) if isinstance(source, Image.Image) else source
    h, w = grey.shape[:2]
    kp, des = cv2.ORB_create(nfeatures=n).detectAndCompute(np.ascontiguousarray(grey), None)
    if des is None or not kp:
        return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8), (w, h))
    pts = np.array([k.pt for k in kp], np.float32).reshape(-1, 2)
    return LocalFeatures(pts, np.asarray(des, np.uint8), (w, h))


def verify(query: LocalFeatures, ref: LocalFeatures) -> Verification:
    """Fit one similarity transform (RANSAC) from ``query``'s keypoints to ``ref``'s."""
    if len(query) < 5 or len(ref) < 5:
        return Verification()
    cv2 = _cv2()
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(query.descriptors, ref.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
    if len(good) < 4:
        return Verification()
    src = query.points[[g.queryIdx for g in good]]
    dst = ref.points[[g.trainIdx for g in good]]
    m, inl = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC,
                                         ransacReprojThreshold=RANSAC_PX)
    if m is None or inl is None or abs(float(np.linalg.det(m[:, :2]))) < 1e-9:
        return Verification()
    inliers = int(inl.sum())
    back = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))[:2]
    p = ref.points @ back[:, :2].T + back[:, 2]  # indexed keypoints in the query's frame
    w, h = query.size
    inside = int(((p[:, 0] >= 0) & (p[:, 0] < w) & (p[:, 1] >= 0) & (p[:, 1] < h)).sum())
    return Verification(inliers, inliers / max(1, inside), float(np.hypot(m[0, 0], m[1, 0])),
                        float(np.degrees(np.arctan2(m[1, 0], m[0, 0]))))


def accepted(v: Verification, min_inliers: int = MIN_INLIERS) -> bool:
    """Whether a verification makes the pair a copy."""
    return (v.inliers >= min_inliers and v.share >= MIN_INLIER_SHARE
            and SCALE_RANGE[0] <= v.scale <= SCALE_RANGE[1])


# -- the index's fixed-size arrays ---------------------------------------------------------
def pack(features: LocalFeatures, k: int = INDEX_KEYPOINTS
         ) -> tuple[NDArray[np.uint16], NDArray[np.uint8], int, tuple[int, int]]:
    """``features`` as one row of the index arrays: positions (k x 2, uint16 in 1/64 px),
    descriptors (k x 32), how many are real, and the grey copy's size."""
    n = min(k, len(features))
    pts = np.zeros((k, 2), np.uint16)
    des = np.zeros((k, 32), np.uint8)
    pts[:n] = np.clip(np.round(features.points[:n] * POINT_SCALE), 0, 65535)
    des[:n] = features.descriptors[:n]
    return pts, des, n, features.size


NO_KEYPOINTS: tuple[Any, ...] = (None, None, 0, (0, 0))  # a stack() row: no keypoints


def index_row(image: Image.Image, k: int = INDEX_KEYPOINTS
              ) -> tuple[NDArray[np.uint16], NDArray[np.uint8], int, tuple[int, int]]:
    """What an index stores for a photo: :func:`pack` of the keypoints of the photo without
    its border (a copy's keypoints are checked against them)."""
    return pack(local_features(trim_borders(image), k), k)


def stack(rows: list[tuple[Any, ...]], k: int = INDEX_KEYPOINTS) -> dict[str, NDArray[Any]]:
    """:func:`pack` rows as the index's local-feature arrays (``local_points``,
    ``local_descriptors``, ``local_count``, ``local_size``); a row of count 0 (an entry
    without keypoints: :data:`NO_KEYPOINTS`) stays zeros."""
    out: dict[str, NDArray[Any]] = {
        "local_points": np.zeros((len(rows), k, 2), np.uint16),
        "local_descriptors": np.zeros((len(rows), k, 32), np.uint8),
        "local_count": np.array([r[2] for r in rows], np.uint16),
        "local_size": np.array([r[3] for r in rows], np.uint16).reshape(-1, 2)}
    for j, (pts, des, n, _) in enumerate(rows):
        if n:
            out["local_points"][j] = pts
            out["local_descriptors"][j] = des
    return out


def unpack(points: NDArray[np.uint16], descriptors: NDArray[np.uint8], count: int,
           size: NDArray[Any]) -> LocalFeatures:
    """One index row back as :class:`LocalFeatures`."""
    n = int(count)
    return LocalFeatures((points[:n] / POINT_SCALE).astype(np.float32), descriptors[:n],
                         (int(size[0]), int(size[1])))
