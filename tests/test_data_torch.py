"""The torch Dataset over a manifest split (wildvision.data.torch_dataset, [train] extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wildvision.data.manifest import Manifest, ManifestRow
from wildvision.errors import DataError
from wildvision.imaging import decode_image
from wildvision.preprocess import PreprocessConfig, normalize, preprocess_image

from conftest import encode, photo_like

torch = pytest.importorskip("torch", reason="the [train] extra (torch) is not installed")
from wildvision.data.torch_dataset import ManifestDataset  # noqa: E402

LABELS = ("ceramics", "ivory_carving", "domestic_cat")
CFG = PreprocessConfig(input_size=32)


@pytest.fixture()
def manifest(tmp_path: Path) -> Manifest:
    rows = []
    for k, (lab, split) in enumerate([("ceramics", "train"), ("ivory_carving", "train"),
                                      ("domestic_cat", "train"), ("ceramics", "val")]):
        (tmp_path / f"{k}.jpg").write_bytes(encode(photo_like(90, 60, seed=k), "JPEG"))
        rows.append(ManifestRow(f"{k}.jpg", fine_label=lab, split=split))
    rows.append(ManifestRow("bad.jpg", fine_label="ceramics", error="InvalidImageError: x"))
    return Manifest(tuple(rows), tmp_path)


def test_items_match_the_inference_preprocessing(manifest: Manifest) -> None:
    ds = ManifestDataset(manifest, LABELS, CFG, split="train")
    assert len(ds) == 3 and ds.targets == [0, 1, 2] and ds.class_counts() == [1, 1, 1]
    x, y = ds[1]
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
    assert tuple(x.shape) == (3, 32, 32) and y == 1
    img = decode_image(manifest.root / "1.jpg", draft_size=CFG.draft_size).image
    np.testing.assert_array_equal(x.numpy(), preprocess_image(img, CFG))


def test_transform_runs_on_uint8_then_normalize(manifest: Manifest) -> None:
    seen = []

    def flip_and_crop(a: np.ndarray) -> np.ndarray:
        seen.append(a.dtype)
        return np.ascontiguousarray(a[:32, ::-1][:, :32])

    ds = ManifestDataset(manifest, LABELS, CFG, split="val", transform=flip_and_crop)
    x, y = ds[0]
    assert seen == [np.uint8] and y == 0
    img = np.asarray(decode_image(manifest.root / "3.jpg", draft_size=CFG.draft_size).image)
    np.testing.assert_array_equal(x.numpy(), normalize(img[:32, ::-1][:, :32].copy(), CFG))


def test_unreadable_rows_are_left_out_and_load_errors_name_the_file(
        manifest: Manifest) -> None:
    ds = ManifestDataset(manifest, LABELS, CFG)
    assert len(ds) == 4 and ds.skipped_unreadable == 1
    (manifest.root / "2.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"2\.jpg: cannot load training image"):
        ds[2]
    (manifest.root / "2.jpg").unlink()
    with pytest.raises(DataError, match=r"2\.jpg.*file not found"):
        ds[2]


def test_labels_must_cover_the_manifest(manifest: Manifest) -> None:
    with pytest.raises(DataError, match="'domestic_cat'"):
        ManifestDataset(manifest, LABELS[:2], CFG)
    with pytest.raises(DataError, match="no readable rows in split 'test'"):
        ManifestDataset(manifest, LABELS, CFG, split="test")
