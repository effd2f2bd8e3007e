"""From images to Prediction/Failure records: batches that survive bad files, probabilities,
thresholds and decisions, the JSON contract, and the default-model errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wildvision.errors import (
    ConfigError,
    InvalidImageError,
    ModelNotInstalledError,
    UnknownModelError,
)
from wildvision.modelpack import Thresholds, load_package
from wildvision.predict import (
    Classifier,
    Failure,
    Prediction,
    classify_image,
    classify_images,
    iter_classify,
    softmax,
)
from wildvision.taxonomy import FLAGGABLE_GROUPS

from conftest import BAD_ZOO, ZooItem, mixed_inputs, photo_like


@pytest.fixture(scope="module")
def clf(tiny_model_dir: Path) -> Classifier:
    return Classifier(tiny_model_dir, threads=1, decode_workers=2)


def test_batch_of_100_with_10_bad_files(clf: Classifier, image_zoo: dict[str, ZooItem],
                                        photo_files: list[Path], tmp_path: Path) -> None:
    inputs, expected_bad = mixed_inputs(image_zoo, photo_files, tmp_path)
    assert len(inputs) == 100 and len(expected_bad) == 10
    results = clf.classify_many(inputs, batch_size=16)
    assert len(results) == 100
    assert [r.source for r in results] == inputs  # in input order
    assert sum(isinstance(r, Prediction) for r in results) == 90
    for i, r in enumerate(results):
        if i in expected_bad:
            assert isinstance(r, Failure), (i, r)
            assert r.ok is False
            assert r.error_type == expected_bad[i], (r.source, r.error_type, r.message)
            assert r.source in r.message  # the message names the file
            assert (r.model, r.model_version) == ("tiny-test", "0.0.1")
            d = r.to_dict()
            assert d["ok"] is False and d["error_type"] == r.error_type
            assert json.loads(r.to_json()) == d
        else:
            assert isinstance(r, Prediction), (i, r)
            assert r.ok is True


def test_batch_results_do_not_depend_on_batching(clf: Classifier, photo_files: list[Path],
                                                image_zoo: dict[str, ZooItem]) -> None:
    inputs: list[Any] = [str(p) for p in photo_files[:7]] + [str(image_zoo["empty.jpg"].path)]
    one_by_one = [clf.classify(p).to_dict() for p in inputs[:7]]
    # the photos get different outputs (the tiny model follows a colour rule), so results
    # attached to the wrong image would show
    assert len({d["decision"] for d in one_by_one}) >= 2
    assert len({d["top_labels"][0]["label"] for d in one_by_one}) >= 3
    for bs in (1, 3, 32):
        res = [r.to_dict() for r in clf.iter_classify(iter(inputs), batch_size=bs)]
        assert len(res) == 8 and res[7]["ok"] is False
        for a, b in zip(res[:7], one_by_one, strict=True):
            assert a["decision"] == b["decision"] and a["image_sha256"] == b["image_sha256"]
            for g in a["groups"]:
                assert abs(a["groups"][g]["probability"] - b["groups"][g]["probability"]) < 1e-5
    with pytest.raises(ConfigError, match="batch_size"):
        list(clf.iter_classify(inputs, batch_size=0))


def test_every_zoo_file_in_one_batch(clf: Classifier, image_zoo: dict[str, ZooItem]) -> None:
    items = list(image_zoo.values())
    results = classify_images([it.path for it in items], model=clf.package, batch_size=4)
    for it, r in zip(items, results, strict=True):
        if it.error is None:
            assert isinstance(r, Prediction), (it.name, r)
        else:
            assert isinstance(r, Failure) and r.error_type == it.error.__name__, (it.name, r)


def test_prediction_record(clf: Classifier, photo_files: list[Path]) -> None:
    path = photo_files[4]
    p = clf.classify(path)
    assert isinstance(p, Prediction)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.decision = "pass"  # type: ignore[misc]
    assert p.source == str(path)
    assert (p.model, p.model_version) == ("tiny-test", "0.0.1")
    assert p.image_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    with open(path, "rb") as f:
        from PIL import Image

        assert (p.width, p.height) == Image.open(f).size
    d = p.to_dict()
    assert json.loads(p.to_json()) == d
    assert json.loads(json.dumps(d)) == d
    for key in ("source", "ok", "decision", "flagged_groups", "top_group", "groups",
                "top_labels", "model", "model_version", "image_sha256", "width", "height"):
        assert key in d, key
    assert "embedding" not in d
    assert set(d["groups"]) == set(clf.card.groups)
    assert abs(sum(g.probability for g in p.groups) - 1.0) < 1e-9
    assert abs(sum(v["probability"] for v in d["groups"].values()) - 1.0) < 1e-5
    assert p.top_group == max(p.groups, key=lambda g: g.probability).group
    probs = [s.probability for s in p.top_labels]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True)
    assert p.group(p.top_group).probability == max(g.probability for g in p.groups)
    with pytest.raises(KeyError):
        p.group("dragons")


def test_probabilities_are_calibrated_softmax(clf: Classifier) -> None:
    imgs = np.random.default_rng(0).normal(0, 1, (4, 3, 64, 64)).astype(np.float32)
    out = clf.predict_arrays(imgs)
    logits = out["logits"].astype(np.float64)
    t = clf.card.temperature
    e = np.exp(logits / t - (logits / t).max(axis=1, keepdims=True))
    np.testing.assert_allclose(out["probabilities"], e / e.sum(axis=1, keepdims=True), atol=1e-12)
    groups = clf.card.groups
    for gi, g in enumerate(groups):
        idx = [i for i, lab in enumerate(clf.card.labels) if clf.card.label_groups[lab] == g]
        np.testing.assert_allclose(out["group_probabilities"][:, gi],
                                   out["probabilities"][:, idx].sum(axis=1), atol=1e-12)
    np.testing.assert_allclose(out["group_probabilities"].sum(axis=1), 1.0, atol=1e-12)
    assert out["logits"].shape == (4, len(clf.card.labels))
    # temperature scaling: T=2 halves the logits
    np.testing.assert_allclose(softmax(logits, 2.0), softmax(logits / 2.0), atol=1e-12)


def _expected_decisions(p: Prediction, thresholds: dict[str, Thresholds]
                        ) -> tuple[dict[str, str], str]:
    per_group = {}
    for g in p.groups:
        t = thresholds[g.group]
        if g.group not in FLAGGABLE_GROUPS:
            per_group[g.group] = "pass"
        elif g.probability >= t.flag:
            per_group[g.group] = "flag"
        elif g.probability >= t.review:
            per_group[g.group] = "review"
        else:
            per_group[g.group] = "pass"
    order = ["flag", "review", "pass"]
    overall = min(per_group.values(), key=order.index)
    return per_group, overall


def test_decisions_follow_the_card_thresholds(clf: Classifier, photo_files: list[Path]) -> None:
    card_thresholds = {g: clf.card.threshold(g) for g in clf.card.groups}
    for path in photo_files[:5]:
        p = clf.classify(path)
        per_group, overall = _expected_decisions(p, card_thresholds)
        assert {g.group: g.decision for g in p.groups} == per_group
        assert p.decision == overall
        assert p.flagged == (overall == "flag")
        assert p.flagged_groups == tuple(g for g, d in per_group.items() if d == "flag")
        for g in p.groups:
            assert (g.flag_threshold, g.review_threshold) == (
                card_thresholds[g.group].flag, card_thresholds[g.group].review)


def test_threshold_overrides(tiny_model_dir: Path, photo_files: list[Path]) -> None:
    """Make a known group flag, review or pass by moving its thresholds around its probability
    (computed from the model's output, not hard-coded)."""
    base = Classifier(tiny_model_dir, threads=1)
    src = photo_files[2]
    p0 = base.classify(src)
    g = max((x for x in p0.groups if x.group in FLAGGABLE_GROUPS), key=lambda x: x.probability)
    prob = g.probability
    others_pass = {x.group: {"flag": 1.0, "review": 1.0} for x in p0.groups
                   if x.group in FLAGGABLE_GROUPS and x.group != g.group}
    cases = {
        "flag": {"flag": prob * 0.99, "review": prob * 0.5},
        "review": {"flag": min(1.0, prob * 1.01), "review": prob * 0.99},
        "pass": {"flag": min(1.0, prob * 1.02), "review": min(1.0, prob * 1.01)},
    }
    for want, spec in cases.items():
        thresholds: dict[str, Any] = {**others_pass, g.group: spec}
        p = Classifier(base.package, threads=1, thresholds=thresholds).classify(src)
        assert abs(p.group(g.group).probability - prob) < 1e-9
        assert p.group(g.group).decision == want
        assert p.decision == want  # every other flaggable group is forced to pass
        assert p.group(g.group).flag_threshold == spec["flag"]
        merged = {x: base.thresholds[x] for x in base.thresholds}
        merged.update({k: Thresholds(**v) for k, v in thresholds.items()})
        assert _expected_decisions(p, merged) == (
            {x.group: x.decision for x in p.groups}, p.decision)
    # a bare number sets the flag threshold; a Thresholds object is taken as is
    flag_only = Classifier(base.package, thresholds={g.group: prob * 0.9})
    assert flag_only.thresholds[g.group].flag == pytest.approx(prob * 0.9)
    assert flag_only.classify(src).group(g.group).decision == "flag"
    obj = Classifier(base.package, thresholds={g.group: Thresholds(0.99, 0.98)})
    assert obj.classify(src).group(g.group).decision == "pass"
    # module-level API takes the same option
    assert classify_image(src, model=tiny_model_dir,
                          thresholds={g.group: prob * 0.9}).group(g.group).decision == "flag"


@pytest.mark.parametrize(
    ("thresholds", "match"),
    [
        ({"dragons": 0.5}, "unknown group 'dragons'"),
        ({"ivory": {"flag": 0.3, "review": 0.6}}, "review <= flag"),
        ({"ivory": 1.5}, "review <= flag <= 1"),
        ({"ivory": -0.1}, "0 <= review"),
        ({"ivory": {"flag": 0.9, "warn": 0.5}}, "'flag'/'review'"),
        ({"ivory": {"flag": "high"}}, "must be numbers"),
        ({"ivory": "0.9"}, "must be a number"),
        ({"ivory": True}, "must be a number"),
    ],
)
def test_invalid_thresholds(tiny_model_dir: Path, thresholds: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Classifier(tiny_model_dir, thresholds=thresholds)


def test_options(tiny_model_dir: Path, photo_files: list[Path]) -> None:
    with pytest.raises(ConfigError, match="top_k"):
        Classifier(tiny_model_dir, top_k=0)
    many = Classifier(tiny_model_dir, top_k=50, return_embedding=True).classify(photo_files[0])
    assert len(many.top_labels) == 9
    assert many.embedding is not None and len(many.embedding) == 256
    assert len(many.to_dict()["embedding"]) == 256
    small = Classifier(tiny_model_dir, max_pixels=100)
    with pytest.raises(InvalidImageError, match="over the limit"):
        small.classify(photo_files[0])


def test_single_image_errors_are_raised_typed(clf: Classifier,
                                              image_zoo: dict[str, ZooItem]) -> None:
    for name in BAD_ZOO:
        item = image_zoo[name]
        assert item.error is not None
        with pytest.raises(item.error) as info:
            clf.classify(item.path)
        assert str(item.path) in str(info.value)


def test_in_memory_inputs(clf: Classifier, photo_files: list[Path]) -> None:
    from PIL import Image

    path = photo_files[1]
    by_path = clf.classify(path)
    by_bytes = clf.classify(path.read_bytes())
    assert by_bytes.source == "<bytes>" and by_bytes.image_sha256 == by_path.image_sha256
    assert by_bytes.group(by_path.top_group).probability == pytest.approx(
        by_path.group(by_path.top_group).probability, abs=1e-6)
    arr = np.asarray(photo_like(90, 70, seed=3))
    res = list(iter_classify([arr, Image.fromarray(arr)], model=clf.package))
    assert [r.source for r in res] == ["<ndarray>", "<PIL.Image>"]
    assert isinstance(res[0], Prediction) and isinstance(res[1], Prediction)
    assert res[0].image_sha256 == res[1].image_sha256


def test_no_default_model_installed(monkeypatch: pytest.MonkeyPatch,
                                    photo_files: list[Path]) -> None:
    monkeypatch.setenv("WILDVISION_DEFAULT_MODEL", "wildvision-not-installed-xyz")
    with pytest.raises(ModelNotInstalledError) as info:
        classify_image(photo_files[0])
    msg = str(info.value)
    assert "'wildvision-not-installed-xyz' is not installed" in msg and "model=" in msg
    with pytest.raises(ModelNotInstalledError):
        classify_images(photo_files[:2])


def test_unknown_model_lists_names(photo_files: list[Path]) -> None:
    with pytest.raises(UnknownModelError, match="unknown model 'no-such-model'; installed models"):
        classify_image(photo_files[0], model="no-such-model")


def test_torch_backend_gives_the_same_predictions(tiny_model_dir: Path, clf: Classifier,
                                                  photo_files: list[Path]) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    tclf = Classifier(tiny_model_dir, backend="torch", threads=1)
    for a, b in zip(clf.classify_many(photo_files[:6]), tclf.classify_many(photo_files[:6]),
                    strict=True):
        assert isinstance(a, Prediction) and isinstance(b, Prediction)
        assert a.decision == b.decision
        for ga, gb in zip(a.groups, b.groups, strict=True):
            assert abs(ga.probability - gb.probability) < 1e-5


def test_package_is_loaded_once(tiny_model_dir: Path) -> None:
    pkg = load_package(tiny_model_dir)
    assert Classifier(pkg).package is pkg


def test_module_api_sees_a_re_exported_model(tiny_model_dir: Path, tmp_path: Path,
                                             photo_files: list[Path],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """classify_image caches classifiers, but a package re-exported to the same folder (a
    retraining loop in a notebook) and a changed default model are picked up."""
    import shutil

    from wildvision.modelcard_md import write_card

    folder = tmp_path / "models" / "retrained"
    shutil.copytree(tiny_model_dir, folder)
    src = photo_files[0]
    before = classify_image(src, model=folder)
    card = load_package(folder).card
    write_card(folder, card.with_updates(temperature=25.0, version="0.0.2"))
    after = classify_image(src, model=folder)
    assert (before.model_version, after.model_version) == ("0.0.1", "0.0.2")
    fresh = Classifier(folder).classify(src)
    assert after.to_dict() == fresh.to_dict()
    top = before.top_group
    assert after.group(top).probability < before.group(top).probability  # flatter at T=25

    monkeypatch.setenv("WILDVISION_MODELS_PATH", str(folder.parent))
    monkeypatch.setenv("WILDVISION_DEFAULT_MODEL", "retrained")
    assert classify_image(src).model_version == "0.0.2"
    monkeypatch.setenv("WILDVISION_DEFAULT_MODEL", "not-installed-either")
    with pytest.raises(ModelNotInstalledError):
        classify_image(src)
