"""Review-budget threshold policy (wildvision.policy): pure numpy, checked against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from wildvision.errors import ConfigError
from wildvision.modelpack import Thresholds
from wildvision.policy import (
    FLAG,
    PASS,
    REVIEW,
    ReviewPolicy,
    decide,
    derive_thresholds,
    measure,
    tradeoff_curve,
)

GROUPS = ("ivory", "live_protected_animal", "benign")
CURRENT = {"ivory": Thresholds(0.9, 0.2), "live_protected_animal": Thresholds(0.9, 0.2)}


def _data(n_benign: int = 2000, n_pos: int = 300, seed: int = 0
          ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for _ in range(n_benign):
        a, b = rng.beta(0.6, 8), rng.beta(0.6, 8)
        rows.append([a, b, max(0.0, 1 - a - b)])
        truth.append("benign")
    for k in range(n_pos):
        g = k % 2
        p = rng.beta(8, 1.2)
        r = [0.0, 0.0, 1 - p]
        r[g] = p
        rows.append(r)
        truth.append(GROUPS[g])
    return np.array(rows), np.array(truth, dtype=object)


def test_decide_matches_the_per_group_rule_and_the_gate() -> None:
    gp = np.array([[0.95, 0.0, 0.05], [0.5, 0.0, 0.5], [0.1, 0.1, 0.8], [0.95, 0.3, 0.0]])
    th = {"ivory": Thresholds(0.9, 0.3), "live_protected_animal": Thresholds(0.9, 0.25)}
    assert decide(gp, GROUPS, th).tolist() == [FLAG, REVIEW, PASS, FLAG]
    gated = np.zeros_like(gp, dtype=bool)
    gated[0, 0] = gated[3, 0] = True
    # a gated flag becomes review; another group's review stays review
    assert decide(gp, GROUPS, th, gated=gated).tolist() == [REVIEW, REVIEW, PASS, REVIEW]


@pytest.mark.parametrize("budget", [0.005, 0.01, 0.02, 0.05])
def test_review_share_stays_within_budget_and_uses_it(budget: float) -> None:
    gp, truth = _data()
    res = derive_thresholds(gp, truth, GROUPS, CURRENT, ReviewPolicy(review_budget=budget))
    d = decide(gp, GROUPS, res.thresholds)
    share = float(np.mean(d[truth == "benign"] == REVIEW))
    assert share == pytest.approx(res.benign_review_share)
    assert share <= budget
    # the largest tail share under the budget: one more benign photo would exceed it
    assert share >= budget - 2.5 / (truth == "benign").sum()
    for _g, t in res.thresholds.items():
        assert 0 <= t.review <= t.flag


def test_flag_thresholds_reach_the_precision() -> None:
    gp, truth = _data()
    res = derive_thresholds(gp, truth, GROUPS, CURRENT, ReviewPolicy(flag_precision=0.97))
    for gi, g in enumerate(GROUPS[:2]):
        flagged = gp[:, gi] >= res.thresholds[g].flag
        precision = float(np.mean(truth[flagged] == g))
        assert precision >= 0.97
        # one step lower would include a photo that breaks the target or reach nothing new
        assert res.flag_choice[g]["positives"] == int((truth == g).sum())


def test_groups_with_few_photos_keep_their_flag_threshold() -> None:
    gp, truth = _data(n_pos=10)
    res = derive_thresholds(gp, truth, GROUPS, CURRENT, ReviewPolicy(min_positives=20))
    assert res.thresholds["ivory"].flag == 0.9
    assert "kept" in res.flag_choice["ivory"]


def test_gated_reviews_spend_the_budget_first() -> None:
    gp, truth = _data()
    gated = np.zeros_like(gp, dtype=bool)
    benign_idx = np.nonzero(truth == "benign")[0]
    gated[benign_idx[:100]] = True          # 5% of benign unfamiliar ...
    gp[benign_idx[:100], 0] = 0.99          # ... and scored as ivory: gated flags -> review
    keep_flags = {"min_positives": 10_000}  # flag thresholds stay at 0.9
    res = derive_thresholds(gp, truth, GROUPS, CURRENT,
                            ReviewPolicy(review_budget=0.02, **keep_flags), gated=gated)
    assert not res.budget_met
    assert res.notes and "open-set gate alone" in res.notes[0]
    assert all(t.review == t.flag for t in res.thresholds.values())
    ok = derive_thresholds(gp, truth, GROUPS, CURRENT,
                           ReviewPolicy(review_budget=0.08, **keep_flags), gated=gated)
    assert ok.budget_met and 0.05 <= ok.benign_review_share <= 0.08


def test_tradeoff_curve_is_monotone() -> None:
    gp, truth = _data()
    curve = tradeoff_curve(gp, truth, GROUPS, CURRENT, budgets=(0.005, 0.02, 0.1),
                           evaluate=[("other", *_data(seed=1), None)])
    shares = [row["calibration"]["benign_review_share"] for row in curve]
    seen = [row["calibration"]["seen_recall"] for row in curve]
    assert shares == sorted(shares) and seen == sorted(seen)
    assert all("other" in row for row in curve)


def test_measure_counts() -> None:
    gp = np.array([[0.95, 0.0, 0.05], [0.5, 0.0, 0.5], [0.1, 0.1, 0.8]])
    m = measure(gp, ["ivory", "benign", "benign"], GROUPS,
                {"ivory": Thresholds(0.9, 0.3), "live_protected_animal": Thresholds(0.9, 0.3)})
    assert m == {"benign": 2, "positives": 1, "benign_review_share": 0.5,
                 "benign_flag_share": 0.0, "flag_recall": 1.0, "seen_recall": 1.0}


def test_bad_policy_and_data() -> None:
    with pytest.raises(ConfigError):
        ReviewPolicy(review_budget=1.5)
    with pytest.raises(ConfigError):
        ReviewPolicy(flag_precision=0)
    gp, truth = _data()
    with pytest.raises(ConfigError, match="no benign"):
        derive_thresholds(gp[truth != "benign"], truth[truth != "benign"], GROUPS, CURRENT,
                          ReviewPolicy())
    with pytest.raises(ConfigError, match="do not match"):
        derive_thresholds(gp[:, :2], truth, GROUPS, CURRENT, ReviewPolicy())


def test_flag_thresholds_never_go_under_the_floor() -> None:
    gp, truth = _data()
    low = derive_thresholds(gp, truth, GROUPS, CURRENT, ReviewPolicy(min_flag=0.0))
    assert min(t.flag for t in low.thresholds.values()) < 0.5   # clean data: very low
    res = derive_thresholds(gp, truth, GROUPS, CURRENT, ReviewPolicy(min_flag=0.5))
    assert all(t.flag >= 0.5 for t in res.thresholds.values())
    assert res.flag_choice["ivory"]["floor"] == 0.5
