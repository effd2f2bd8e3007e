"""wildvision.bench.evaluate on hand-made prediction records: hand-computed values, label sets
that differ from the data's, failures, and the multi-model comparison."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wildvision.bench.evaluate import HEADLINE_KEYS, evaluate_model
from wildvision.bench.predictions import ModelRun, PredictionSet, read_predictions
from wildvision.bench.report import build_metrics, card_metrics
from wildvision.errors import DataError

skm = pytest.importorskip("sklearn.metrics", reason="scikit-learn is a dev dependency")

LABEL_GROUPS = {
    "ivory_carving": "ivory",
    "live_tiger": "live_protected_animal",
    "domestic_cat": "benign",
    "ceramics": "benign",
}
THRESHOLDS = {"ivory": {"flag": 0.5, "review": 0.3},
              "live_protected_animal": {"flag": 0.6, "review": 0.3}}


def model_run(key: str = "m@1", records: list[dict[str, Any]] | None = None,
              label_groups: dict[str, str] | None = None) -> ModelRun:
    lg = label_groups or LABEL_GROUPS
    info = {"record": "model", "model_key": key, "name": key.split("@")[0], "version": "1",
            "labels": list(lg), "label_groups": lg, "thresholds": THRESHOLDS,
            "card_sha256": "c" * 64}
    return ModelRun(key, info, records or [])


def rec(path: str, fine: str, group: str, probs: dict[str, float], source: str = "s",
        label_groups: dict[str, str] | None = None) -> dict[str, Any]:
    """A record as bench writes it, with decisions made from THRESHOLDS."""
    lg = label_groups or LABEL_GROUPS
    full = {lab: float(probs.get(lab, 0.0)) for lab in lg}
    gp: dict[str, float] = {}
    for lab, p in full.items():
        gp[lg[lab]] = gp.get(lg[lab], 0.0) + p
    decisions = {}
    for g, p in gp.items():
        th = THRESHOLDS.get(g)
        decisions[g] = "pass" if th is None else (
            "flag" if p >= th["flag"] else "review" if p >= th["review"] else "pass")
    overall = "flag" if "flag" in decisions.values() else \
        "review" if "review" in decisions.values() else "pass"
    return {"record": "image", "path": path, "sha256": "", "source": source, "fine_label": fine,
            "group": group, "split": "test", "ok": True, "probabilities": full,
            "top_label": max(full, key=lambda k: full[k]),
            "top_group": max(gp, key=lambda k: gp[k]), "decision": overall,
            "decisions": decisions}


def failed(path: str, source: str = "s") -> dict[str, Any]:
    return {"record": "image", "path": path, "source": source, "fine_label": "domestic_cat",
            "group": "benign", "ok": False, "error_type": "InvalidImageError",
            "message": f"{path}: not an image"}


def small_records() -> list[dict[str, Any]]:
    return [
        rec("a", "ivory_carving", "ivory", {"ivory_carving": 0.9, "ceramics": 0.1}, "met"),
        rec("b", "ivory_carving", "ivory", {"ivory_carving": 0.4, "ceramics": 0.6}, "met"),
        rec("c", "ceramics", "benign", {"ivory_carving": 0.7, "ceramics": 0.3}, "met"),
        rec("d", "ceramics", "benign", {"ceramics": 0.95, "ivory_carving": 0.05}, "met"),
        rec("e", "live_tiger", "live_protected_animal", {"live_tiger": 0.8, "domestic_cat": 0.2},
            "cats"),
        rec("f", "domestic_cat", "benign", {"live_tiger": 0.35, "domestic_cat": 0.65}, "cats"),
        failed("g", "cats"),
    ]


def test_hand_computed_small_example() -> None:
    b = evaluate_model(model_run(records=small_records()), n_resamples=0)
    assert b["counts"] == {"images": 7, "evaluated": 6, "failed": 1, "unlabelled": 0,
                           "sha256_mismatch": 0,
                           "by_group": {"ivory": 2, "live_protected_animal": 1, "benign": 3}}
    h = b["headline"]
    # flagged: a (ivory), c (ivory, a false flag), e (live); f is review only
    assert h["flag_precision"]["value"] == pytest.approx(2 / 3)
    assert h["flag_recall"]["value"] == pytest.approx(2 / 3)
    assert h["false_flag_rate"]["value"] == pytest.approx(1 / 3)
    assert h["flag_balanced_accuracy"]["value"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert h["accuracy_group"]["value"] == pytest.approx(4 / 6)  # a, d, e, f right
    # groups argmax: ivory P=1/2 R=1/2; live P=1 R=1; benign P=2/3 R=2/3
    assert h["macro_f1_group"]["value"] == pytest.approx((0.5 + 1 + 2 / 3) / 3)
    assert h["macro_f1_group"]["ci95"] == [None, None]  # no resamples
    ivory = b["groups"]["ivory"]
    assert ivory["at_threshold"]["precision"]["value"] == pytest.approx(0.5)
    assert ivory["at_threshold"]["recall"]["value"] == pytest.approx(0.5)
    assert ivory["at_threshold"]["flagged"] == 2
    assert ivory["at_threshold"]["decision_shares"]["positives"] == {
        "flag": 0.5, "review": 0.5, "pass": 0.0}
    assert ivory["thresholds"] == {"flag": 0.5, "review": 0.3}
    y = np.array([1, 1, 0, 0, 0, 0], bool)
    s = np.array([0.9, 0.4, 0.7, 0.05, 0.0, 0.0])
    assert ivory["average_precision"]["value"] == pytest.approx(skm.average_precision_score(y, s))
    assert ivory["roc_auc"]["value"] == pytest.approx(skm.roc_auc_score(y, s))
    assert ivory["recall_at_precision"]["0.90"] == {"recall": 0.5, "threshold": 0.9}
    assert b["groups"]["benign"]["at_threshold"] is None
    cm = b["confusion"]["groups"]
    assert cm["labels"] == ["ivory", "live_protected_animal", "benign"]
    assert cm["matrix"] == [[1, 0, 1], [0, 1, 0], [1, 0, 2]]
    ben = b["benign"]
    assert ben["n"] == 3 and ben["flag_or_review_rate"] == pytest.approx(2 / 3)
    assert ben["by_fine_label"]["ceramics"]["flagged_as"]["ivory"] == pytest.approx(0.5)
    assert ben["by_source"]["cats"]["false_flag_rate"] == 0.0
    assert b["by_source"]["cats"]["failed"] == 1
    assert b["failures"]["count"] == 1 and b["failures"]["items"][0]["path"] == "g"
    assert b["failures"]["by_type"] == {"InvalidImageError": 1}
    # review load: f (a cat scored 0.35 tiger) is the one benign review
    assert ben["review_rate"] == pytest.approx(1 / 3)
    assert ben["by_source"]["cats"]["review_rate"] == 1.0
    assert ben["by_fine_label"]["domestic_cat"]["pass_rate"] == 0.0
    assert ben["by_fine_label"]["ceramics"]["pass_rate"] == 0.5


def test_review_budget_curve_matches_the_policy_on_the_same_photos() -> None:
    from wildvision.modelpack import Thresholds
    from wildvision.policy import ReviewPolicy, decide, derive_thresholds

    recs = random_records(400, 3)
    b = evaluate_model(model_run(records=recs), n_resamples=0)
    curve = b["review_budget_curve"]
    assert [r["review_budget"] for r in curve] == [0.005, 0.01, 0.02, 0.05, 0.1, 0.2]
    groups = ["ivory", "live_protected_animal", "benign"]
    gp = np.array([[sum(p for lab, p in r["probabilities"].items() if LABEL_GROUPS[lab] == g)
                    for g in groups] for r in recs])
    truth = [r["group"] for r in recs]
    current = {g: Thresholds(**t) for g, t in THRESHOLDS.items()}
    for row in curve:
        assert row["benign_review_share"] <= row["review_budget"]
        res = derive_thresholds(gp, truth, groups, current,
                                ReviewPolicy(review_budget=row["review_budget"]))
        assert {g: t.to_dict() for g, t in res.thresholds.items()} == row["thresholds"]
        d = decide(gp, groups, res.thresholds)
        benign = np.array(truth) == "benign"
        assert np.mean(d[benign] == 1) == pytest.approx(row["benign_review_share"], abs=1e-6)
    recall = [r["seen_recall"] for r in curve]
    assert recall == sorted(recall)


def random_records(n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    labels = list(LABEL_GROUPS)
    out = []
    for i in range(n):
        t = labels[int(rng.integers(0, len(labels)))]
        logits = rng.normal(size=len(labels))
        logits[labels.index(t)] += 1.5
        p = np.exp(logits) / np.exp(logits).sum()
        out.append(rec(f"img{i}.jpg", t, LABEL_GROUPS[t], dict(zip(labels, p, strict=True)),
                       source=f"src{i % 3}"))
    return out


def test_headline_matches_sklearn_on_random_records() -> None:
    recs = random_records(300, 1)
    b = evaluate_model(model_run(records=recs), n_resamples=200)
    groups = b["confusion"]["groups"]["labels"]
    yt = [groups.index(r["group"]) for r in recs]
    yp = [groups.index(r["top_group"]) for r in recs]
    h = b["headline"]
    assert h["macro_f1_group"]["value"] == pytest.approx(
        skm.f1_score(yt, yp, average="macro"), abs=1e-9)
    assert h["balanced_accuracy_group"]["value"] == pytest.approx(
        skm.balanced_accuracy_score(yt, yp), abs=1e-9)
    labels = list(LABEL_GROUPS)
    ft = [labels.index(r["fine_label"]) for r in recs]
    fp = [labels.index(r["top_label"]) for r in recs]
    assert h["macro_f1_fine"]["value"] == pytest.approx(
        skm.f1_score(ft, fp, average="macro"), abs=1e-9)
    flaggable = np.array([r["group"] != "benign" for r in recs])
    score = np.array([1 - r["probabilities"]["domestic_cat"] - r["probabilities"]["ceramics"]
                      for r in recs])
    assert h["flaggable_roc_auc"]["value"] == pytest.approx(
        skm.roc_auc_score(flaggable, score), abs=1e-9)
    flagged = np.array([r["decision"] == "flag" for r in recs])
    assert h["flag_precision"]["value"] == pytest.approx(
        skm.precision_score(flaggable, flagged), abs=1e-9)
    for k in HEADLINE_KEYS:
        v, (lo, hi) = h[k]["value"], h[k]["ci95"]
        assert lo is not None and lo <= v + 1e-12 and v <= hi + 1e-12, k
    assert h["macro_f1_group"]["ci95"][1] - h["macro_f1_group"]["ci95"][0] > 0.01
    fl = b["fine_labels"]["live_tiger"]
    assert fl["f1"] == pytest.approx(skm.f1_score(ft, fp, labels=[1], average="macro"))
    assert set(b["by_source"]) == {"src0", "src1", "src2"}


def test_model_lacking_a_group_and_a_fine_label() -> None:
    recs = small_records()[:-1]
    recs.append(rec("p1", "pangolin_scales", "pangolin", {"ivory_carving": 0.7,
                                                          "ceramics": 0.3}, "seizures"))
    recs.append(rec("p2", "pangolin_scales", "pangolin", {"ceramics": 1.0}, "seizures"))
    recs.append(rec("h1", "bone_horn_craft", "benign", {"ivory_carving": 0.8,
                                                        "ceramics": 0.2}, "maker"))
    b = evaluate_model(model_run(records=recs), n_resamples=50)
    assert b["coverage"] == {"groups_not_covered": {"pangolin": 2},
                             "labels_not_in_model": {"bone_horn_craft": 1,
                                                     "pangolin_scales": 2}}
    pg = b["groups"]["pangolin"]
    assert pg["covered"] is False and pg["support"] == 2 and pg["average_precision"] is None
    # pangolin images still count: p1 is an ivory false positive, p2 a benign one
    assert b["groups"]["ivory"]["argmax"]["precision"] == pytest.approx(1 / 4)  # a of a,c,p1,h1
    # the argmax values carry bootstrap intervals around them (flaggable groups)
    for k, v in b["groups"]["ivory"]["argmax"].items():
        lo, hi = b["groups"]["ivory"]["argmax_ci95"][k]
        assert lo <= v <= hi and lo < hi
    # the macro average leaves the uncovered group out
    assert b["headline"]["macro_f1_group"]["value"] == pytest.approx(
        np.mean([b["groups"][g]["argmax"]["f1"] for g in
                 ("ivory", "live_protected_animal", "benign")]))
    h1 = b["fine_labels"]["bone_horn_craft"]
    assert h1["in_model"] is False and h1["f1"] is None and h1["support"] == 1
    assert b["benign"]["by_fine_label"]["bone_horn_craft"]["flagged_as"]["ivory"] == 1.0
    # images of labels the model lacks are false positives of the label predicted
    assert b["fine_labels"]["ivory_carving"]["precision"] == pytest.approx(1 / 4)


def test_only_failures_and_unlabelled() -> None:
    recs = [failed("x"), failed("y")]
    unl = rec("u", "", "", {"ceramics": 1.0})
    b = evaluate_model(model_run(records=[*recs, unl]), n_resamples=10)
    assert b["counts"]["failed"] == 2 and b["counts"]["unlabelled"] == 1
    assert b["counts"]["evaluated"] == 0
    assert all(v["value"] is None for v in b["headline"].values())
    assert [it["path"] for it in b["failures"]["items"]] == ["x", "y"]


def test_unknown_group_is_a_data_error() -> None:
    bad = rec("z", "ceramics", "not_a_group", {"ceramics": 1.0})
    with pytest.raises(DataError, match="not_a_group"):
        evaluate_model(model_run(records=[bad]), n_resamples=0)


def test_binary_block_for_positive_groups() -> None:
    recs = random_records(200, 2)
    b = evaluate_model(model_run(records=recs), n_resamples=100, positive_groups=["ivory"])
    bn = b["binary"]
    truth = np.array([r["group"] == "ivory" for r in recs])
    flagged = np.array([r["decisions"]["ivory"] == "flag" for r in recs])
    assert bn["positives"] == truth.sum()
    assert bn["at_threshold"]["balanced_accuracy"]["value"] == pytest.approx(
        skm.balanced_accuracy_score(truth, flagged))
    assert bn["average_precision"]["value"] == pytest.approx(skm.average_precision_score(
        truth, [r["probabilities"]["ivory_carving"] for r in recs]))
    assert evaluate_model(model_run(records=recs), n_resamples=0)["binary"] is None


def test_comparison_of_a_model_with_itself_and_card_metrics(tmp_path: Path) -> None:
    recs = random_records(120, 3)
    runs = [model_run("m@1", recs), model_run("m@2", [dict(r) for r in recs])]
    pset = PredictionSet(None, {"record": "run", "command": "wildvision bench ...",
                                "manifest": {"path": "m.csv", "sha256": "f" * 64, "rows": 120},
                                "split": "test", "git": {"commit": "abc", "dirty": False}},
                         runs)
    metrics = build_metrics(pset, n_resamples=100, seed=1)
    comp = metrics["comparison"]
    assert comp["models"] == ["m@1", "m@2"]
    delta = comp["paired"][0]["delta"]
    assert comp["paired"][0]["images"] == 120
    for k in HEADLINE_KEYS:
        if delta[k]["value"] is not None:
            assert delta[k]["value"] == 0.0 and delta[k]["ci95"] == [0.0, 0.0]
    json.dumps(metrics, allow_nan=False)  # strictly valid JSON
    cm = card_metrics(metrics, "m@2")
    assert cm["model"]["name"] == "m" and cm["data"]["manifest_sha256"] == "f" * 64
    assert cm["command"] == "wildvision bench ..." and cm["git_commit"] == "abc"
    assert set(cm["headline"]) == set(HEADLINE_KEYS)
    assert cm["headline"]["macro_f1_group"]["ci95"][0] is not None
    assert "ivory" in cm["groups"] and "recall_at_precision_0.95" in cm["groups"]["ivory"]
    iv = cm["groups"]["ivory"]
    p, r = iv["flag_precision"]["value"], iv["flag_recall"]["value"]
    assert iv["flag_f1"]["value"] == pytest.approx(2 * p * r / (p + r))
    assert 0.0 <= iv["argmax_f1"] <= 1.0
    lo, hi = iv["argmax_f1_ci95"]
    assert lo <= iv["argmax_f1"] <= hi
    with pytest.raises(DataError, match="no model"):
        card_metrics(metrics, "other")
    with pytest.raises(DataError, match="schema"):
        card_metrics({**metrics, "schema_version": 99})


def test_read_predictions_errors(tmp_path: Path) -> None:
    p = tmp_path / "p.jsonl"
    with pytest.raises(DataError, match="not found"):
        read_predictions(p)
    p.write_text(json.dumps({"record": "image", "model_key": "x"}) + "\n")
    with pytest.raises(DataError, match="undeclared"):
        read_predictions(p)
    p.write_text(json.dumps({"record": "model", "model_key": "x", "labels": [],
                             "label_groups": {}, "name": "x", "version": "1"}) + "\n")
    with pytest.raises(DataError, match="no 'run' record"):
        read_predictions(p)
    p.write_text(json.dumps({"record": "run", "predictions_format": 99}) + "\n")
    with pytest.raises(DataError, match="newer"):
        read_predictions(p)


def test_read_predictions_skips_a_cut_last_line(tmp_path: Path) -> None:
    lines = [
        {"record": "run", "predictions_format": 1, "command": "c"},
        {"record": "model", "model_key": "m@1", "labels": list(LABEL_GROUPS),
         "label_groups": LABEL_GROUPS, "name": "m", "version": "1"},
        {**small_records()[0], "model_key": "m@1"},
        {"record": "timing", "model_key": "m@1", "speed": {"images_per_s": 3.0}},
    ]
    text = "".join(json.dumps(x) + "\n" for x in lines)
    cut = json.dumps({**small_records()[1], "model_key": "m@1"})[:40]
    p = tmp_path / "p.jsonl"
    p.write_text(text + cut)
    pset = read_predictions(p)
    assert pset.skipped_lines == 1
    assert [m.key for m in pset.models] == ["m@1"]
    assert len(pset.models[0].records) == 1
    assert pset.models[0].speed == {"images_per_s": 3.0}
