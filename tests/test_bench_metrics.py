"""wildvision.bench.metrics against scikit-learn (a dev dependency only) on fixed random
predictions with ties, degenerate cases, and the weighted bootstrap against explicit
resampling."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from wildvision.bench import metrics as M

skm = pytest.importorskip("sklearn.metrics", reason="scikit-learn is a dev dependency")
TOL = 1e-9


def _cases(seed: int = 20240601, count: int = 60) -> list[tuple[np.ndarray, np.ndarray]]:
    """Binary labels and scores; scores rounded to 1-2 decimals so that ties are common."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.integers(2, 300))
        y = rng.random(n) < rng.uniform(0.05, 0.95)
        if not y.any():
            y[0] = True
        if y.all():
            y[-1] = False
        noise = rng.normal(size=n) + 1.2 * y
        s = np.round(1 / (1 + np.exp(-noise)), int(rng.integers(1, 3)))
        out.append((y, s))
    return out


CASES = _cases()


def test_cases_contain_ties() -> None:
    assert sum(len(np.unique(s)) < len(s) for _, s in CASES) > len(CASES) // 2


@pytest.mark.parametrize("i", range(len(CASES)))
def test_ranking_metrics_match_sklearn(i: int) -> None:
    y, s = CASES[i]
    assert abs(M.average_precision(y, s) - skm.average_precision_score(y, s)) < TOL
    assert abs(M.roc_auc(y, s) - skm.roc_auc_score(y, s)) < TOL
    p, r, t = M.precision_recall_curve(y, s)
    sp, sr, st = skm.precision_recall_curve(y, s)
    np.testing.assert_allclose(p, sp[:-1][::-1], atol=TOL)
    np.testing.assert_allclose(r, sr[:-1][::-1], atol=TOL)
    np.testing.assert_allclose(t, st[::-1], atol=TOL)
    fpr, tpr, thr = M.roc_curve(y, s)
    sf, stp, sth = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sf[1:], atol=TOL)
    np.testing.assert_allclose(tpr, stp[1:], atol=TOL)
    np.testing.assert_allclose(thr, sth[1:], atol=TOL)


@pytest.mark.parametrize("i", range(0, len(CASES), 2))
def test_recall_at_precision_matches_brute_force(i: int) -> None:
    y, s = CASES[i]
    for target in (0.5, 0.9, 0.95, 0.99):
        rec, thr = M.recall_at_precision(y, s, target)
        # brute force over every distinct threshold
        best, best_t = 0.0, float("nan")
        for t in np.unique(s)[::-1]:
            pred = s >= t
            prec = (y & pred).sum() / pred.sum()
            r = (y & pred).sum() / y.sum()
            if prec >= target and r > best:
                best, best_t = r, t
        assert abs(rec - best) < TOL
        if best > 0:
            assert thr == best_t
        else:
            assert np.isnan(thr)


