"""``wildvision extend`` and ``wildvision export bank`` on the tiny test model: the bank, the
numpy head applied by every load path, lineage, chaining, bad input, no torch. The real-photo
acceptance tests (the default model) are in tests/test_extend_real.py."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from wildvision import Classifier
from wildvision.bank import BANK_FILE, build_bank, load_bank, package_bank
from wildvision.cli import main
from wildvision.errors import (
    ConfigError,
    DataError,
    ModelIntegrityError,
    RetentionError,
    UnknownModelError,
)
from wildvision.export.bank import add_bank
from wildvision.extend import drop_labels, extend_model, parse_group_specs, read_new_data
from wildvision.extend.fit import balanced_weights, fit_softmax
from wildvision.head import HEAD_FILE, LinearHead, package_head
from wildvision.modelpack import load_package
from wildvision.scores import softmax

from conftest import encode, photo_like

N_BANK = 300


def _write_images(folder: Path, n: int, seed: int, size: tuple[int, int] = (56, 48)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"{seed}_{i}.png"
        p.write_bytes(encode(photo_like(*size, seed=seed * 1000 + i), "PNG"))
        out.append(p)
    return out


@pytest.fixture(scope="module")
def banked(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A copy of the tiny model with a bank built by ``wildvision export bank`` from 300
    generated images (labels round-robin over the model's labels, 80/20 train/val)."""
    root = tmp_path_factory.mktemp("banked")
    pkg = root / "tiny"
    shutil.copytree(tiny_model_dir, pkg)
    labels = load_package(pkg).card.labels
    imgs = _write_images(root / "imgs", N_BANK, seed=1)
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "fine_label", "split"])
        for i, p in enumerate(imgs):
            w.writerow([p.relative_to(root), labels[i % len(labels)],
                        "val" if i % 5 == 0 else "train"])
    assert main(["export", "bank", str(pkg), "--data", str(root / "manifest.csv")]) == 0
    return pkg


@pytest.fixture()
def new_photos(tmp_path: Path) -> Path:
    """Folders of new photos: ``sea_shell`` (benign, 14) and ``tiger_claw`` (12)."""
    _write_images(tmp_path / "new" / "sea_shell", 14, seed=7, size=(40, 60))
    _write_images(tmp_path / "new" / "tiger_claw", 12, seed=8, size=(64, 64))
    return tmp_path / "new"


GROUPS = {"sea_shell": "benign", "tiger_claw": "tiger_parts"}


def test_bank_is_listed_hashed_and_reproduces_the_head(banked: Path) -> None:
    pkg = load_package(banked)  # verifies every sha256, bank.npz included
    assert BANK_FILE in pkg.card.files
    rec = pkg.card.extra["bank"]
    assert rec["rows"] == {"train": 240, "val": 60}
    assert rec["manifest_sha256"] and rec["command"].startswith("wildvision export bank")
    assert rec["head_max_abs_diff"] < 0.05 and rec["head_source"] == "model.onnx"
    bank = package_bank(pkg)
    assert bank is not None and bank.label_names == pkg.card.labels
    # orthonormal projection; the stored head gives the model's own logits
    p = bank.projection.astype(np.float64)
    assert np.allclose(p @ p.T, np.eye(len(p)), atol=1e-4)
    clf = Classifier(pkg, open_set=False)
    img = photo_like(50, 50, seed=123)
    from wildvision.bank import embed_images

    e = embed_images(clf, [img])
    approx = bank.project(e.embeddings) @ bank.head_weight.T + bank.head_bias
    assert np.abs(approx - e.logits).max() < 1e-3
    with np.load(banked / BANK_FILE, allow_pickle=False) as d:  # plain arrays only
        assert d["embeddings"].dtype == np.float16


def test_build_bank_keeps_the_size_budget_by_subsampling_training_rows() -> None:
    rng = np.random.default_rng(0)
    e = rng.normal(size=(600, 32)).astype(np.float32)
    labels = ["a"] * 500 + ["b"] * 50 + ["a"] * 40 + ["b"] * 10
    splits = ["train"] * 550 + ["val"] * 50
    w, b = rng.normal(size=(2, 32)), rng.normal(size=2)
    bank, rec = build_bank(e, labels, splits, ("a", "b"), (w, b), dims=16, max_bytes=12_000)
    assert rec["subsampled"] and bank.nbytes() <= 12_000
    assert (bank.splits == 1).sum() == 50  # every validation row kept
    assert list(bank.train_counts) == [500, 50]  # true counts, for the label weights
    kept_b = int(((bank.labels == 1) & (bank.splits == 0)).sum())
    assert kept_b == 50 or kept_b == int(((bank.labels == 0) & (bank.splits == 0)).sum())


