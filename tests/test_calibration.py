"""wildvision.calibration: temperature scaling, ECE and thresholds at a target precision.

numpy only (no torch). Expected values come from independent computations in the tests
(brute force over every candidate threshold, a grid search of the NLL, hand-made bins).
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from wildvision.calibration import (
    choose_group_thresholds,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability_bins,
    softmax,
    threshold_for_precision,
)
from wildvision.errors import ConfigError
from wildvision.modelpack import Thresholds


def _sample(rng: np.random.Generator, n: int, c: int, true_t: float) -> tuple[np.ndarray,
                                                                            np.ndarray]:
    """Logits and labels drawn from softmax(logits / true_t)."""
    z = rng.normal(0.0, 3.0, size=(n, c))
    p = softmax(z, true_t)
    u = rng.random(n)[:, None]
    y = (p.cumsum(axis=1) < u).sum(axis=1)
    return z, np.minimum(y, c - 1)


def test_calibration_module_is_numpy_only() -> None:
    code = ("import sys, wildvision.calibration; "
            "bad = [m for m in ('torch', 'timm', 'scipy', 'sklearn') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_generating_temperature(true_t: float) -> None:
    z, y = _sample(np.random.default_rng(1), 20_000, 5, true_t)
    t = fit_temperature(z, y)
    assert abs(t - true_t) / true_t < 0.06


def test_fit_temperature_minimises_nll_against_a_grid() -> None:
    z, y = _sample(np.random.default_rng(2), 3000, 4, 1.7)
    t = fit_temperature(z, y)
    grid = np.exp(np.linspace(np.log(0.2), np.log(8.0), 801))
    best = grid[int(np.argmin([nll(z, y, g) for g in grid]))]
    assert nll(z, y, t) <= nll(z, y, best) + 1e-9
    assert abs(t - best) / best < 0.01


def test_temperature_lowers_ece_of_overconfident_logits() -> None:
    z, y = _sample(np.random.default_rng(3), 5000, 6, 3.0)  # logits 3x too sharp
    t = fit_temperature(z, y)
    before = expected_calibration_error(softmax(z), y)
    after = expected_calibration_error(softmax(z, t), y)
    assert after < before / 2


def test_fit_temperature_rejects_bad_input() -> None:
    with pytest.raises(ConfigError):
        fit_temperature(np.zeros((3, 2)), np.array([0, 1]))
    with pytest.raises(ConfigError):
        fit_temperature(np.zeros((2, 2)), np.array([0, 2]))
    with pytest.raises(ConfigError):
        fit_temperature(np.array([[np.nan, 0.0]]), np.array([0]))
    with pytest.raises(ConfigError):
        fit_temperature(np.zeros((0, 2)), np.zeros(0, dtype=int))


def test_ece_by_hand() -> None:
    # 2 bins: (0, .5] and (.5, 1]. Top-1 confidences .9, .8 (right, wrong) -> bin 2:
    # accuracy .5, confidence .85; .6 (right) -> bin 2 as well; .4 can't be top-1 of 2 classes
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    y = np.array([0, 0, 0])
    bins = reliability_bins(p, y, n_bins=2)
    assert bins[0]["count"] == 0 and bins[1]["count"] == 3
    conf = (0.9 + 0.8 + 0.6) / 3
    acc = 2 / 3
    assert bins[1]["confidence"] == pytest.approx(conf)
    assert bins[1]["accuracy"] == pytest.approx(acc)
    assert expected_calibration_error(p, y, n_bins=2) == pytest.approx(abs(acc - conf))


def _brute_force(scores: np.ndarray, pos: np.ndarray, target: float) -> float | None:
    best = None
    for t in np.unique(scores):
        pred = scores >= t
        tp = int((pred & pos).sum())
        fp = int((pred & ~pos).sum())
        if tp + fp and tp / (tp + fp) >= target and (best is None or t < best):
            best = float(t)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_threshold_for_precision_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    pos = rng.random(n) < 0.3
    scores = np.clip(rng.normal(np.where(pos, 0.7, 0.35), 0.18), 0, 1).round(2)  # many ties
    for target in (0.6, 0.8, 0.95):
        got = threshold_for_precision(scores, pos, target)
        want = _brute_force(scores, pos, target)
        if want is None:
            assert got is None
            continue
        assert got is not None and got.threshold == pytest.approx(want)
        pred = scores >= got.threshold
        assert got.precision == pytest.approx((pred & pos).sum() / pred.sum())
        assert got.recall == pytest.approx((pred & pos).sum() / pos.sum())
        assert got.precision >= target


def test_threshold_none_without_positives_or_when_unreachable() -> None:
    assert threshold_for_precision(np.array([0.1, 0.9]), np.array([False, False]), 0.9) is None
    # the highest score is a negative and ties cannot be split: precision never reaches 0.9
    s = np.array([0.9, 0.9, 0.5])
    assert threshold_for_precision(s, np.array([True, False, True]), 0.9) is None


def test_choose_group_thresholds_targets_fallbacks_and_order() -> None:
    rng = np.random.default_rng(7)
    groups = ["ivory", "tiger_parts", "benign"]
    n = 400
    true = rng.choice(["ivory", "benign"], size=n, p=[0.3, 0.7])  # no tiger_parts at all
    iv = np.clip(rng.normal(np.where(true == "ivory", 0.75, 0.25), 0.15), 0.001, 0.998)
    tp = np.full(n, 0.001)
    gp = np.stack([iv, tp, 1 - iv - tp], axis=1)
    fallback = Thresholds(0.6, 0.4)
    rep = choose_group_thresholds(gp, true, groups, flaggable=("ivory", "tiger_parts"),
                                  flag_precision=0.95, review_precision=0.8,
                                  fallback=fallback)
    assert set(rep) == {"ivory", "tiger_parts"}  # benign is never flagged
    ivory = rep["ivory"]
    assert ivory.flag["source"] == "validation" and ivory.review["source"] == "validation"
    assert ivory.thresholds.review <= ivory.thresholds.flag
    is_iv = true == "ivory"
    for key, target in (("flag", 0.95), ("review", 0.8)):
        t = getattr(ivory.thresholds, key)
        pred = iv >= t
        assert (pred & is_iv).sum() / pred.sum() >= target
        assert getattr(ivory, key)["precision"] == pytest.approx((pred & is_iv).sum() / pred.sum(),
                                                                 abs=1e-6)
    tiger = rep["tiger_parts"]
    assert tiger.positives == 0
    assert tiger.thresholds == fallback
    assert tiger.flag["source"] == "fallback"
    assert "no validation images" in tiger.flag["reason"]


def test_floors_raise_thresholds_and_say_so() -> None:
    s = np.array([0.3, 0.35, 0.1, 0.05])
    true = np.array(["ivory", "ivory", "benign", "benign"])
    gp = np.stack([s, 1 - s], axis=1)
    rep = choose_group_thresholds(gp, true, ["ivory", "benign"], flaggable=("ivory",),
                                  min_flag=0.5, min_review=0.2)["ivory"]
    assert rep.thresholds.flag == 0.5
    assert "floor" in rep.flag["note"]
    assert rep.flag["recall"] == 0.0  # measured at the final threshold, not the raw choice
    assert rep.thresholds.review == pytest.approx(0.3)
    assert math.isclose(rep.review["recall"], 1.0)


def test_choose_group_thresholds_rejects_bad_targets() -> None:
    with pytest.raises(ConfigError):
        choose_group_thresholds(np.zeros((1, 1)), ["ivory"], ["ivory"], flaggable=("ivory",),
                                flag_precision=0.7, review_precision=0.9)