@pytest.mark.parametrize("seed", range(12))
def test_multiclass_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 9))
    n = int(rng.integers(1, 400))
    y = rng.integers(0, k, n)
    # a biased predictor that never predicts the last class (undefined precision)
    p = np.where(rng.random(n) < 0.6, y, rng.integers(0, k, n))
    p = np.minimum(p, k - 2)
    cm = M.confusion_matrix(y, p, k)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y, p, labels=list(range(k))))
    prf = M.prf_from_confusion(cm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sp, sr, sf, ss = skm.precision_recall_fscore_support(
            y, p, labels=list(range(k)), zero_division=np.nan)
        np.testing.assert_allclose(prf["precision"], sp, atol=TOL, equal_nan=True)
        np.testing.assert_allclose(prf["recall"], sr, atol=TOL, equal_nan=True)
        np.testing.assert_allclose(prf["f1"], sf, atol=TOL, equal_nan=True)
        np.testing.assert_array_equal(prf["support"], ss)
        assert abs(float(M.balanced_accuracy(cm)) - skm.balanced_accuracy_score(y, p)) < TOL
        present = sorted(set(y.tolist()))
        assert abs(float(M.macro_f1(cm)) - skm.f1_score(y, p, labels=present,
                                                           average="macro")) < TOL
        sub = present[: max(1, len(present) // 2)]
        assert abs(float(M.macro_f1(cm, sub)) - skm.f1_score(y, p, labels=sub,
                                                                average="macro")) < TOL
        assert abs(float(M.accuracy_w(y == p)[0]) - skm.accuracy_score(y, p)) < TOL


@pytest.mark.parametrize("i", range(0, len(CASES), 4))
def test_binary_prf_and_balanced_accuracy_match_sklearn(i: int) -> None:
    y, s = CASES[i]
    pred = s >= 0.5
    b = M.precision_recall_f1(y, pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exp_p = skm.precision_score(y, pred, zero_division=np.nan)
    assert (np.isnan(b["precision"][0]) and np.isnan(exp_p)) or \
        abs(b["precision"][0] - exp_p) < TOL
    assert abs(b["recall"][0] - skm.recall_score(y, pred)) < TOL
    assert abs(b["f1"][0] - skm.f1_score(y, pred)) < TOL
    cm = M.confusion_matrix(y.astype(int), pred.astype(int), 2)
    assert abs(float(M.balanced_accuracy(cm)) - skm.balanced_accuracy_score(y, pred)) < TOL


def test_weighted_confusion_matches_sklearn_sample_weight() -> None:
    rng = np.random.default_rng(3)
    y, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    w = rng.integers(0, 5, 200).astype(float)
    got = M.confusion_w(y, p, 4, w[None, :])[0]
    np.testing.assert_allclose(got, skm.confusion_matrix(y, p, labels=range(4),
                                                         sample_weight=w))


# -- degenerate inputs: documented NaN, never a crash ------------------------------------------
def test_no_positives() -> None:
    y = np.zeros(5, dtype=bool)
    s = np.array([0.1, 0.4, 0.4, 0.9, 0.2])
    assert np.isnan(M.average_precision(y, s))
    assert np.isnan(M.roc_auc(y, s))
    r, t = M.recall_at_precision(y, s, 0.9)
    assert np.isnan(r) and np.isnan(t)
    b = M.precision_recall_f1(y, s > 0.3)
    assert b["precision"][0] == 0.0 and np.isnan(b["recall"][0]) and b["f1"][0] == 0.0
    b = M.precision_recall_f1(y, np.zeros(5, dtype=bool))
    assert np.isnan(b["precision"][0]) and np.isnan(b["recall"][0]) and np.isnan(b["f1"][0])


def test_no_negatives_and_nothing_predicted() -> None:
    y = np.ones(4, dtype=bool)
    s = np.array([0.3, 0.3, 0.8, 0.1])
    assert np.isnan(M.roc_auc(y, s))
    assert M.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s))
    b = M.precision_recall_f1(y, np.zeros(4, dtype=bool))
    assert np.isnan(b["precision"][0]) and b["recall"][0] == 0.0 and b["f1"][0] == 0.0


def test_all_scores_tied() -> None:
    y = np.array([1, 0, 1, 0, 0], dtype=bool)
    s = np.full(5, 0.5)
    assert M.roc_auc(y, s) == pytest.approx(0.5)
    assert M.average_precision(y, s) == pytest.approx(0.4)  # = prevalence
    assert M.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s))


def test_unreachable_precision_gives_zero_recall() -> None:
    y = np.array([0, 1, 0, 1], dtype=bool)
    s = np.array([0.9, 0.8, 0.7, 0.1])  # the top score is a negative
    r, t = M.recall_at_precision(y, s, 0.99)
    assert r == 0.0 and np.isnan(t)


def test_empty_and_single_item() -> None:
    e = np.zeros(0)
    assert np.isnan(M.average_precision(e.astype(bool), e))
    assert np.isnan(M.roc_auc(e.astype(bool), e))
    assert M.average_precision(np.array([True]), np.array([0.3])) == 1.0
    assert np.isnan(float(M.macro_f1(np.zeros((3, 3)))))
    assert np.isnan(float(M.balanced_accuracy(np.zeros((3, 3)))))
    assert np.isnan(M.expected_calibration_error(e, e)[0])


def test_rejects_nan_scores() -> None:
    with pytest.raises(ValueError, match="finite"):
        M.BinaryCurve(np.array([True, False]), np.array([0.1, np.nan]))


