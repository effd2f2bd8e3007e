"""Dataset tooling on small generated folders: index, label maps, split, check, card, CLI."""

from __future__ import annotations

import csv
import hashlib
import random
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from wildvision.cli import main
from wildvision.data.check import check_manifest
from wildvision.data.index import index_folder, walk_images
from wildvision.data.labels import LabelMap, apply_label_map, load_label_map
from wildvision.data.manifest import ManifestRow, read_manifest, write_manifest
from wildvision.data.split import (
    SplitConfig,
    leakage,
    parse_ratios,
    random_split,
    split_rows,
)
from wildvision.errors import ConfigError, DataError

from conftest import encode, photo_like

LABELS_YAML = """\
labels:
  ivory_artifact: ivory_carving
  ceramics: ceramics
  domestic_cat: domestic_cat
"""


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    """ROOT/<source>/<label>/<file>: 18 distinct photos, an exact copy, two near copies
    (re-encoded; resized PNG), three unreadable files, hidden files and a root README."""
    root = tmp_path / "data"
    seed = 0
    for source, label in (("shopA", "ivory_artifact"), ("shopA", "ceramics"),
                          ("shopB", "domestic_cat")):
        for k in range(6):
            img = photo_like(120 + 8 * k, 90, seed=seed)
            _write(root / source / label / f"{label[:3]}{k}.jpg", encode(img, "JPEG", quality=90))
            seed += 1
    a0 = photo_like(120, 90, seed=0)
    _write(root / "shopA/ivory_artifact/a0_reencoded.jpg", encode(a0, "JPEG", quality=55))
    _write(root / "shopB/domestic_cat/a0_small.png", encode(a0.resize((60, 45)), "PNG"))
    shutil.copy(root / "shopA/ceramics/cer1.jpg", root / "shopA/ceramics/cer1_copy.jpg")
    good = (root / "shopB/domestic_cat/dom0.jpg").read_bytes()
    _write(root / "shopB/domestic_cat/broken.jpg", good[: len(good) // 2])
    _write(root / "shopB/domestic_cat/empty.jpg", b"")
    _write(root / "shopB/domestic_cat/notes.txt", b"not an image\n")
    _write(root / "shopB/domestic_cat/.DS_Store", b"\0")
    _write(root / "shopB/.cache/x.jpg", good)
    _write(root / "README.md", b"# my data\n")
    (tmp_path / "labels.yaml").write_text(LABELS_YAML, encoding="utf-8")
    return root


# -- index -----------------------------------------------------------------------------------


def test_index_accounts_for_every_file(dataset: Path) -> None:
    result = index_folder(dataset, workers=2)
    paths = [r.path for r in result.rows]
    assert paths == sorted(paths)
    assert len(paths) == 18 + 3 + 3  # photos, copies, unreadable; hidden and root files not
    assert not any("/." in p for p in paths)
    assert result.ignored == ("README.md",)
    by = {r.path: r for r in result.rows}
    errors = {p: r.error for p, r in by.items() if r.error}
    assert set(errors) == {"shopB/domestic_cat/broken.jpg", "shopB/domestic_cat/empty.jpg",
                           "shopB/domestic_cat/notes.txt"}
    assert errors["shopB/domestic_cat/empty.jpg"].startswith("InvalidImageError: empty file")
    assert "not a recognised image format" in errors["shopB/domestic_cat/notes.txt"]
    assert "truncated" in errors["shopB/domestic_cat/broken.jpg"]
    for p, r in by.items():
        assert r.sha256 == hashlib.sha256((dataset / p).read_bytes()).hexdigest()
        if r.error:
            assert (r.phash, r.width, r.height) == ("", 0, 0)
        else:
            assert len(r.phash) == 16
    cat = by["shopB/domestic_cat/dom2.jpg"]
    assert (cat.source, cat.label, cat.width, cat.height) == ("shopB", "domestic_cat", 136, 90)
    assert result.stats()["unreadable"] == 3


def test_index_is_the_same_with_one_or_many_workers(dataset: Path) -> None:
    assert index_folder(dataset, workers=1).rows == index_folder(dataset, workers=3).rows


def test_label_layout_and_source_name(tmp_path: Path) -> None:
    root = tmp_path / "mydata"
    _write(root / "ceramics" / "x.jpg", encode(photo_like(64, 64, 1), "JPEG"))
    _write(root / "cup" / "y.png", encode(photo_like(64, 64, 2), "PNG"))
    entries, _ = walk_images(root)
    assert [(e.path, e.source, e.label) for e in entries] == [
        ("ceramics/x.jpg", "mydata", "ceramics"), ("cup/y.png", "mydata", "cup")]
    entries, _ = walk_images(root, source="museum")
    assert {e.source for e in entries} == {"museum"}
    # a sub-folder anywhere makes it the <source>/<label> layout: files beside it are refused
    _write(root / "cup" / "old" / "z.png", encode(photo_like(64, 64, 3), "PNG"))
    with pytest.raises(DataError, match="outside any label folder"):
        walk_images(root)


def test_index_layout_errors(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(DataError, match="not a folder"):
        walk_images(tmp_path / "nope")
    _write(tmp_path / "flat" / "a.jpg", b"x")
    with pytest.raises(DataError, match="no label folders"):
        walk_images(tmp_path / "flat")
    _write(dataset / "shopA" / "stray.jpg", b"x")
    with pytest.raises(DataError, match=r"outside any label folder: shopA/stray\.jpg"):
        walk_images(dataset)
    with pytest.raises(DataError, match="--source applies only"):
        walk_images(tmp_path / "data", source="x")


# -- label maps ------------------------------------------------------------------------------


def test_unknown_labels_are_listed_all_at_once(dataset: Path, tmp_path: Path) -> None:
    lm = LabelMap({"ceramics": "ceramics"})
    rows = index_folder(dataset, workers=1).rows
    with pytest.raises(DataError) as e:
        apply_label_map(rows, lm)
    assert "shopA/ivory_artifact" in str(e.value) and "shopB/domestic_cat" in str(e.value)
    assert "2 dataset label(s)" in str(e.value)


def test_label_map_targets_must_exist_and_sources_override(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not in the taxonomy: cup -> teacup"):
        LabelMap({"cup": "teacup", "ewer": "tableware"})
    p = tmp_path / "m.yaml"
    p.write_text("labels:\n  product: consumer_product\nsources:\n  toyshop:\n"
                 "    product: plush_toy\n", encoding="utf-8")
    lm = load_label_map(p)
    rows = apply_label_map([ManifestRow("a", "shop", "product"),
                            ManifestRow("b", "toyshop", "product")], lm)
    assert [(r.fine_label, r.group) for r in rows] == [
        ("consumer_product", "benign"), ("plush_toy", "benign")]
    p.write_text("labelz: {}\n", encoding="utf-8")
    with pytest.raises(DataError, match="'labels:' section"):
        load_label_map(p)


def test_cli_index_with_unknown_label_writes_nothing(dataset: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("labels:\n  ceramics: ceramics\n", encoding="utf-8")
    out = tmp_path / "m.csv"
    assert main(["data", "index", str(dataset), "--labels", str(bad), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "ivory_artifact" in err and "domestic_cat" in err
    assert not out.exists()


# -- the whole pipeline through the CLI ------------------------------------------------------


def _run_pipeline(dataset: Path, tmp_path: Path, name: str = "split.csv") -> Path:
    index = tmp_path / "index.csv"
    assert main(["data", "index", str(dataset), "--labels", str(tmp_path / "labels.yaml"),
                 "--out", str(index), "--workers", "2", "--no-progress"]) == 0
    out = tmp_path / name
    assert main(["data", "split", str(index), "--out", str(out), "--seed", "3"]) == 0
    return out


def test_pipeline_index_split_check(dataset: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    split = _run_pipeline(dataset, tmp_path)
    printed = capsys.readouterr().out
    assert "0 exact and 0 near-duplicate pairs across splits" in printed
    m = read_manifest(split, data_root=dataset)
    by = {r.path: r for r in m}
    # exact copy and near copies (re-encoded; resized PNG under another label) stay together
    assert by["shopA/ceramics/cer1.jpg"].split == by["shopA/ceramics/cer1_copy.jpg"].split
    trio = {by[p].split for p in ("shopA/ivory_artifact/ivo0.jpg",
                                  "shopA/ivory_artifact/a0_reencoded.jpg",
                                  "shopB/domestic_cat/a0_small.png")}
    assert len(trio) == 1
    assert by["shopA/ceramics/cer1.jpg"].extra["dup_group"] != ""
    assert by["shopA/ceramics/cer2.jpg"].extra["dup_group"] == ""
    # unreadable rows: kept, no split
    unreadable = [r for r in m if r.error]
    assert len(unreadable) == 3 and all(r.split == "" for r in unreadable)
    assert {r.split for r in m if r.readable} <= {"train", "val", "test"}
    assert all(r.fine_label and r.group for r in m)
    # check: clean (unreadable images are a warning, not an error)
    assert main(["data", "check", str(split), "--data-root", str(dataset)]) == 0
    table = capsys.readouterr().out
    assert "unreadable images" in table and "WARNING" in table
    assert "ivory_carving" in table and "OK" in table


def test_split_is_deterministic_and_seeded(dataset: Path, tmp_path: Path) -> None:
    a = _run_pipeline(dataset, tmp_path, "a.csv")
    b = tmp_path / "b.csv"
    assert main(["data", "split", str(tmp_path / "index.csv"), "--out", str(b),
                 "--seed", "3"]) == 0
    assert a.read_bytes() == b.read_bytes()
    c = tmp_path / "c.csv"
    assert main(["data", "split", str(tmp_path / "index.csv"), "--out", str(c),
                 "--seed", "4"]) == 0
    assert a.read_bytes() != c.read_bytes()


def _rewrite(path: Path, changes: dict[str, dict[str, str]]) -> None:
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    for r in rows:
        r.update(changes.get(r["path"], {}))
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


@pytest.mark.parametrize("problem", ["exact_across", "near_across", "missing_file",
                                     "bad_label", "group_mismatch", "unreadable_split"])
def test_check_reports_errors(dataset: Path, tmp_path: Path, problem: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    split = _run_pipeline(dataset, tmp_path)
    m = {r.path: r for r in read_manifest(split)}
    other = lambda p: "test" if m[p].split != "test" else "train"  # noqa: E731
    change, expect = {
        "exact_across": ({"shopA/ceramics/cer1_copy.jpg":
                          {"split": other("shopA/ceramics/cer1.jpg")}},
                         "exact duplicates across splits"),
        "near_across": ({"shopA/ivory_artifact/a0_reencoded.jpg":
                         {"split": other("shopA/ivory_artifact/ivo0.jpg")},
                         "shopB/domestic_cat/a0_small.png":
                         {"split": other("shopA/ivory_artifact/ivo0.jpg")}},
                        "near-duplicates across splits"),
        "missing_file": ({}, "missing files"),
        "bad_label": ({"shopA/ceramics/cer2.jpg": {"fine_label": "teacup"}},
                      "fine labels not in the taxonomy"),
        "group_mismatch": ({"shopA/ceramics/cer2.jpg": {"group": "ivory"}},
                           "group does not match fine label"),
        "unreadable_split": ({"shopB/domestic_cat/empty.jpg": {"split": "train"}},
                             "unreadable images with a split"),
    }[problem]
    _rewrite(split, change)
    if problem == "missing_file":
        (dataset / "shopA/ceramics/cer3.jpg").unlink()
    capsys.readouterr()
    assert main(["data", "check", str(split), "--data-root", str(dataset)]) == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith(expect))
    assert "ERROR" in line


def test_check_verify_hashes_finds_changed_files(dataset: Path, tmp_path: Path) -> None:
    split = _run_pipeline(dataset, tmp_path)
    m = read_manifest(split, data_root=dataset)
    assert check_manifest(m, verify_hashes=True).ok
    _write(dataset / "shopA/ceramics/cer2.jpg", encode(photo_like(50, 50, 99), "JPEG"))
    report = check_manifest(m, verify_hashes=True)
    bad = [f for f in report.errors if f.check == "sha256 mismatches"]
    assert bad and bad[0].examples == ("shopA/ceramics/cer2.jpg",)


def test_card_is_generated_from_the_manifest(dataset: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    split = _run_pipeline(dataset, tmp_path)
    readme = tmp_path / "README.md"
    assert main(["data", "card", str(split), "--out", str(readme), "--name", "tiny"]) == 0
    text = readme.read_text(encoding="utf-8")
    m = read_manifest(split)
    counts = Counter(r.split for r in m if r.fine_label == "ceramics")
    assert f"| ceramics | {counts['train']} | {counts['val']} | {counts['test']} | " in text
    assert "**21 images** (21 readable" not in text  # 3 of 24 are unreadable
    assert "**24 images** (21 readable, 3 unreadable)" in text
    assert "**Leakage check:** 0 exact-duplicate and 0 near-duplicate pairs" in text
    assert "| rhino_horn_raw | rhino_horn |" in text  # classes with no data
    assert main(["data", "card", str(split), "--out", str(readme), "--name", "tiny",
                 "--check"]) == 0
    readme.write_text(text.replace("ceramics", "porcelain"), encoding="utf-8")
    assert main(["data", "card", str(split), "--out", str(readme), "--name", "tiny",
                 "--check"]) == 1


# -- split semantics on synthetic rows (no images needed) ------------------------------------


def _flip(h: int, bits: list[int]) -> int:
    for b in bits:
        h ^= 1 << b
    return h


def _synthetic_rows(seed: int = 0) -> list[ManifestRow]:
    """Three labels x 40 images over two sources; 10 near-duplicate clusters (2-4 copies at
    distance <= 6, some under another label) and 5 exact-duplicate pairs."""
    rng = random.Random(seed)
    rows: list[ManifestRow] = []
    k = 0
    labels = [("ceramics", "benign"), ("ivory_carving", "ivory"), ("live_tiger",
                                                                    "live_protected_animal")]

    def add(h: int, fine: str, group: str, source: str, sha: str | None = None) -> None:
        nonlocal k
        rows.append(ManifestRow(
            path=f"{source}/{fine}/{k:04d}.jpg", source=source, label=fine, fine_label=fine,
            group=group, sha256=sha or hashlib.sha256(str(k).encode()).hexdigest(),
            width=100, height=100, phash=f"{h:016x}"))
        k += 1

    for fine, group in labels:
        for _ in range(40):
            add(rng.getrandbits(64), fine, group, rng.choice(["s1", "s2"]))
    for c in range(10):
        base = rows[rng.randrange(len(rows))]
        h = int(base.phash, 16)
        for _ in range(rng.randint(1, 3)):
            fine, group = labels[c % 3] if c % 4 == 0 else (base.fine_label, base.group)
            add(_flip(h, rng.sample(range(64), rng.choice([0, 2, 4, 6]))), fine, group,
                base.source)
    for _ in range(5):
        base = rows[rng.randrange(120)]
        add(rng.getrandbits(64), base.fine_label, base.group, "s3", sha=base.sha256)
    rows.append(ManifestRow("bad/x.jpg", "s1", "ceramics", "ceramics", "benign",
                            error="InvalidImageError: empty file (0 bytes)"))
    return rows


def _clusters(rows: list[ManifestRow], threshold: int) -> list[set[str]]:
    """Duplicate clusters computed independently (all pairs, plain Python)."""
    idx = [i for i, r in enumerate(rows) if r.readable]
    parent = {i: i for i in idx}

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a in idx:
        for b in idx:
            if a < b and (rows[a].sha256 == rows[b].sha256 or (
                    int(rows[a].phash, 16) ^ int(rows[b].phash, 16)).bit_count() <= threshold):
                parent[find(a)] = find(b)
    groups: dict[int, set[str]] = defaultdict(set)
    for i in idx:
        groups[find(i)].add(rows[i].path)
    return [g for g in groups.values() if len(g) > 1]


def test_groups_never_straddle_splits_and_strata_follow_ratios() -> None:
    rows = _synthetic_rows()
    result = split_rows(rows, SplitConfig(seed=0, phash_threshold=8))
    split_of = {r.path: r.split for r in result.rows}
    clusters = _clusters(rows, 8)
    assert len(clusters) >= 12
    for g in clusters:
        assert len({split_of[p] for p in g}) == 1, g
    assert result.leakage.total == 0 and result.leakage.pairs_total > 0
    assert split_of["bad/x.jpg"] == ""
    for fine in ("ceramics", "ivory_carving", "live_tiger"):
        c = Counter(r.split for r in result.rows if r.fine_label == fine and r.readable)
        n = sum(c.values())
        assert abs(c["train"] - 0.7 * n) <= 4 and abs(c["test"] - 0.15 * n) <= 4, c
    # the same result whatever the row order
    shuffled = list(rows)
    random.Random(1).shuffle(shuffled)
    again = {r.path: r.split for r in split_rows(shuffled, SplitConfig(seed=0,
                                                                        phash_threshold=8)).rows}
    assert again == split_of


def test_random_split_leaks_and_leakage_counts_it() -> None:
    rows = _synthetic_rows()
    leaked = leakage(random_split(rows, (0.6, 0.2, 0.2), seed=0), 8)
    assert leaked.total > 0
    assert len(leaked.examples) == min(20, leaked.total)
    assert all(a_split != b_split for _, a_split, _, b_split, _ in leaked.examples)


def test_holdout_source_goes_to_test_with_its_duplicates() -> None:
    rows = _synthetic_rows()
    result = split_rows(rows, SplitConfig(holdout_sources=("s3",), phash_threshold=8))
    split_of = {r.path: r.split for r in result.rows}
    assert all(split_of[r.path] == "test" for r in rows if r.source == "s3")
    # each s3 row is an exact copy of an s1/s2 row: those are pulled into test too
    s3_shas = {r.sha256 for r in rows if r.source == "s3"}
    partners = [r for r in rows if r.source != "s3" and r.sha256 in s3_shas]
    assert partners and all(split_of[r.path] == "test" for r in partners)
    assert result.pulled_into_test >= len(partners)
    with pytest.raises(ConfigError, match="not in the manifest"):
        split_rows(rows, SplitConfig(holdout_sources=("nope",)))


def test_ratios_validation() -> None:
    assert parse_ratios("0.8,0.1,0.1") == (0.8, 0.1, 0.1)
    for bad in ("0.7,0.2", "0.5,0.5,0.5", "a,b,c", "0,0.5,0.5", "1.1,-0.1,0"):
        with pytest.raises(ConfigError):
            parse_ratios(bad)
    # a zero share is allowed: no val split
    res = split_rows(_synthetic_rows(), SplitConfig(ratios=(0.8, 0.0, 0.2)))
    assert "val" not in {r.split for r in res.rows}


def test_write_manifest_keeps_extra_columns(tmp_path: Path) -> None:
    rows = [ManifestRow("a.jpg", extra={"licence": "CC0"}), ManifestRow("b.jpg")]
    p = tmp_path / "m.csv"
    write_manifest(p, rows)
    back = read_manifest(p)
    assert back.rows[0].extra == {"licence": "CC0"} and back.rows[1].extra == {"licence": ""}
    write_manifest(p, rows, extra_fields=())
    assert "licence" not in p.read_text(encoding="utf-8")


def test_index_then_use_the_manifest_from_another_folder(dataset: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    """``data index DIR --out elsewhere/m.csv`` then reading ``elsewhere/m.csv`` (train,
    check ...) without ``--data-root``: the manifest records where DIR is (dataset.json beside
    it), so every readable row's file is found."""
    out = tmp_path / "elsewhere" / "m.csv"
    assert main(["data", "index", str(dataset), "--out", str(out), "--labels",
                 str(tmp_path / "labels.yaml")]) == 0
    m = read_manifest(out)
    assert m.root.resolve() == dataset.resolve()
    readable = [r for r in m if r.readable]
    assert len(readable) == 21 and all(m.abs_path(r).is_file() for r in readable)
    assert main(["data", "check", str(out)]) == 0  # no "image files not found"
    # the same root again, in the same folder: fine; another root there: refused, unwritten
    assert main(["data", "index", str(dataset), "--out", str(out.with_name("m2.csv"))]) == 0
    other = tmp_path / "other"
    shutil.copytree(dataset / "shopA", other / "shopA")
    capsys.readouterr()
    assert main(["data", "index", str(other), "--out", str(out.with_name("m3.csv"))]) == 1
    assert "dataset.json" in capsys.readouterr().err
    assert not out.with_name("m3.csv").exists()
    # a manifest written inside its own root needs no dataset.json
    assert main(["data", "index", str(dataset), "--out", str(dataset / "index.csv")]) == 0
    assert not (dataset / "dataset.json").exists()
    assert read_manifest(dataset / "index.csv").root == dataset
