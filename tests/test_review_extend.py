"""Reviewer decisions -> manifest -> ``extend`` end to end on the tiny test model, and
explanations of the extended package (its head is ``head.npz``, read by the same
:func:`wildvision.head.head_weights`)."""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from wildvision import Classifier
from wildvision.cli import main
from wildvision.data.reviews import DECISION_FIELDS, manifest_from_reviews
from wildvision.extend import extend_model
from wildvision.head import HEAD_FILE, head_weights
from wildvision.modelpack import load_package
from wildvision.scores import softmax

from conftest import encode, photo_like


def _write(folder: Path, n: int, seed: int, size: tuple[int, int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"{seed}_{i}.png"
        p.write_bytes(encode(photo_like(*size, seed=seed * 1000 + i), "PNG"))
        out.append(p)
    return out


@pytest.fixture(scope="module")
def banked(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("banked")
    pkg = root / "tiny"
    shutil.copytree(tiny_model_dir, pkg)
    labels = load_package(pkg).card.labels
    imgs = _write(root / "imgs", 300, seed=1, size=(56, 48))
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "fine_label", "split"])
        for i, p in enumerate(imgs):
            w.writerow([p.relative_to(root), labels[i % len(labels)],
                        "val" if i % 5 == 0 else "train"])
    assert main(["export", "bank", str(pkg), "--data", str(root / "manifest.csv")]) == 0
    return pkg


@pytest.mark.slow  # the bank export of 300 images
def test_decisions_become_an_extended_model_that_explains(banked: Path, tmp_path: Path) -> None:
    photos = _write(tmp_path / "reviewed", 14, seed=8, size=(64, 64))
    card = load_package(banked).card
    with open(tmp_path / "decisions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(DECISION_FIELDS))
        w.writeheader()
        for p in photos:  # what the page exports after relabelling each photo
            w.writerow({"image_sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                        "source": p.name, "path": str(p), "model": card.name,
                        "model_version": card.version, "original_decision": "review",
                        "original_group": "ivory", "original_probability": "0.6",
                        "action": "relabel", "reviewer_label": "rhino_horn_carved",
                        "reviewer_group": "rhino_horn", "reviewer": "t",
                        "reviewed_at": "2026-01-01T00:00:00Z", "results_sha256": ""})
    manifest = tmp_path / "m" / "manifest.csv"
    res = manifest_from_reviews(tmp_path / "decisions.csv", manifest)
    assert len(res.rows) == 14 and not res.skipped
    ext = extend_model(banked, manifest, tmp_path / "ext", max_drop=100, min_photos=5)
    pkg = load_package(tmp_path / "ext")
    assert "rhino_horn_carved" in pkg.card.labels and HEAD_FILE in pkg.card.files
    assert ext.card.labels == pkg.card.labels
    # The extended head is what head_weights returns, and it is what the classifier applies.
    head = head_weights(pkg)
    assert head.weight.shape[0] == len(pkg.card.labels)
    clf = Classifier(pkg, explain=True, return_embedding=True, top_k=len(pkg.card.labels))
    p = clf.classify(photos[0])
    emb = np.asarray(p.embedding, np.float32)[None]
    probs = softmax(head.logits(emb), pkg.card.temperature)[0]
    by_label = {s.label: s.probability for s in p.top_labels}
    for i, lab in enumerate(pkg.card.labels):
        assert by_label[lab] == pytest.approx(float(probs[i]), abs=1e-4)
    assert p.explanation is not None and p.explanation.image_size == (64, 64)
    e = clf.explain(photos[0], group="rhino_horn")
    assert e.group == "rhino_horn" and e.heatmap.max() <= 1.0
    assert e.probability == pytest.approx(p.group("rhino_horn").probability, abs=1e-5)