def test_fit_softmax_matches_a_known_optimum() -> None:
    """Separable-ish data: the fit lowers the loss from the warm start, its gradient is ~0,
    and a huge pull keeps the warm start."""
    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(-1, 1, (100, 5)), rng.normal(1, 1, (100, 5))])
    y = np.array([0] * 100 + [1] * 100)
    s = balanced_weights(y, np.array([100.0, 100.0]))
    w0, b0 = np.zeros((2, 5)), np.zeros(2)
    w, b, _ = fit_softmax(x, y, s, w0, b0, 0.01)
    acc = ((x @ w.T + b).argmax(1) == y).mean()
    assert acc > 0.85
    # stationarity: numeric gradient of the objective at the solution is ~0
    def obj(wf: np.ndarray) -> float:
        ww = wf.reshape(2, 5)
        lp = np.log(softmax(x @ ww.T + b))
        return float(-(lp[np.arange(200), y]).mean() + 0.005 * (ww ** 2).sum())
    g = np.array([(obj(w.ravel() + 1e-5 * np.eye(10)[i]) - obj(w.ravel() - 1e-5 * np.eye(10)[i]))
                  / 2e-5 for i in range(10)])
    assert np.abs(g).max() < 1e-3
    w_big, _, _ = fit_softmax(x, y, s, w0 + 0.3, b0, 1e6)
    assert np.abs(w_big - (w0 + 0.3)).max() < 1e-3


def test_extend_writes_a_package_every_path_uses(banked: Path, new_photos: Path,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "ext"
    res = extend_model(banked, [new_photos], out, groups=GROUPS, max_drop=100,
                       command="test")
    pkg = load_package(out)
    card = pkg.card
    assert card.labels[-2:] == ("sea_shell", "tiger_claw")
    assert card.label_groups["tiger_claw"] == "tiger_parts"
    assert "tiger_parts" in card.groups and "tiger_parts" in card.thresholds
    assert {HEAD_FILE, BANK_FILE, "model.onnx"} <= set(card.files)
    # lineage: base name, version, file sha256, manifest sha256, counts per new label
    step = card.extra["lineage"][-1]
    base = load_package(banked).card
    assert step["step"] == "extend"
    assert step["base"] == base.name and step["base_version"] == base.version
    assert step["base_files"]["model.onnx"] == base.files["model.onnx"]
    assert len(step["data_sha256"]) == 64
    assert step["labels"]["sea_shell"]["train"] + step["labels"]["sea_shell"]["val"] == 14
    assert set(res.retention) == set(base.groups)
    assert card.metrics["retention"]["per_group"] == res.retention
    # the classifier applies the head: probabilities are softmax(head(embedding) / T)
    clf = Classifier(out, open_set=False, return_embedding=True, top_k=len(card.labels))
    p = clf.classify(photo_like(60, 40, seed=5))
    head = package_head(pkg)
    assert head is not None
    want = softmax(head.logits(np.array([p.embedding])), card.temperature)[0]
    got = {s.label: s.probability for s in p.top_labels}
    for i, lab in enumerate(card.labels):
        assert got[lab] == pytest.approx(want[i], abs=1e-5)
    # the bank grew by the new photos, so the package can be extended again
    bank = package_bank(pkg)
    assert bank is not None and len(bank.labels) == N_BANK + 26
    assert bank.label_names == card.labels


def test_chained_extension_keeps_the_lineage(banked: Path, new_photos: Path,
                                             tmp_path: Path) -> None:
    first = tmp_path / "first"
    extend_model(banked, [new_photos / "sea_shell"], first, groups={"sea_shell": "benign"},
                 max_drop=100)
    second = tmp_path / "second"
    extend_model(first, [new_photos / "tiger_claw"], second,
                 groups={"tiger_claw": "tiger_parts"}, max_drop=100)
    card = load_package(second).card
    assert card.labels[-2:] == ("sea_shell", "tiger_claw")
    chain = card.extra["lineage"]
    assert [s["base"] for s in chain] == ["tiny-test", "first"]
    assert chain[1]["base_files"][HEAD_FILE] == load_package(first).card.files[HEAD_FILE]
    out = subprocess.run([sys.executable, "-m", "wildvision.cli", "models", "show",
                          str(second)], capture_output=True, text=True, check=True).stdout
    assert "Lineage" in out and "tiny-test" in out and "first" in out


def test_more_photos_of_a_base_label_add_no_label(banked: Path, tmp_path: Path) -> None:
    _write_images(tmp_path / "d" / "ceramics", 6, seed=9)
    out = tmp_path / "more"
    extend_model(banked, [tmp_path / "d"], out, max_drop=100)
    card = load_package(out).card
    assert card.labels == load_package(banked).card.labels
    assert card.extra["lineage"][-1]["labels"]["ceramics"]["kind"] == "added"


def test_retention_refuses_and_force_records_it(banked: Path, new_photos: Path,
                                               tmp_path: Path) -> None:
    out = tmp_path / "refused"
    with pytest.raises(RetentionError, match="nothing was written"):
        extend_model(banked, [new_photos], out, groups=GROUPS, max_drop=-1.0)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".refused")]
    with pytest.warns(UserWarning, match="FORCED"):
        res = extend_model(banked, [new_photos], out, groups=GROUPS, max_drop=-1.0,
                           force=True)
    assert res.forced
    ext = load_package(out).card.extra["extension"]
    assert ext["forced"] is True and "force" in ext["warning"]


