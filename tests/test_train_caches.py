"""Trunk-cache donors: a run on a subset of a finished run's images gathers its rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wildvision.train.caches import TrunkCache, cache_key, find_donor, write_trunk_index


def _full(root: Path, images: list[str], base: str) -> np.ndarray:
    shape = (len(images), 2, 3, 2, 2)
    tc = TrunkCache(root, cache_key(images=images, base=base), shape, "float16", {})
    arr = tc.open_for_write()
    arr[:] = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) % 997
    tc.mark_complete()
    write_trunk_index(tc, base, images)
    return np.asarray(arr).copy()


def test_subset_gathers_rows_of_its_images(tmp_path: Path) -> None:
    images = [f"sha{i}" for i in range(10)]
    full = _full(tmp_path, images, "base-A")
    subset = ["sha7", "sha2", "sha9"]
    found = find_donor(tmp_path, "base-A", subset, (3, 2, 3, 2, 2))
    assert found is not None
    src, idx = found
    assert idx.tolist() == [7, 2, 9]
    np.testing.assert_array_equal(np.asarray(src[idx]), full[[7, 2, 9]])


def test_no_donor_for_another_key_a_new_image_or_another_shape(tmp_path: Path) -> None:
    images = [f"sha{i}" for i in range(5)]
    _full(tmp_path, images, "base-A")
    assert find_donor(tmp_path, "base-B", ["sha1"], (1, 2, 3, 2, 2)) is None
    assert find_donor(tmp_path, "base-A", ["sha1", "new"], (2, 2, 3, 2, 2)) is None
    assert find_donor(tmp_path, "base-A", ["sha1"], (1, 3, 3, 2, 2)) is None
    assert find_donor(tmp_path / "empty", "base-A", ["sha1"], (1, 2, 3, 2, 2)) is None
