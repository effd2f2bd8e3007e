"""Benchmark suite definitions and their loader (wildvision.data.suites)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from wildvision.data.manifest import Manifest, ManifestRow, read_manifest
from wildvision.data.suites import load_suite, load_suites
from wildvision.errors import ConfigError, DataError

REF = Path(__file__).resolve().parents[1] / "datasets" / "wildvision-ref"
SUITES = REF / "suites.yaml"


@pytest.fixture(scope="module")
def ref() -> Manifest:
    return read_manifest(REF / "manifest.csv")


def test_reference_suites_select_what_they_promise(ref: Manifest) -> None:
    suites = load_suites(SUITES)
    assert {"ivory-vs-lookalikes", "live-animals", "everyday-negatives", "met-ivory",
            "loso-caltech101", "loso-web_conservation"} <= set(suites)

    ivory = suites["ivory-vs-lookalikes"].select(ref)
    assert {r.split for r in ivory} == {"test"}
    assert set(Counter(r.fine_label for r in ivory)) == {
        "ivory_carving", "ceramics", "statue_figurine", "tableware", "bone_horn_craft"}

    live = suites["live-animals"].select(ref)
    labels = {r.fine_label for r in live}
    assert {"domestic_cat", "domestic_dog", "pet_other", "plush_toy"} <= labels
    assert {r.group for r in live} == {"live_protected_animal", "benign"}
    assert all(r.group == "live_protected_animal" or r.fine_label in
               ("domestic_cat", "domestic_dog", "pet_other", "plush_toy") for r in live)

    neg = suites["everyday-negatives"].select(ref)
    assert {r.group for r in neg} == {"benign"}
    assert suites["everyday-negatives"].positive_groups == ()

    met = suites["met-ivory"].select(ref)
    assert {r.source for r in met} == {"met_ivory"} and {r.split for r in met} == {"test"}


def test_leave_one_source_out(ref: Manifest) -> None:
    suite = load_suite("loso-caltech101", SUITES)
    test = suite.select(ref)
    n_source = sum(1 for r in ref if r.source == "caltech101")
    assert len(test) == n_source and {r.split for r in test} == {"train", "val", "test"}
    train = suite.train_rows(ref)
    assert len(train) > 0 and "caltech101" not in {r.source for r in train}
    assert {r.split for r in train} == {"train", "val"}
    with pytest.raises(DataError, match="no holdout_source"):
        load_suite("met-ivory", SUITES).train_rows(ref)


def test_default_suites_file_and_manifest() -> None:
    suite = load_suite("met-ivory")  # found in the source checkout
    assert suite.manifest == (REF / "manifest.csv").resolve()
    assert len(suite.select(suite.load_manifest())) > 100


def test_lookup_forms_and_errors(tmp_path: Path) -> None:
    assert load_suite(f"{SUITES}#met-ivory").sources == ("met_ivory",)
    with pytest.raises(ConfigError, match=r"unknown suite 'ivory' .*suites: everyday-negatives"):
        load_suite("ivory", SUITES)
    one = tmp_path / "cats.yaml"
    one.write_text("name: cats\nfine_labels: [domestic_cat]\nsplit: all\n", encoding="utf-8")
    cats = load_suite(one)
    rows = Manifest((ManifestRow("a", fine_label="domestic_cat", split="val"),
                     ManifestRow("b", fine_label="domestic_cat"),
                     ManifestRow("c", fine_label="domestic_dog", split="val"),
                     ManifestRow("d", fine_label="domestic_cat", split="test", error="x")),
                    tmp_path)
    assert [r.path for r in cats.select(rows)] == ["a"]
    with pytest.raises(DataError, match="selects no rows"):
        load_suite(f"{SUITES}#met-ivory").select(rows)
    bad = tmp_path / "bad.yaml"
    for text, msg in (("fine_labels: [ivory_bangle]\n", "unknown fine label"),
                      ("groups: [ivroy]\n", "unknown group"),
                      ("split: holdout\n", "split must be"),
                      ("colour: red\n", "unknown keys")):
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError, match=msg):
            load_suite(bad)
    many = tmp_path / "many.yaml"
    many.write_text("suites:\n  a: {sources: [x]}\n  b: {sources: [y]}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="pick one"):
        load_suite(many)
