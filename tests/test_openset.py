"""The familiarity (open-set) gate: wildvision.openset, `wildvision export familiarity`, and
its effect on predictions."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from wildvision.cli import main
from wildvision.errors import ConfigError, ModelIntegrityError
from wildvision.modelpack import load_package
from wildvision.openset import FAMILIARITY_FILE, build_familiarity, load_familiarity
from wildvision.predict import Classifier

from conftest import encode, photo_like


def _clusters(rng: np.random.Generator, n: int, dim: int = 64, noise: float = 1.0
              ) -> np.ndarray:
    """``n`` points around two directions (e1, e2) of a ``dim``-wide space."""
    centres = np.eye(dim, dtype=np.float32)[:2] * 5
    return centres[rng.integers(0, 2, n)] + noise * rng.normal(size=(n, dim)).astype(np.float32)


def test_gate_scores_training_like_points_above_and_others_below(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train, pos = _clusters(rng, 400), _clusters(rng, 200)
    far_pos = _clusters(rng, 100, noise=2.0)  # a second group: its photos sit farther away
    gate, rec = build_familiarity(train, {"ivory": pos, "live_protected_animal": far_pos,
                                          "pangolin": np.zeros((0, 64))},
                                  dims=16, quantile=0.05)
    assert rec["dims"] == 16 and rec["references"] == 400
    assert rec["validation_positives"] == {"ivory": 200, "live_protected_animal": 100,
                                           "pangolin": 0}
    assert set(gate.thresholds) == {"ivory", "live_protected_animal"}  # pangolin: no gate
    s = gate.score(pos)
    # each threshold is the stated quantile of its own group's positives
    assert np.mean(s < gate.thresholds["ivory"]) == pytest.approx(0.05, abs=0.01)
    s2 = gate.score(far_pos)
    assert np.mean(s2 < gate.thresholds["live_protected_animal"]) == pytest.approx(0.05,
                                                                                 abs=0.02)
    assert gate.thresholds["live_protected_animal"] < gate.thresholds["ivory"]
    assert rec["thresholds"] == gate.thresholds
    assert gate.is_familiar(pos[:3], "pangolin").all()  # an ungated group passes
    # a training point is its own nearest neighbour
    assert gate.score(train[:20]).min() > 0.99
    # points along a direction no training point has are unfamiliar
    far = np.zeros((10, 64), np.float32)
    far[:, 7] = 5
    far += rng.normal(size=far.shape).astype(np.float32) * 0.1
    assert not gate.is_familiar(far, "ivory").any()
    # the file round trip keeps the scores (references are float16)
    gate.save(tmp_path / FAMILIARITY_FILE)
    again = load_familiarity(tmp_path / FAMILIARITY_FILE, gate.thresholds)
    assert np.allclose(again.score(pos), s, atol=1e-6)


def test_gate_bad_inputs(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    gate, _ = build_familiarity(_clusters(rng, 50), {"ivory": _clusters(rng, 5)}, dims=8)
    with pytest.raises(ConfigError, match="32 wide, the reference set expects 64"):
        gate.score(np.zeros((2, 32)))
    with pytest.raises(ConfigError, match="no correctly flagged"):
        build_familiarity(_clusters(rng, 50), {"ivory": np.zeros((0, 64))})
    with pytest.raises(ConfigError, match="quantile"):
        build_familiarity(_clusters(rng, 50), {"ivory": _clusters(rng, 5)}, quantile=1.5)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ModelIntegrityError, match="not a familiarity file"):
        load_familiarity(bad, {"ivory": 0.5})


def _photos(root: Path, n: int, seed: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = root / f"img{i:03d}.jpg"
        p.write_bytes(encode(photo_like(80 + 3 * i, 64 + 2 * i, seed=seed + i), "JPEG"))
        out.append(p)
    return out


def _edit_card(pkg: Path, **changes: object) -> None:
    card = json.loads((pkg / "card.json").read_text(encoding="utf-8"))
    for key, value in changes.items():
        if key == "familiarity_threshold":
            card["familiarity"]["thresholds"] = {"ivory": value}
        else:
            card[key] = value
    (pkg / "card.json").write_text(json.dumps(card), encoding="utf-8")


def test_export_familiarity_and_the_gate_in_predictions(tiny_model_dir: Path,
                                                        tmp_path: Path) -> None:
    pkg = tmp_path / "model"
    shutil.copytree(tiny_model_dir, pkg)
    # flag everything as ivory, so every validation image is a "correct flag", and nothing as
    # another group (the tiny model's probabilities differ between images; only ivory is gated)
    card = json.loads((pkg / "card.json").read_text(encoding="utf-8"))
    for group in card["thresholds"]:
        card["thresholds"][group] = {"flag": 1.0, "review": 1.0}
    card["thresholds"]["ivory"] = {"flag": 0.0, "review": 0.0}
    (pkg / "card.json").write_text(json.dumps(card), encoding="utf-8")
    train, val = _photos(tmp_path / "train", 30, 0), _photos(tmp_path / "val", 10, 500)
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "fine_label", "group", "split"])
        w.writerows([str(p), "everyday_object", "benign", "train"] for p in train)
        w.writerows([str(p), "ivory_carving", "ivory", "val"] for p in val)

    assert main(["export", "familiarity", str(pkg), "--data", str(manifest), "--dims", "16",
                 "--quantile", "0.1"]) == 0
    package = load_package(pkg)  # the new file is in the card and its hash verifies
    assert FAMILIARITY_FILE in package.card.files
    rec = package.card.extra["familiarity"]
    assert rec["references"] == 30 and rec["validation_positives"]["ivory"] == 10
    assert rec["command"].startswith("wildvision export familiarity")
    readme = (pkg / "README.md").read_text(encoding="utf-8")
    assert "## Open-set gate (familiarity)" in readme
    assert "| thresholds | " in readme and str(rec["thresholds"]["ivory"]) in readme

    gated = Classifier(pkg).classify_many([str(p) for p in val])
    assert all(r.ok and r.familiarity is not None for r in gated)
    tau = rec["thresholds"]["ivory"]
    below = [r for r in gated if r.familiarity < tau]  # type: ignore[operator]
    assert len(below) <= 1  # the 10% quantile of 10 positives
    for r in gated:
        assert r.unfamiliar == (r.familiarity < tau)  # type: ignore[operator]
        assert r.decision == ("review" if r.unfamiliar else "flag")
        assert r.to_dict()["familiarity"] == pytest.approx(r.familiarity, abs=1e-6)
    # the bench records the gate and reports how many images it caught
    from wildvision.bench import run_bench

    run_bench([str(pkg)], manifest, tmp_path / "bench", split="val", plots=False)
    metrics = json.loads((tmp_path / "bench" / "metrics.json").read_text(encoding="utf-8"))
    unf = metrics["models"][0]["decisions"]["unfamiliar"]
    assert unf["flaggable_truth"] == pytest.approx(len(below) / len(val))
    assert unf["benign_truth"] is None  # no benign validation photo here
    # a training photo is familiar to itself
    assert Classifier(pkg).classify(str(train[3])).familiarity > 0.99  # type: ignore[operator]

    # a threshold above every score turns every flag into review, probabilities unchanged
    _edit_card(pkg, familiarity_threshold=1.01)
    plain = Classifier(pkg, open_set=False).classify_many([str(p) for p in val])
    strict = Classifier(pkg).classify_many([str(p) for p in val])
    for a, b in zip(plain, strict, strict=True):
        assert a.decision == "flag" and a.familiarity is None and not a.unfamiliar
        assert b.decision == "review" and b.unfamiliar
        assert b.group("ivory").decision == "review"
        assert b.group("ivory").probability == a.group("ivory").probability
    # the bench measures with the gate (default) and without it (--no-open-set)
    from wildvision.cli import main as cli_main

    for flag, out in (([], "gate"), (["--no-open-set"], "nogate")):
        assert cli_main(["bench", "-m", str(pkg), "--data", str(manifest), "--split", "val",
                         "--no-plots", "--bootstrap", "0", "--out", str(tmp_path / out),
                         *flag]) == 0
    with_gate, without = (json.loads((tmp_path / o / "metrics.json").read_text(
        encoding="utf-8"))["models"][0] for o in ("gate", "nogate"))
    assert with_gate["decisions"]["unfamiliar"]["flaggable_truth"] == 1.0
    assert "unfamiliar" not in without["decisions"]
    assert with_gate["headline"]["flag_recall"]["value"] == 0.0
    assert without["headline"]["flag_recall"]["value"] == 1.0
    assert "--no-open-set" in json.loads((tmp_path / "nogate" / "metrics.json").read_text(
        encoding="utf-8"))["provenance"]["command"]
    # -1 switches the gate off
    _edit_card(pkg, familiarity_threshold=-1)
    off = Classifier(pkg).classify(str(val[0]))
    assert off.familiarity is None and off.decision == "flag"


def test_training_adds_the_gate_through_the_same_path(tiny_model_dir: Path,
                                                      tmp_path: Path) -> None:
    """`wildvision train` ends with engine._add_open_set (recipe ``open_set``), on the rows
    and splits the trainer used: with a split column as given, and without one on the split
    the trainer made (it used to re-read the manifest and find 0 'train' and 0 'val' rows)."""
    pytest.importorskip("torch")
    from wildvision.train.data import prepare_data
    from wildvision.train.engine import _add_open_set
    from wildvision.train.recipe import parse_recipe

    def package(name: str, flag: float) -> Path:
        pkg = tmp_path / name
        shutil.copytree(tiny_model_dir, pkg)
        card = json.loads((pkg / "card.json").read_text(encoding="utf-8"))
        card["thresholds"]["ivory"] = {"flag": flag, "review": 0.0}
        (pkg / "card.json").write_text(json.dumps(card), encoding="utf-8")
        return pkg

    rows = [(p, "ivory_carving", "train" if i < 16 else "val")
            for i, p in enumerate(_photos(tmp_path / "ivory", 24, 0))]
    rows += [(p, "clothing", "train" if i < 8 else "val")
             for i, p in enumerate(_photos(tmp_path / "clothing", 12, 100))]
    recipe = parse_recipe({"name": "x", "open_set": {"quantile": 0.25, "dims": 4}})
    split = tmp_path / "m.csv"
    with open(split, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "fine_label", "split"])
        w.writerows([str(p), label, sp] for p, label, sp in rows)
    got = _add_open_set(package("model", 0.0), split, prepare_data(split, recipe), recipe,
                        False)
    assert got is not None and got.extra["familiarity"]["dims"] == 4
    # the group comes from the fine label
    assert got.extra["familiarity"]["validation_positives"]["ivory"] == 8
    assert got.extra["familiarity"]["references"] == 24
    assert got.extra["familiarity"]["quantile"] == 0.25
    # no split column: the trainer carves validation out of train, and the gate uses that
    unsplit = tmp_path / "unsplit.csv"
    unsplit.write_text("path,fine_label\n" + "".join(
        f"{p},{label}\n" for p, label, _ in rows), encoding="utf-8")
    data = prepare_data(unsplit, recipe)
    assert data.auto_split and data.val and data.train
    got = _add_open_set(package("model-unsplit", 0.0), unsplit, data, recipe, False)
    assert got is not None, "open-set gate not added"
    assert got.extra["familiarity"]["references"] == len(data.train)
    assert got.extra["familiarity"]["validation_positives"]["ivory"] == sum(
        s.row.fine_label == "ivory_carving" for s in data.val)
    # nothing correctly flagged on validation: skipped with a warning, the package untouched
    pkg = package("model-none", 1.0)
    assert _add_open_set(pkg, split, prepare_data(split, recipe), recipe, False) is None
    assert FAMILIARITY_FILE not in load_package(pkg).card.files


def test_familiarity_is_a_cosine_never_above_one() -> None:
    """A photo equal to a training photo scores 1, not 1.0002 (float16 references are unit
    vectors only to within rounding); what the CSV/JSON output shows is in [-1, 1]."""
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 32)).astype(np.float32)
    gate, _ = build_familiarity(train, {"ivory": train[:5]}, dims=16)
    s = gate.score(train)
    assert s.max() == np.float32(1.0) and s.min() > 0.99
    assert gate.score(-train).min() >= -1.0
