"""Recipes and data checks of ``wildvision train``: every problem reported at once, before any
training (no real photos, no training: generated images only)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("yaml")
from PIL import Image

from wildvision.cli import main
from wildvision.data.manifest import ManifestRow, write_manifest
from wildvision.errors import ConfigError, DataError
from wildvision.taxonomy import group_of
from wildvision.train.data import prepare_data
from wildvision.train.recipe import Recipe, load_recipe, parse_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "training" / "recipes").glob("*.yaml"))
QUICK = REPO / "training" / "recipes" / "quick.yaml"


def _images(root: Path, label: str, n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    (root / label).mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        arr = rng.integers(0, 255, size=(20, 24, 3), dtype=np.uint8)
        rel = f"{label}/{i}.png"
        Image.fromarray(arr).save(root / rel)
        out.append(rel)
    return out


def _rows(paths: list[str], fine: str, split: str = "train") -> list[ManifestRow]:
    return [ManifestRow(path=p, source="gen", label=fine, fine_label=fine, split=split)
            for p in paths]


def test_training_has_no_init_py() -> None:
    # training/ must never become an importable top-level package
    assert not list((REPO / "training").rglob("__init__.py"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipes_parse(path: Path) -> None:
    r = load_recipe(path)
    assert r.text == path.read_text(encoding="utf-8")
    assert r.name and r.version


def test_recipes_exist() -> None:
    names = {p.name for p in RECIPES}
    assert {"quick.yaml", "wildvision-base-v2.yaml"} <= names


def test_readme_documents_every_recipe_key() -> None:
    readme = (REPO / "training" / "README.md").read_text(encoding="utf-8")
    missing = []
    for f in dataclasses.fields(Recipe):
        if f.name in ("text", "path"):
            continue
        if f"`{f.name}`" not in readme:
            missing.append(f.name)
        sub = f.type if dataclasses.is_dataclass(f.type) else None
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if sub is None and dataclasses.is_dataclass(default):
            for g in dataclasses.fields(default):
                if f"`{f.name}.{g.name}`" not in readme:
                    missing.append(f"{f.name}.{g.name}")
    assert not missing, f"training/README.md does not document: {missing}"


def test_unknown_keys_are_named_with_the_closest_valid_key() -> None:
    with pytest.raises(ConfigError) as e:
        parse_recipe({"name": "x", "learning_rate": 0.1, "freeze": {"top_block": 2},
                      "epochs": "many"})
    msg = str(e.value)
    assert "3 problems" in msg
    assert "'freeze.top_block'" in msg and "did you mean 'top_blocks'" in msg
    assert "'learning_rate'" in msg
    assert "epochs: expected an integer" in msg


def test_recipe_typo_in_a_file_fails_before_anything(tmp_path: Path) -> None:
    bad = tmp_path / "r.yaml"
    bad.write_text(QUICK.read_text(encoding="utf-8").replace("label_smoothing:",
                                                             "label_smooting:"))
    with pytest.raises(ConfigError, match=r"did you mean 'label_smoothing'"):
        load_recipe(bad)
    rc = main(["train", "--data", str(tmp_path / "nothing.csv"), "--recipe", str(bad),
               "--out", str(tmp_path / "run")])
    assert rc == 2
    assert not (tmp_path / "run").exists()


def test_value_checks() -> None:
    with pytest.raises(ConfigError) as e:
        parse_recipe({"name": "x", "epochs": 0, "calibration": {"flag_precision": 0.5,
                                                                 "review_precision": 0.9},
                      "balance": "magic"})
    msg = str(e.value)
    assert "epochs" in msg and "review_precision <= flag_precision" in msg and "balance" in msg
    with pytest.raises(ConfigError, match="missing required key 'name'"):
        parse_recipe({"epochs": 2})
    with pytest.raises(ConfigError, match=r"early_stopping.monitor: one of .*val_loss.*'acc'"):
        parse_recipe({"name": "x", "early_stopping": {"monitor": "acc"}})
    assert parse_recipe({"name": "x", "early_stopping": {"monitor": "val_loss"}}
                        ).early_stopping.monitor == "val_loss"


def test_bad_manifest_lists_every_problem_before_training(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    data = tmp_path / "data"
    rows = _rows(_images(data, "ceramics", 3), "ceramics")
    rows += _rows(_images(data, "clothing", 3), "clothing")
    rows += [ManifestRow(path="ceramics/missing.png", source="gen", label="ceramics",
                         fine_label="ceramics", split="train")]
    rows += _rows(_images(data, "unicorn", 2), "unicron")  # unknown label (typo)
    rows += _rows(_images(data, "watch", 2), "watch", split="val")  # no training images
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, rows)
    recipe = load_recipe(QUICK)
    with pytest.raises(DataError) as e:
        prepare_data(manifest, recipe, data_root=data)
    msg = str(e.value)
    assert "3 problems" in msg
    assert "missing.png" in msg and "not found" in msg
    assert "unknown label 'unicron'" in msg and "labels.new" in msg
    assert "empty classes" in msg and "'watch' has 0 training images (2 val/test images)" in msg

    out = tmp_path / "run"
    rc = main(["train", "--data", str(manifest), "--data-root", str(data), "--recipe",
               str(QUICK), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("wildvision: error:") == 1 and "unicron" in err and "missing.png" in err
    assert not out.exists()  # nothing was started


def test_new_labels_from_recipe_and_manifest_group(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rows = _rows(_images(data, "ceramics", 5), "ceramics")
    rows += _rows(_images(data, "snow_lotus", 5, seed=1), "snow_lotus_carving")
    rows += [r.with_(group="ivory") for r in
             _rows(_images(data, "mammoth", 5, seed=2), "mammoth_ivory_carving")]
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, rows)
    base = load_recipe(QUICK)
    recipe = dataclasses.replace(base, labels=dataclasses.replace(
        base.labels, new={"snow_lotus_carving": "benign"}))
    td = prepare_data(manifest, recipe, data_root=data)
    assert td.labels == ("ceramics", "mammoth_ivory_carving", "snow_lotus_carving")
    assert td.new_labels == {"snow_lotus_carving": "benign", "mammoth_ivory_carving": "ivory"}
    assert group_of("mammoth_ivory_carving") == "ivory"  # registered in the taxonomy
    # no val split in the manifest: a deterministic 20% per class becomes validation
    assert td.auto_split
    assert td.counts("val") == {lab: 1 for lab in td.labels}
    assert td.counts("train") == {lab: 4 for lab in td.labels}
    again = prepare_data(manifest, recipe, data_root=data)
    assert [s.path for s in again.val] == [s.path for s in td.val]
    # a conflicting declaration is an error
    bad = dataclasses.replace(base, labels=dataclasses.replace(
        base.labels, new={"ceramics": "ivory"}))
    with pytest.raises(DataError, match="already a taxonomy label"):
        prepare_data(manifest, bad, data_root=data)


def test_merge_exclude_and_limit(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rows = _rows(_images(data, "cup", 6), "tableware")
    rows += _rows(_images(data, "ewer", 6, seed=1), "statue_figurine")
    rows += _rows(_images(data, "watch", 6, seed=2), "watch")
    rows += _rows(_images(data, "shirt", 6, seed=3), "clothing")
    rows += _rows(_images(data, "cupv", 3, seed=4), "tableware", split="val")
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, rows)
    base = load_recipe(QUICK)
    recipe = dataclasses.replace(base, labels=dataclasses.replace(
        base.labels, merge={"statue_figurine": "tableware"}, exclude=("watch",)))
    td = prepare_data(manifest, recipe, data_root=data)
    assert td.labels == ("tableware", "clothing")
    assert td.counts("train") == {"tableware": 12, "clothing": 6}
    assert td.counts("val") == {"tableware": 3, "clothing": 0}
    assert not td.auto_split
    limited = prepare_data(manifest, recipe, data_root=data, limit_per_class=5)
    assert limited.counts("train") == {"tableware": 5, "clothing": 5}
    assert limited.counts("val") == {"tableware": 3, "clothing": 0}


def test_single_class_is_an_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, _rows(_images(data, "cup", 3), "tableware"))
    with pytest.raises(DataError, match="at least 2 classes"):
        prepare_data(manifest, load_recipe(QUICK), data_root=data)


def test_cli_plugin_imports_no_heavy_module() -> None:
    import subprocess
    import sys

    code = ("import sys; import wildvision.cli as c; c.build_parser(); "
            "import wildvision.train; "
            "heavy = [m for m in ('torch', 'timm', 'albumentations', 'cv2') if m in sys.modules];"
            " print(heavy); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    help_text = subprocess.run([sys.executable, "-m", "wildvision.cli", "train", "--help"],
                               capture_output=True, text=True)
    assert help_text.returncode == 0
    for flag in ("--data", "--recipe", "--out", "--data-root", "--resume", "--head-only",
                 "--from-scratch", "--weights", "--epochs", "--limit-per-class"):
        assert flag in help_text.stdout
