"""PDQ perceptual hashes (Meta's open-source photo hash, the format trust-and-safety teams share).

Hashes come from the ``pdqhash`` package, which compiles Meta's reference C++ code
(ThreatExchange ``pdq/cpp``). A hash is 256 bits, stored as 32 bytes in the reference's bit
order, so that :func:`to_hex` gives exactly the 64-hex-digit string the reference tools
(``pdq-photo-hasher``, ThreatExchange, Hasher-Matcher-Actioner) print and read. Quality is the
reference's 0-100 gradient score; hashes under :data:`MIN_QUALITY` are not used for matching
(flat or nearly empty images hash to unreliable bits), as the reference tools recommend.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from ..data.phash import popcount64
from ..errors import InvalidImageError, MatchIndexError, MissingExtraError

__all__ = [
    "HASH_BYTES",
    "MIN_QUALITY",
    "from_hex",
    "hamming",
    "pdq_hash",
    "pdq_hash_array",
    "to_hex",
]

HASH_BYTES = 32
MIN_QUALITY = 50



def _pdqhash() -> Any:
    try:
        import pdqhash
    except ImportError as e:
        raise MissingExtraError("pdqhash", "match", "PDQ hashes") from e
    return pdqhash


def pdq_hash_array(rgb: NDArray[np.uint8]) -> tuple[bytes, int]:
    """PDQ hash and quality of an HxWx3 uint8 RGB array.

    Returns:
        (32 hash bytes, quality 0-100).

    Raises:
        InvalidImageError: not an HxWx3 uint8 array, or smaller than 2x2 pixels.
    """
    a = np.asarray(rgb)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise InvalidImageError(f"PDQ needs an HxWx3 uint8 RGB array, got {a.dtype} {a.shape}")
    if a.shape[0] < 2 or a.shape[1] < 2:
        raise InvalidImageError(f"image of {a.shape[1]}x{a.shape[0]} pixels is too small to hash")
    bits, quality = _pdqhash().compute(np.ascontiguousarray(a))
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes(), int(quality)


def pdq_hash(image: Image.Image, *, mirror: bool = False) -> tuple[bytes, int]:
    """PDQ hash and quality of a PIL image (converted to RGB); ``mirror``: of its left-right
    mirror image."""
    rgb = np.asarray(image.convert("RGB"))
    if mirror:
        rgb = rgb[:, ::-1]
    return pdq_hash_array(rgb)


def to_hex(h: bytes) -> str:
    """The 64-digit hex form the reference tools use."""
    if len(h) != HASH_BYTES:
        raise MatchIndexError(f"a PDQ hash has {HASH_BYTES} bytes, got {len(h)}")
    return h.hex()


def from_hex(text: str) -> bytes:
    """Parse a 64-digit hex PDQ hash.

    Raises:
        MatchIndexError: not 64 hex digits.
    """
    t = text.strip().lower()
    if len(t) != 2 * HASH_BYTES:
        raise MatchIndexError(f"a PDQ hash is 64 hex digits, got {len(t)}: {text[:80]!r}")
    try:
        return bytes.fromhex(t)
    except ValueError:
        raise MatchIndexError(f"not a hex PDQ hash: {text[:80]!r}") from None


def hamming(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> NDArray[np.int64]:
    """Hamming distances between rows of two (..., 32) uint8 arrays (broadcast)."""
    x = np.bitwise_xor(np.asarray(a, np.uint8), np.asarray(b, np.uint8))  # a new array
    out: NDArray[np.int64] = popcount64(x.view(np.uint64)).sum(axis=-1, dtype=np.int64)
    return out
