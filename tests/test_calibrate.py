"""`wildvision calibrate`: thresholds for a review budget from labelled photos, no retraining.

Runs the real default model on real reference photos (validation split rows).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wildvision.calibrate import calibrate_package, score_manifest, scores_from_results
from wildvision.cli import main
from wildvision.errors import ConfigError, DataError
from wildvision.modelpack import load_package
from wildvision.policy import REVIEW, ReviewPolicy, decide
from wildvision.predict import Classifier
from wildvision.registry import load_model

REPO = Path(__file__).resolve().parents[1]
REF = REPO / "datasets" / "wildvision-ref" / "manifest.csv"


@pytest.fixture(scope="module")
def small_manifest(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 benign and 24 flaggable validation photos, plus one unreadable file."""
    rows = list(csv.DictReader(REF.open(encoding="utf-8")))
    val = [r for r in rows if r["split"] == "val"]
    benign = [r for r in val if r["group"] == "benign"][::37][:40]
    flag = [r for r in val if r["group"] != "benign"][::23][:24]
    out = tmp_path_factory.mktemp("cal")
    bad = out / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    with (out / "m.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "group", "fine_label"])
        w.writeheader()
        for r in benign + flag:
            w.writerow({"path": str(shared_data / r["path"]), "group": r["group"],
                        "fine_label": r["fine_label"]})
        w.writerow({"path": str(bad), "group": "benign", "fine_label": ""})
    return out / "m.csv"


def test_cli_writes_a_package_that_applies_the_new_thresholds(
        small_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "calibrated"
    rc = main(["calibrate", "wildvision-base", "--data", str(small_manifest),
               "--review-budget", "0.05", "--min-positives", "5", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "1 unreadable" in text and "broken.jpg" in text
    pkg = load_package(out)                      # verifies every file's sha256
    base = load_model("wildvision-base")
    assert pkg.card.files == base.card.files     # weights unchanged
    policy = pkg.card.extra["policy"]
    assert policy["review_budget"] == 0.05 and policy["budget_met"]
    assert policy["calibration_photos"]["count"] == 64
    assert policy["benign_review_share"] <= 0.05
    assert [row["review_budget"] for row in policy["tradeoff_curve"]][:2] == [0.005, 0.01]
    assert pkg.card.extra["lineage"][-1]["base_version"] == base.card.version
    assert pkg.card.version.endswith("+calibrated")
    # the classifier of the written package uses the new thresholds
    clf = Classifier(out)
    for g, t in policy["thresholds"].items():
        assert clf.thresholds[g].flag == pytest.approx(t["flag"])
        assert clf.thresholds[g].review == pytest.approx(t["review"])
    # and the measured share is what the classifier decides on those photos
    paths = [r["path"] for r in csv.DictReader(small_manifest.open()) if r["group"] == "benign"]
    decisions = [p.decision for p in clf.classify_many(paths[:40]) if p.ok]
    assert np.mean([d == "review" for d in decisions]) <= 0.05 + 1e-9


def test_results_file_gives_the_same_thresholds(small_manifest: Path, tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    paths = [r["path"] for r in csv.DictReader(small_manifest.open())]
    assert main(["classify", *paths, "-o", str(results)]) == 1   # the broken file fails
    pkg = load_model("wildvision-base")
    a = score_manifest(pkg, small_manifest)
    b = scores_from_results(results, small_manifest, pkg)
    assert a.paths == b.paths and len(a.failures) == len(b.failures) == 1
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
    assert (a.gated == b.gated).all()
    policy = ReviewPolicy(review_budget=0.05, min_positives=5)
    ra = calibrate_package(pkg, a, policy).result
    rb = calibrate_package(pkg, b, policy).result
    assert ra.thresholds.keys() == rb.thresholds.keys()
    for g in ra.thresholds:
        assert ra.thresholds[g].flag == pytest.approx(rb.thresholds[g].flag, abs=1e-5)
        assert ra.thresholds[g].review == pytest.approx(rb.thresholds[g].review, abs=1e-5)
    d = decide(a.probabilities, a.groups, ra.thresholds, gated=a.gated)
    benign = np.array(a.true_groups) == "benign"
    assert np.mean(d[benign] == REVIEW) == pytest.approx(ra.benign_review_share)


def test_bad_manifests_get_clear_errors(tmp_path: Path, small_manifest: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    nogroup = tmp_path / "nogroup.csv"
    nogroup.write_text("path,fine_label\na.jpg,not_a_label\n", encoding="utf-8")
    with pytest.raises(DataError, match="without a known group"):
        score_manifest("wildvision-base", nogroup)
    notcsv = tmp_path / "x.csv"
    notcsv.write_text("file,label\na.jpg,benign\n", encoding="utf-8")
    assert main(["calibrate", "wildvision-base", "--data", str(notcsv)]) == 1
    assert "no 'path' column" in capsys.readouterr().err
    assert main(["calibrate", "wildvision-base", "--data", str(tmp_path / "missing.csv")]) == 1
    assert "manifest not found" in capsys.readouterr().err
    onlyflag = tmp_path / "onlyflag.csv"
    rows = [r for r in csv.DictReader(small_manifest.open()) if r["group"] != "benign"][:3]
    with onlyflag.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "group"])
        w.writeheader()
        w.writerows({"path": r["path"], "group": r["group"]} for r in rows)
    with pytest.raises(ConfigError, match="no benign photo"):
        calibrate_package("wildvision-base", score_manifest("wildvision-base", onlyflag),
                          ReviewPolicy())
    exists = tmp_path / "exists"
    exists.mkdir()
    s = score_manifest("wildvision-base", small_manifest)
    with pytest.raises(ConfigError, match="exists"):
        calibrate_package("wildvision-base", s, ReviewPolicy(min_positives=5), out=exists)
    assert list(exists.iterdir()) == []


def test_calibrate_needs_no_torch(small_manifest: Path, tmp_path: Path) -> None:
    code = (
        "import sys, json\n"
        "from wildvision.cli import main\n"
        f"rc = main(['calibrate', 'wildvision-base', '--data', {str(small_manifest)!r}, "
        f"'--min-positives', '5', '--json', '--out', {str(tmp_path / 'p')!r}])\n"
        "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=False)
    last = json.loads(proc.stderr.strip().splitlines()[-1])
    assert last == {"rc": 0, "torch": False}, proc.stderr[-2000:]
