"""The tiny test model (tests/make_tiny_model.py) follows its colour rule, so its outputs depend
on the image: tests that compare outputs of different images, or need all three decisions, can
rely on it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from wildvision.modelpack import load_package
from wildvision.predict import Classifier
from wildvision.preprocess import resize_crop

from conftest import photo_like
from make_tiny_model import LABELS, PROTOTYPES, colour_photo, colour_rule_label, colour_rule_logits


@pytest.fixture(scope="module")
def clf(tiny_model_dir: Path) -> Classifier:
    return Classifier(tiny_model_dir)


def _random_colour_photos(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [colour_photo(tuple(int(v) for v in rng.uniform(0, 255, 3)), seed=seed * 1000 + i)
            for i in range(n)]


def _rule_decisions(tiny_model_dir: Path, images: list) -> list[str]:
    """The flag/review/pass decision the colour rule itself gives each image."""
    card = load_package(tiny_model_dir).card
    crops = [np.asarray(resize_crop(im, card.preprocess), np.float64) for im in images]
    logits = colour_rule_logits(np.stack([c.reshape(-1, 3).mean(0) for c in crops]))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    out = []
    for row in probs:
        group_p: dict[str, float] = {}
        for lab, p in zip(LABELS, row, strict=True):
            group_p[card.label_groups[lab]] = group_p.get(card.label_groups[lab], 0.0) + p
        decisions = {th.decide(group_p.get(g, 0.0)) for g, th in card.thresholds.items()}
        out.append(next(d for d in ("flag", "review", "pass") if d in decisions))
    return out


def test_outputs_differ_between_images(clf: Classifier) -> None:
    images = _random_colour_photos(30)
    preds = clf.classify_many(images)
    tops = Counter(p.top_labels[0].label for p in preds)
    decisions = Counter(p.decision for p in preds)
    assert len(tops) >= 5, tops
    assert set(decisions) == {"flag", "review", "pass"}, decisions
    groups = np.array([[g.probability for g in p.groups] for p in preds])
    assert np.max(groups.max(0) - groups.min(0)) > 0.5
    # photo-like test images (grey-centred patterns) differ too
    photos = clf.classify_many([photo_like(120, 90, seed=s) for s in range(20)])
    assert len({p.top_labels[0].label for p in photos}) >= 3
    groups = np.array([[g.probability for g in p.groups] for p in photos])
    assert np.max(groups.max(0) - groups.min(0)) > 0.2


@pytest.mark.parametrize("label", LABELS)
def test_prototype_colours_get_their_label(clf: Classifier, tiny_model_dir: Path,
                                           label: str) -> None:
    group = load_package(tiny_model_dir).card.label_groups[label]
    for seed in range(3):
        img = colour_photo(PROTOTYPES[label], seed=seed)
        assert colour_rule_label(img) == label
        p = clf.classify(img)
        assert p.top_labels[0].label == label, (seed, p.top_labels[:3])
        assert p.top_group == group
        assert p.decision == ("pass" if group == "benign" else "flag"), (seed, p.groups)


def test_follows_the_colour_rule(clf: Classifier, tiny_model_dir: Path) -> None:
    images = _random_colour_photos(60, seed=1)
    preds = clf.classify_many(images)
    rule = [colour_rule_label(im) for im in images]
    agree = np.mean([p.top_labels[0].label == r for p, r in zip(preds, rule, strict=True)])
    assert agree >= 0.8, agree
    same = np.mean([p.decision == d for p, d in
                    zip(preds, _rule_decisions(tiny_model_dir, images), strict=True)])
    assert same >= 0.8, same
