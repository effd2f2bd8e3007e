"""The committed reference dataset (datasets/wildvision-ref): leak-free split, labels, card.

Everything but the last test needs only the committed files, not the photos.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from wildvision.cli import main
from wildvision.data.index import IndexEntry, index_file
from wildvision.data.labels import load_label_map
from wildvision.data.manifest import SPLITS, Manifest, read_manifest
from wildvision.data.phash import hashes_to_array, near_pairs_bruteforce
from wildvision.data.split import DEFAULT_PHASH_THRESHOLD, SplitConfig, leakage, split_rows
from wildvision.taxonomy import fine_label

from conftest import missing_data

REPO = Path(__file__).resolve().parents[1]
REF = REPO / "datasets" / "wildvision-ref"
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="module")
def ref() -> Manifest:
    return read_manifest(REF / "manifest.csv")


def test_committed_split_has_no_duplicate_across_splits(ref: Manifest) -> None:
    rows = [r for r in ref if r.split]
    assert len(rows) == len(ref) > 10_000
    # exact duplicates: same sha256 in two splits
    splits_of: dict[str, set[str]] = {}
    for r in rows:
        splits_of.setdefault(r.sha256, set()).add(r.split)
    assert all(len(s) == 1 for s in splits_of.values())
    # near duplicates, by plain all-pairs comparison (independent of the multi-index search)
    h = hashes_to_array([r.phash for r in rows])
    pairs = near_pairs_bruteforce(h, DEFAULT_PHASH_THRESHOLD)
    assert len(pairs) > 100  # the data has near-duplicates; they are all kept together
    split = np.array([r.split for r in rows])
    assert int((split[pairs[:, 0]] != split[pairs[:, 1]]).sum()) == 0
    assert leakage(rows, DEFAULT_PHASH_THRESHOLD).total == 0


# The manifest before the open-world sources were added (wildvision-base 1.x was trained on it);
# build.sh keeps its splits with --keep-splits.
PREVIOUS_MANIFEST_COMMIT = "ba85854aaf924876b72417b4e61f912e7880ef09"


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    text = subprocess.run(
        ["git", "-C", str(REPO), "show",
         f"{PREVIOUS_MANIFEST_COMMIT}:datasets/wildvision-ref/manifest.csv"],
        check=True, capture_output=True, text=True).stdout
    path = tmp_path_factory.mktemp("prev") / "manifest.csv"
    path.write_text(text, encoding="utf-8")
    return read_manifest(path)


def test_committed_split_is_reproducible(ref: Manifest, previous: Manifest) -> None:
    params = json.loads((REF / "split.json").read_text(encoding="utf-8"))
    assert params["seed"] == 0 and params["ratios"] == [0.7, 0.15, 0.15]
    assert params["holdout_sources"] == []
    keep = {r.sha256: r.split for r in previous if r.split}
    again = split_rows(ref.rows, SplitConfig(seed=0, ratios=(0.7, 0.15, 0.15),
                                             phash_threshold=params["phash_threshold"]),
                       keep=keep)
    assert [r.split for r in again.rows] == [r.split for r in ref.rows]


def test_earlier_test_images_stay_out_of_training(ref: Manifest, previous: Manifest) -> None:
    """A model of the earlier split can be compared with a new one on the earlier test split."""
    now = {r.sha256: r.split for r in ref}
    before = [r for r in previous if r.split]
    assert all(r.sha256 in now for r in before)
    order = {s: k for k, s in enumerate(SPLITS)}
    assert all(order[now[r.sha256]] >= order[r.split] for r in before)
    assert not [r.path for r in before if r.split == "test" and now[r.sha256] != "test"]
    assert sum(now[r.sha256] == r.split for r in before) > 0.98 * len(before)


def test_keep_splits_keeps_and_moves_only_later() -> None:
    """Unit check of split_rows(keep=...): kept rows keep their split, a new near-duplicate
    joins its earlier image, a new image bridging two splits moves the group to the later."""
    from wildvision.data.manifest import ManifestRow

    def row(i: int, phash: str, label: str = "domestic_cat") -> ManifestRow:
        return ManifestRow(path=f"s/{i}.jpg", source="s", label=label, fine_label=label,
                           group="benign", sha256=f"{i:064x}", phash=phash)

    rows = [row(k, f"{(k * 0x9E3779B97F4A7C15) & (2**64 - 1):016x}") for k in range(40)]
    rows.append(row(100, rows[0].phash))            # new near-duplicate of row 0
    keep = {rows[k].sha256: ("train" if k < 30 else "test") for k in range(35)}
    result = split_rows(rows, SplitConfig(seed=0), keep=keep)
    got = {r.sha256: r.split for r in result.rows}
    assert all(got[s] == sp for s, sp in keep.items())
    assert got[rows[40].sha256] == "train"           # joined its earlier duplicate
    assert all(got[r.sha256] in SPLITS for r in rows[35:40])
    # a new image equal to a train image and a test image moves both to test
    bridge = [*rows, row(200, rows[0].phash)]
    bridge[31] = bridge[31].with_(phash=rows[0].phash)
    again = split_rows(bridge, SplitConfig(seed=0), keep=keep)
    assert {r.split for r in again.rows if r.phash == rows[0].phash} == {"test"}
    assert any("latest" in n for n in again.notes)


def test_committed_rows_are_labelled_and_well_formed(ref: Manifest) -> None:
    assert len({r.path for r in ref}) == len(ref)
    for r in ref:
        assert r.split in SPLITS and not r.error
        assert fine_label(r.fine_label).group == r.group
        assert len(r.sha256) == 64 and len(r.phash) == 16 and r.width > 0 and r.height > 0
    counts = Counter(r.split for r in ref)
    assert abs(counts["train"] / len(ref) - 0.7) < 0.01
    assert abs(counts["test"] / len(ref) - 0.15) < 0.01


def test_label_map_covers_every_dataset_label(ref: Manifest) -> None:
    lm = load_label_map(REF / "labels.yaml")
    assert lm.unknown((r.source, r.label) for r in ref) == []
    for r in ref:
        assert lm.lookup(r.source, r.label) == r.fine_label
    spot = {"ivory_artifact": "ivory_carving", "figurine": "statue_figurine", "cup": "tableware",
            "drinking_horn": "bone_horn_craft", "pet_bird_common": "pet_other",
            "scene": "background_scene", "yin_yang": "everyday_object",
            "animal_print_rug_zebra_printed": "animal_print_textile", "live_loris": "live_loris"}
    assert {k: lm.labels[k] for k in spot} == spot
    # every label folder of the real data, not only those in the manifest
    if not SHARED.is_dir():
        missing_data(f"real photos not found at {SHARED}")
    folders = {(s.name, lab.name) for s in SHARED.iterdir() if s.is_dir()
               for lab in s.iterdir() if lab.is_dir()}
    assert folders and lm.unknown(folders) == []


def test_dataset_json_points_at_the_shared_data() -> None:
    meta = json.loads((REF / "dataset.json").read_text(encoding="utf-8"))
    assert (REF / meta["data_root"]).resolve() == SHARED.resolve()


def test_card_is_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["data", "card", str(REF / "manifest.csv"), "--out", str(REF / "README.md"),
               "--check"])
    assert rc == 0, capsys.readouterr().err


@pytest.mark.realdata
def test_committed_rows_match_the_photos(ref: Manifest, shared_data: Path) -> None:
    """Re-index a spread of real files: sha256, size and phash equal the committed rows."""
    sample = ref.rows[::97]
    for r in sample:
        row = index_file(shared_data, IndexEntry(r.path, r.source, r.label))
        assert (row.sha256, row.width, row.height, row.phash, row.error) == (
            r.sha256, r.width, r.height, r.phash, ""), r.path