def test_bad_input_is_a_clear_error_and_writes_nothing(banked: Path, new_photos: Path,
                                                       tmp_path: Path,
                                                       tiny_model_dir: Path) -> None:
    out = tmp_path / "out"

    def nothing_written() -> None:
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]

    with pytest.raises(UnknownModelError, match="no-such-model"):
        extend_model("no-such-model", [new_photos], out, groups=GROUPS)
    nothing_written()
    with pytest.raises(ConfigError, match="no extension bank"):
        extend_model(tiny_model_dir, [new_photos], out, groups=GROUPS)
    nothing_written()
    # a new label clashing with a base label of another group
    _write_images(tmp_path / "clash" / "ceramics", 12, seed=3)
    with pytest.raises(ConfigError, match="clashes with the base model's label 'ceramics'"):
        extend_model(banked, [tmp_path / "clash"], out, groups={"ceramics": "ivory"})
    nothing_written()
    with pytest.raises(ConfigError, match="need a group"):
        extend_model(banked, [new_photos], out, groups={"sea_shell": "benign"})
    with pytest.raises(ConfigError, match="unknown group"):
        extend_model(banked, [new_photos], out, groups={**GROUPS, "sea_shell": "shells"})
    # the taxonomy's own labels keep their group
    _write_images(tmp_path / "tax" / "tiger_bone", 12, seed=4)
    with pytest.raises(ConfigError, match="in group 'tiger_parts' in the wildvision taxonomy"):
        extend_model(banked, [tmp_path / "tax"], out, groups={"tiger_bone": "benign"})
    nothing_written()
    # too few photos
    with pytest.raises(DataError, match=r"fewer than 20 readable photos: sea_shell \(14\)"):
        extend_model(banked, [new_photos], out, groups=GROUPS, min_photos=20)
    nothing_written()
    # missing paths in a manifest
    m = tmp_path / "new.csv"
    m.write_text("path,fine_label,group\nnope/a.jpg,sea_shell,benign\n"
                 f"{sorted((new_photos / 'sea_shell').iterdir())[0]},sea_shell,benign\n",
                 encoding="utf-8")
    with pytest.raises(DataError, match=r"1 path\(s\) do not exist.*nope/a.jpg"):
        extend_model(banked, m, out)
    with pytest.raises(DataError, match="not a folder"):
        extend_model(banked, [tmp_path / "missing"], out, groups=GROUPS)
    # an existing output folder
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ConfigError, match="already exists"):
        extend_model(banked, [new_photos], tmp_path / "full", groups=GROUPS)
    nothing_written()
    with pytest.raises(ConfigError, match="LABEL=GROUP"):
        parse_group_specs(["sea_shell"])


