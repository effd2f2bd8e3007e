"""A 64-bit DCT perceptual hash in numpy, Hamming distances, and fast near-duplicate search.

The hash (the classic "pHash"): greyscale, resize to 32x32, 2-D DCT-II, keep the 8x8
lowest frequencies, one bit per coefficient: above their median or not. Re-encoding,
resizing, mild colour changes and a slight re-crop move only a few of the 64 bits; unrelated
photos differ in about 32.

Near-duplicate pairs (Hamming distance <= ``t``) are found by multi-index hashing: split the
64 bits into ``t + 1`` chunks; by the pigeonhole principle two hashes within distance ``t``
agree exactly on at least one chunk, so only hashes sharing a chunk value are compared. The
result is exact (the same pairs as comparing every pair), just much faster on large sets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

__all__ = [
    "HASH_BITS",
    "PHASH_DRAFT_SIZE",
    "hamming",
    "hamming_matrix",
    "hashes_to_array",
    "hex_to_int",
    "near_pairs",
    "near_pairs_bruteforce",
    "phash",
    "phash_hex",
    "popcount64",
]

HASH_BITS = 64
_IMG = 32  # side of the greyscale thumbnail the DCT runs on
_LOW = 8  # side of the low-frequency block kept (8x8 = 64 bits)
# JPEGs are decoded at the cheapest DCT scale still at least this size (see decode_image):
# the hash only needs a 32x32 thumbnail, and draft decoding makes indexing several times faster.
PHASH_DRAFT_SIZE = (64, 64)


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``D`` such that ``D @ x`` is the DCT of column vector ``x``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d: np.ndarray = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0, :] = np.sqrt(1.0 / n)
    return d


_DCT = _dct_matrix(_IMG)
_DCT_LOW = np.ascontiguousarray(_DCT[:_LOW])  # only the rows that produce the kept block
_BIT_WEIGHTS = (np.uint64(1) << np.arange(HASH_BITS - 1, -1, -1, dtype=np.uint64))


def phash(image: Image.Image) -> int:
    """The 64-bit perceptual hash of a PIL image, as an unsigned int.

    Args:
        image: any PIL image (converted to greyscale here).

    Returns:
        An int in ``[0, 2**64)``; bit 63 is the lowest (DC) frequency.

    Example:
        >>> from PIL import Image
        >>> img = Image.linear_gradient("L").convert("RGB")
        >>> phash(img) == phash(img.resize((128, 128)))
        True
    """
    grey = image.convert("L") if image.mode != "L" else image
    small = grey.resize((_IMG, _IMG), Image.Resampling.LANCZOS)
    pixels = np.asarray(small, dtype=np.float64)
    low = _DCT_LOW @ pixels @ _DCT_LOW.T  # the 8x8 low-frequency corner of the 2-D DCT
    bits = (low > np.median(low)).ravel()
    return int(np.dot(bits.astype(np.uint64), _BIT_WEIGHTS))


def phash_hex(image: Image.Image) -> str:
    """:func:`phash` as 16 lower-case hex characters (the manifest's ``phash`` column)."""
    return f"{phash(image):016x}"


def hex_to_int(value: str) -> int:
    """Parse a 16-hex-character hash.

    Raises:
        ValueError: not a 64-bit hex string.
    """
    if len(value) != 16:
        raise ValueError(f"perceptual hash must be 16 hex characters, got {value!r}")
    return int(value, 16)


def hamming(a: int | str, b: int | str) -> int:
    """Hamming distance between two 64-bit hashes (ints or hex strings)."""
    x = hex_to_int(a) if isinstance(a, str) else a
    y = hex_to_int(b) if isinstance(b, str) else b
    return (x ^ y).bit_count()


def hashes_to_array(hashes: Iterable[int | str]) -> np.ndarray:
    """Hashes (ints or hex strings) as a ``uint64`` array."""
    return np.array(
        [hex_to_int(h) if isinstance(h, str) else h for h in hashes], dtype=np.uint64
    )


_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount64(x: np.ndarray) -> np.ndarray:
    """Number of set bits of each element of a ``uint64`` array (as ``uint8``)."""
    x = np.asarray(x, dtype=np.uint64)
    out: np.ndarray
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        out = np.bitwise_count(x).astype(np.uint8)
    else:
        as_bytes = x.reshape(*x.shape, 1).view(np.uint8)
        out = _POP8[as_bytes].sum(axis=-1, dtype=np.uint8)
    return out


def hamming_matrix(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """All pairwise Hamming distances between two ``uint64`` hash arrays (``len(a) x len(b)``)."""
    a = np.asarray(a, dtype=np.uint64)
    b = a if b is None else np.asarray(b, dtype=np.uint64)
    return popcount64(a[:, None] ^ b[None, :])


def _pairs_array(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    out = np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1).astype(np.int64)
    return out.reshape(-1, 2)


def near_pairs_bruteforce(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """Every pair ``(i, j)``, ``i < j``, within ``threshold``, by comparing all pairs.

    Quadratic; the reference :func:`near_pairs` is checked against, and fine up to a few
    thousand hashes.
    """
    h = np.asarray(hashes, dtype=np.uint64)
    n = len(h)
    found = []
    block = 2048
    for start in range(0, n, block):
        d = hamming_matrix(h[start:start + block], h)
        ii, jj = np.nonzero(d <= threshold)
        ii = ii + start
        keep = ii < jj
        found.append(_pairs_array(ii[keep], jj[keep]))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    return _sorted_unique(np.concatenate(found))


def _sorted_unique(pairs: np.ndarray) -> np.ndarray:
    if len(pairs) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(pairs, axis=0)


def _chunks(threshold: int) -> list[tuple[int, int]]:
    """(shift, width) of ``threshold + 1`` contiguous bit chunks covering 64 bits."""
    m = min(threshold + 1, HASH_BITS)
    widths = [HASH_BITS // m + (1 if k < HASH_BITS % m else 0) for k in range(m)]
    out, shift = [], 0
    for w in widths:
        out.append((shift, w))
        shift += w
    return out


def near_pairs(hashes: Sequence[int | str] | np.ndarray, threshold: int) -> np.ndarray:
    """Every pair ``(i, j)``, ``i < j``, of hashes within Hamming distance ``threshold``.

    Multi-index hashing (see the module docstring): exact, and far fewer comparisons than all
    pairs when near-duplicates are rare.

    Args:
        hashes: 64-bit hashes (a ``uint64`` array, ints or hex strings).
        threshold: the largest Hamming distance that counts as a near-duplicate (0..64).

    Returns:
        An ``int64`` array of shape ``(k, 2)``, rows sorted, each ``i < j``.
    """
    if not 0 <= threshold <= HASH_BITS:
        raise ValueError(f"threshold must be in [0, {HASH_BITS}], got {threshold}")
    h = hashes if isinstance(hashes, np.ndarray) else hashes_to_array(hashes)
    h = np.asarray(h, dtype=np.uint64)
    n = len(h)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    if threshold >= 16:  # chunks this narrow compare nearly everything anyway
        return near_pairs_bruteforce(h, threshold)
    found: list[np.ndarray] = []
    for shift, width in _chunks(threshold):
        keys = (h >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], n]
        for s, e in zip(starts, ends, strict=True):
            if e - s < 2:
                continue
            idx = order[s:e]
            d = hamming_matrix(h[idx])
            ii, jj = np.nonzero(np.triu(d <= threshold, k=1))
            if len(ii):
                found.append(_pairs_array(idx[ii], idx[jj]))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    return _sorted_unique(np.concatenate(found))
