"""Classifier.iter_arrays: the model's outputs as numpy next to each result, for callers
that compute on them (bench, the open-set gate's export, known-photo indexes, calibrate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wildvision.predict import Classifier, Failure, Prediction


def _check(clf: Classifier, inputs: list[str]) -> None:
    plain = clf.classify_many(inputs)
    with_emb = Classifier(clf.package, clf.options.replace(return_embedding=True, top_k=10**6))
    full = with_emb.classify_many(inputs)
    pairs = list(clf.iter_arrays(inputs, batch_size=4))
    assert [r.to_dict() for r, _ in pairs] == [r.to_dict() for r in plain]
    labels, groups = clf.card.labels, clf.card.groups
    for (r, a), f in zip(pairs, full, strict=True):
        if isinstance(r, Failure):
            assert a is None
            continue
        assert isinstance(r, Prediction) and isinstance(f, Prediction) and a is not None
        assert a["probabilities"].shape == (len(labels),)
        assert a["probabilities"].dtype == np.float64
        np.testing.assert_allclose(a["probabilities"].sum(), 1.0, rtol=1e-9)
        by_label = {s.label: s.probability for s in f.top_labels}
        assert a["probabilities"].tolist() == [by_label[lab] for lab in labels]
        assert a["group_probabilities"].tolist() == [r.group(g).probability for g in groups]
        assert f.embedding is not None
        assert a["embedding"].dtype == np.float32
        assert a["embedding"].tolist() == list(f.embedding)
        if r.familiarity is None:
            assert "familiarity" not in a
        else:
            assert float(a["familiarity"]) == r.familiarity


def test_iter_arrays_tiny_model(tiny_model_dir: Path, photo_files: list[Path], tmp_path: Path
                                ) -> None:
    inputs = [str(p) for p in photo_files[:5]] + [str(tmp_path / "missing.jpg")]
    _check(Classifier(tiny_model_dir, threads=1), inputs)
    with pytest.raises(Exception, match="batch_size"):
        Classifier(tiny_model_dir).iter_arrays(inputs, batch_size=0)


def test_iter_arrays_default_model_with_its_gate(shared_data: Path) -> None:
    photos = sorted((shared_data / "met_ivory").rglob("*.jpg"))[:3]
    clf = Classifier(threads=1)  # the shipped default model, gate on
    assert clf.familiarity is not None
    _check(clf, [str(p) for p in photos])
