"""Perceptual hash and near-duplicate search (wildvision.data.phash)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from wildvision.data import phash as ph

from conftest import encode, photo_like


def _reload(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def test_hash_is_64_bit_hex_and_stable() -> None:
    img = photo_like(160, 120, seed=1)
    h = ph.phash_hex(img)
    assert len(h) == 16 and int(h, 16) == ph.phash(img)
    assert ph.phash_hex(img.copy()) == h
    # median threshold over 64 coefficients: exactly half the bits are set
    assert bin(ph.phash(img)).count("1") == 32


@pytest.mark.parametrize("edit", ["jpeg_q40", "half_size", "double_size", "grey", "crop_1pct"])
def test_hash_survives_everyday_edits(edit: str) -> None:
    img = photo_like(200, 150, seed=7)
    w, h = img.size
    copy = {
        "jpeg_q40": lambda: _reload(encode(img, "JPEG", quality=40)),
        "half_size": lambda: img.resize((w // 2, h // 2)),
        "double_size": lambda: img.resize((w * 2, h * 2)),
        "grey": lambda: img.convert("L").convert("RGB"),
        "crop_1pct": lambda: img.crop((2, 1, w - 2, h - 1)),
    }[edit]()
    assert ph.hamming(ph.phash(img), ph.phash(copy)) <= 4


def test_different_images_are_far_apart() -> None:
    hashes = [ph.phash(photo_like(96, 72, seed=s)) for s in range(20)]
    d = ph.hamming_matrix(ph.hashes_to_array(hashes))
    np.fill_diagonal(d, 64)
    assert d.min() > 10


def test_hamming_accepts_hex_and_int_and_rejects_bad_hex() -> None:
    assert ph.hamming("0000000000000000", "ffffffffffffffff") == 64
    assert ph.hamming(0b1011, "0000000000000001") == 2
    with pytest.raises(ValueError):
        ph.hex_to_int("abc")


def test_popcount_matches_python() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**63, size=500, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    assert ph.popcount64(x).tolist() == [int(v).bit_count() for v in x.tolist()]
    # the byte-table fallback used on numpy < 2
    as_bytes = x.reshape(-1, 1).view(np.uint8)
    assert ph._POP8[as_bytes].sum(axis=-1).tolist() == [int(v).bit_count() for v in x.tolist()]


def _planted_hashes(n: int, seed: int) -> np.ndarray:
    """Random hashes plus near copies at distances 0..12 of some of them."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**63, size=n, dtype=np.uint64) ^ (
        rng.integers(0, 2, size=n, dtype=np.uint64) << np.uint64(63))
    extra = []
    for i in range(0, n, 7):
        flips = rng.choice(64, size=int(rng.integers(0, 13)), replace=False)
        mask = np.uint64(0)
        for b in flips:
            mask |= np.uint64(1) << np.uint64(int(b))
        extra.append(base[i] ^ mask)
    return np.concatenate([base, np.array(extra, dtype=np.uint64)])


@pytest.mark.parametrize("threshold", [0, 3, 6, 10, 12, 20])
def test_multi_index_search_equals_brute_force(threshold: int) -> None:
    h = _planted_hashes(600, seed=threshold)
    fast = ph.near_pairs(h, threshold)
    slow = ph.near_pairs_bruteforce(h, threshold)
    assert len(slow) > 0
    assert fast.tolist() == slow.tolist()
    assert all(i < j for i, j in fast.tolist())


def test_near_pairs_small_inputs_and_bad_threshold() -> None:
    assert ph.near_pairs([], 4).shape == (0, 2)
    assert ph.near_pairs(["0000000000000001"], 4).shape == (0, 2)
    assert ph.near_pairs(["0000000000000001", "0000000000000003"], 1).tolist() == [[0, 1]]
    with pytest.raises(ValueError):
        ph.near_pairs([1, 2], 65)