# -- calibration --------------------------------------------------------------------------------
def _naive_ece(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        m = (conf > lo) & (conf <= hi) if b else (conf >= lo) & (conf <= hi)
        if m.any():
            total += m.sum() / len(conf) * abs(correct[m].mean() - conf[m].mean())
    return total


@pytest.mark.parametrize("seed", range(5))
def test_ece_and_reliability_bins(seed: int) -> None:
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(seed)
    conf = np.round(rng.uniform(0, 1, 500), 2)  # values on bin edges included
    correct = rng.random(500) < conf ** 1.5
    assert abs(M.expected_calibration_error(conf, correct, 15)[0]
               - _naive_ece(conf, correct, 15)) < TOL
    bins = [b for b in M.reliability_bins(conf, correct, 15) if b["count"]]
    frac, mean = calibration_curve(correct, conf, n_bins=15, strategy="uniform")
    np.testing.assert_allclose([b["accuracy"] for b in bins], frac, atol=TOL)
    np.testing.assert_allclose([b["mean_confidence"] for b in bins], mean, atol=TOL)


def test_ece_of_a_calibrated_predictor_is_small() -> None:
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 200_000)
    correct = rng.random(conf.size) < conf
    assert M.expected_calibration_error(conf, correct)[0] < 0.01
    overconfident = rng.random(conf.size) < conf - 0.2
    assert M.expected_calibration_error(conf, overconfident)[0] == pytest.approx(0.2, abs=0.01)


# -- bootstrap ----------------------------------------------------------------------------------
def test_weighted_metrics_equal_explicit_resampling() -> None:
    """A bootstrap weight row gives exactly the metric of the resampled data."""
    rng = np.random.default_rng(11)
    n = 150
    y = rng.random(n) < 0.4
    s = np.round(rng.random(n) * 0.5 + 0.4 * y, 2)
    yk = rng.integers(0, 5, n)
    pk = np.where(rng.random(n) < 0.5, yk, rng.integers(0, 5, n))
    conf = rng.random(n)
    W = next(M.bootstrap_weights(n, 20, seed=5))
    curve = M.BinaryCurve(y, s)
    ap, auc = curve.average_precision(W), curve.roc_auc(W)
    cms = M.confusion_w(yk, pk, 5, W)
    ece = M.expected_calibration_error(conf, yk == pk, 15, W)
    for b in range(W.shape[0]):
        idx = np.repeat(np.arange(n), W[b].astype(int))
        assert len(idx) == n
        assert abs(ap[b] - skm.average_precision_score(y[idx], s[idx])) < TOL
        assert abs(auc[b] - skm.roc_auc_score(y[idx], s[idx])) < TOL
        present = sorted(set(yk[idx].tolist()))
        exp_f1 = skm.f1_score(yk[idx], pk[idx], labels=present, average="macro")
        assert abs(float(M.macro_f1(cms[b])) - exp_f1) < TOL
        assert abs(ece[b] - _naive_ece(conf[idx], (yk == pk)[idx], 15)) < TOL


def test_bootstrap_weights_are_resamples_and_deterministic() -> None:
    chunks = list(M.bootstrap_weights(1000, 2500, seed=1))
    W = np.concatenate(chunks)
    assert W.shape == (2500, 1000)
    assert len(chunks) > 1  # chunked
    np.testing.assert_array_equal(W.sum(axis=1), 1000)
    assert W.min() >= 0
    # each item appears ~Poisson(1) times
    assert abs(W.mean() - 1.0) < 1e-12 and abs(W.var() - 1.0) < 0.01
    W2 = np.concatenate(list(M.bootstrap_weights(1000, 2500, seed=1)))
    np.testing.assert_array_equal(W, W2)
    W3 = np.concatenate(list(M.bootstrap_weights(1000, 2500, seed=2)))
    assert not np.array_equal(W, W3)


def test_bootstrap_interval_of_a_proportion() -> None:
    rng = np.random.default_rng(4)
    correct = rng.random(2000) < 0.8
    est = M.bootstrap(lambda W: {"acc": M.accuracy_w(correct, W)}, 2000, n_resamples=1000,
                      seed=0)["acc"]
    p = correct.mean()
    se = np.sqrt(p * (1 - p) / 2000)
    assert est.value == p
    assert est.lo < p < est.hi
    assert est.hi - est.lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert est.valid_resamples == 1000
    again = M.bootstrap(lambda W: {"acc": M.accuracy_w(correct, W)}, 2000, n_resamples=1000,
                        seed=0)["acc"]
    assert (again.lo, again.hi) == (est.lo, est.hi)


def test_bootstrap_with_mostly_undefined_resamples_has_no_interval() -> None:
    y = np.zeros(200, dtype=bool)
    y[0] = True  # one positive: most resamples have none, AP undefined there
    s = np.linspace(0, 1, 200)
    curve = M.BinaryCurve(y, s)
    est = M.bootstrap(lambda W: {"ap": curve.average_precision(W)}, 200, n_resamples=200,
                      seed=0)["ap"]
    assert est.value == pytest.approx(skm.average_precision_score(y, s))
    assert est.valid_resamples < 200
    d = est.to_dict()
    assert d["ci95"] == [None, None] or est.valid_resamples >= 100