def test_unreadable_photos_are_listed_not_fatal(banked: Path, new_photos: Path,
                                                tmp_path: Path) -> None:
    (new_photos / "sea_shell" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    res = extend_model(banked, [new_photos], tmp_path / "ext", groups=GROUPS, max_drop=100)
    assert [Path(f.source).name for f in res.failures] == ["broken.jpg"]
    card = load_package(tmp_path / "ext").card
    assert card.extra["lineage"][-1]["unreadable"] == 1
    assert card.extra["extension"]["unreadable"][0]["source"].endswith("broken.jpg")


def test_manifest_input_with_splits_and_test_rows(banked: Path, new_photos: Path,
                                                  tmp_path: Path) -> None:
    files = sorted((new_photos / "tiger_claw").iterdir())
    m = tmp_path / "new.csv"
    rows = ["path,fine_label,group,split"]
    for i, f in enumerate(files):
        rows.append(f"{f},tiger_claw,tiger_parts,{['train', 'train', 'val', 'test'][i % 4]}")
    m.write_text("\n".join(rows) + "\n", encoding="utf-8")
    data = read_new_data(m)
    assert data.left_out == 3 and len(data.photos) == 9
    res = extend_model(banked, m, tmp_path / "ext", max_drop=100, min_photos=5)
    step = res.card.extra["lineage"][-1]
    assert step["labels"]["tiger_claw"] == {"group": "tiger_parts", "kind": "new", "train": 6,
                                            "val": 3}
    assert step["data_sha256"] == data.manifest_sha256 and step["left_out_test_rows"] == 3


def test_tampered_head_is_refused(banked: Path, new_photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "ext"
    extend_model(banked, [new_photos], out, groups=GROUPS, max_drop=100)
    LinearHead(np.zeros((11, 256), np.float32), np.zeros(11, np.float32)).save(out / HEAD_FILE)
    with pytest.raises(ModelIntegrityError, match="sha256 mismatch"):
        load_package(out)


def test_cli_extend_and_models_show(banked: Path, new_photos: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli-ext"
    rc = main(["extend", "--base", str(banked), "--data", str(new_photos), "--out", str(out),
               "--group", "sea_shell=benign", "--group", "tiger_claw=tiger_parts",
               "--max-drop", "100"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["labels"] == 11 and set(summary["new_labels"]) == set(GROUPS)
    card = load_package(out).card
    assert card.training["command"].startswith("wildvision extend --base")
    assert main(["models", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "Lineage" in shown and "extend" in shown and "tiny-test 0.0.1" in shown
    # a bad input through the CLI: a one-line error, exit 2 (usage) / 1 (data)
    assert main(["extend", "--base", str(banked), "--data", str(new_photos), "--out",
                 str(tmp_path / "x"), "--group", "sea_shell=benign"]) == 2
    assert "need a group" in capsys.readouterr().err


def test_extend_imports_no_torch(banked: Path, new_photos: Path, tmp_path: Path) -> None:
    code = (
        "import sys, warnings\n"
        "from wildvision.cli import main\n"
        f"rc = main(['extend', '--base', {str(banked)!r}, '--data', {str(new_photos)!r}, "
        f"'--out', {str(tmp_path / 'e')!r}, '--group', 'sea_shell=benign', '--group', "
        "'tiger_claw=tiger_parts', '--max-drop', '100'])\n"
        "assert rc == 0, rc\n"
        "from wildvision import Classifier\n"
        f"Classifier({str(tmp_path / 'e')!r}).classify_many([])\n"
        "print('torch' in sys.modules, 'onnx' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert res.stdout.split()[-2:] == ["False", "False"]


def test_load_bank_rejects_a_non_bank(tmp_path: Path) -> None:
    p = tmp_path / "b.npz"
    np.savez(p, x=np.zeros(3))
    with pytest.raises(ModelIntegrityError, match="not a bank file"):
        load_bank(p)


def test_bank_export_needs_both_splits(banked: Path, tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    img = _write_images(tmp_path / "i", 1, seed=2)[0]
    m.write_text(f"path,fine_label,split\n{img},ceramics,train\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="both are needed"):
        add_bank(banked, m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert package_bank(load_package(banked)) is not None


def test_a_review_budget_policy_in_the_base_card_is_reapplied(banked: Path, new_photos: Path,
                                                             tmp_path: Path) -> None:
    from wildvision.modelcard_md import write_card

    base = tmp_path / "with-policy"
    shutil.copytree(banked, base)
    card = load_package(base).card
    write_card(base, card.with_updates(extra={
        **card.extra, "policy": {"review_budget": 0.05, "flag_precision": 0.9,
                                 "min_positives": 5}}))
    res = extend_model(base, [new_photos], tmp_path / "ext", groups=GROUPS, max_drop=100)
    pol = res.card.extra["policy"]
    assert pol["review_budget"] == 0.05 and pol["flag_precision"] == 0.9
    assert pol["calibration_photos"]["count"] > 0
    assert pol["thresholds"] == {g: t.to_dict() for g, t in res.card.thresholds.items()}
    assert "review budget of 5.00%" in res.card.extra["thresholds_note"]


def test_drop_labels_writes_a_package_without_them(banked: Path, tmp_path: Path) -> None:
    """The kept labels' scores are the base model's renormalised without the dropped ones;
    the bank loses their rows; extending the result with one of them gives it back."""
    base = load_package(banked)
    out = tmp_path / "dropped"
    pkg = drop_labels(banked, ["tiger_skin", "ceramics"], out, command="test")
    card = pkg.card
    assert card.labels == tuple(lab for lab in base.card.labels
                                if lab not in ("tiger_skin", "ceramics"))
    assert "tiger_parts" not in card.thresholds and "tiger_parts" not in card.groups
    assert card.thresholds["ivory"] == base.card.thresholds["ivory"]
    assert card.temperature == base.card.temperature
    assert {HEAD_FILE, BANK_FILE, "model.onnx"} <= set(card.files)
    step = card.extra["lineage"][-1]
    assert step["step"] == "drop_labels" and step["base"] == base.card.name
    assert step["dropped"] == {"tiger_skin": "tiger_parts", "ceramics": "benign"}
    # scores: the base's logits without the dropped rows
    img = photo_like(70, 50, seed=11)
    full = Classifier(banked, open_set=False, top_k=9).classify(img)
    part = Classifier(out, open_set=False, top_k=7).classify(img)
    b_logit = {s.label: np.log(s.probability) for s in full.top_labels}  # type: ignore[union-attr]
    kept = np.array([b_logit[lab] for lab in card.labels])
    want = np.exp(kept - kept.max()) / np.exp(kept - kept.max()).sum()
    got = {s.label: s.probability for s in part.top_labels}  # type: ignore[union-attr]
    for i, lab in enumerate(card.labels):
        assert got[lab] == pytest.approx(want[i], abs=1e-5)
    # the bank: no rows of the dropped labels, the rest unchanged
    old, new = package_bank(base), package_bank(pkg)
    assert old is not None and new is not None
    assert new.label_names == card.labels
    gone = {base.card.labels.index("tiger_skin"), base.card.labels.index("ceramics")}
    assert len(new.labels) == sum(int(x) not in gone for x in old.labels)
    assert np.array_equal(new.head_weight, old.head_weight[[i for i in range(9)
                                                            if i not in gone]])
    # extending it with a dropped label adds the label back (a new label, its own group)
    photos = tmp_path / "new"
    _write_images(photos / "tiger_skin", 14, seed=9)
    ext = extend_model(out, [photos], tmp_path / "back", max_drop=100, command="test")
    assert ext.card.labels[-1] == "tiger_skin"
    assert ext.card.label_groups["tiger_skin"] == "tiger_parts"
    assert [s["step"] for s in ext.card.extra["lineage"]] == ["drop_labels", "extend"]


def test_drop_labels_bad_input(banked: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no label"):
        drop_labels(banked, ["no_such_label"], tmp_path / "a")
    labels = load_package(banked).card.labels
    with pytest.raises(ConfigError, match="at least two"):
        drop_labels(banked, labels[1:], tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("x")
    with pytest.raises(ConfigError, match="already exists"):
        drop_labels(banked, ["ceramics"], tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
