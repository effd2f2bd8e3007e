"""End-to-end ``wildvision bench`` with the tiny test model on generated images, including
unreadable ones (a text file named .jpg, a truncated JPEG, a missing file)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from wildvision.bench import card_metrics
from wildvision.cli import main
from wildvision.data.manifest import ManifestRow, write_manifest
from wildvision.taxonomy import group_of

GOOD = [  # fine label, source, count
    ("ivory_carving", "museum", 3),
    ("ceramics", "museum", 3),
    ("live_tiger", "zoo", 3),
    ("live_leopard", "zoo", 2),  # not a label of the tiny model
    ("domestic_cat", "pets", 3),
    ("bone_horn_craft", "maker", 2),  # not a label of the tiny model
]
BAD = {"text.jpg": "InvalidImageError", "truncated.jpg": "InvalidImageError",
       "missing.jpg": "InvalidImageError"}


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("benchdata")
    rng = np.random.default_rng(0)
    rows = []
    for label, source, count in GOOD:
        for i in range(count):
            arr = rng.integers(0, 255, size=(48 + 8 * i, 80, 3), dtype=np.uint8)
            ext = ".png" if i % 2 else ".jpg"
            rel = f"{source}/{label}/{i}{ext}"
            (root / source / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / rel)
            rows.append(ManifestRow(path=rel, source=source, label=label, fine_label=label,
                                    group=group_of(label), sha256=_sha(root / rel),
                                    split="test"))
    (root / "bad").mkdir()
    (root / "bad" / "text.jpg").write_text("this is not a JPEG\n")
    buf = root / "bad" / "full.jpg"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, quality=90)
    (root / "bad" / "truncated.jpg").write_bytes(buf.read_bytes()[:300])
    buf.unlink()
    for name in BAD:
        rows.append(ManifestRow(path=f"bad/{name}", source="broken", label="domestic_cat",
                                fine_label="domestic_cat", group="benign", split="test"))
    # a training row that a test-split bench must not touch
    rows.append(ManifestRow(path="zoo/live_tiger/0.jpg", source="zoo", label="live_tiger",
                            fine_label="live_tiger", group=group_of("live_tiger"),
                            split="train"))
    # a file changed since it was indexed
    rows[0] = rows[0].with_(sha256="0" * 64)
    write_manifest(root / "manifest.csv", rows)
    return root


N_TEST = sum(c for _, _, c in GOOD) + len(BAD)


@pytest.fixture(scope="module")
def report(dataset: Path, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
           ) -> Path:
    out = tmp_path_factory.mktemp("report") / "rep"
    rc = main(["bench", "--model", str(tiny_model_dir), "--data", str(dataset / "manifest.csv"),
               "--out", str(out), "--bootstrap", "200", "--batch-size", "4"])
    assert rc == 0
    return out


def _lines(p: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def test_writes_every_output(report: Path) -> None:
    names = {p.name for p in report.iterdir()}
    slug = "tiny-test_0.0.1"
    for f in ("predictions.jsonl", "metrics.json", "report.md", f"pr_{slug}.png",
              f"confusion_groups_{slug}.png", f"confusion_fine_{slug}.png",
              f"reliability_{slug}.png"):
        assert f in names, f
    for png in report.glob("*.png"):
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] > 200
    assert not any(n.endswith(".partial") for n in names)


def test_failed_images_are_counted_and_listed(report: Path) -> None:
    m = json.loads((report / "metrics.json").read_text())
    b = m["models"][0]
    assert b["counts"]["images"] == N_TEST
    assert b["counts"]["failed"] == len(BAD)
    assert b["counts"]["evaluated"] == N_TEST - len(BAD)
    listed = {Path(it["path"]).name: it["error_type"] for it in b["failures"]["items"]}
    assert listed == BAD
    assert all(it["message"] for it in b["failures"]["items"])
    md = (report / "report.md").read_text()
    assert f"### Failed images ({len(BAD)})" in md
    for name in BAD:
        assert f"bad/{name}" in md
    assert b["by_source"]["broken"]["failed"] == len(BAD)
    assert b["counts"]["sha256_mismatch"] == 1


def test_metrics_json_schema_and_provenance(report: Path, dataset: Path,
                                            tiny_model_dir: Path) -> None:
    m = json.loads((report / "metrics.json").read_text())
    assert m["schema_version"] == 1 and m["kind"] == "wildvision.bench"
    prov = m["provenance"]
    assert prov["manifest"]["sha256"] == _sha(dataset / "manifest.csv")
    assert prov["split"] == "test" and prov["images"] == N_TEST and prov["suite"] is None
    assert prov["command"].startswith("wildvision bench --model ")
    assert "commit" in prov["git"]
    assert prov["predictions"]["sha256"] == _sha(report / "predictions.jsonl")
    b = m["models"][0]
    card = json.loads((tiny_model_dir / "card.json").read_text())
    assert b["model"]["name"] == card["name"] and b["model"]["files"] == card["files"]
    assert b["model"]["card_sha256"] == _sha(tiny_model_dir / "card.json")
    for section in ("headline", "groups", "fine_labels", "confusion", "calibration",
                    "by_source", "benign", "decisions", "coverage", "failures", "speed"):
        assert section in b, section
    assert b["coverage"]["labels_not_in_model"] == {"bone_horn_craft": 2, "live_leopard": 2}
    assert len(b["calibration"]["top_label"]["bins"]) == 15
    cm = b["confusion"]["groups"]["matrix"]
    assert sum(map(sum, cm)) == N_TEST - len(BAD)
    assert set(b["benign"]["by_fine_label"]) == {"ceramics", "domestic_cat", "bone_horn_craft"}
    sp = b["speed"]
    assert sp["machine_dependent"] is True and sp["images"] == N_TEST
    assert sp["images_per_s"] > 0 and sp["batch_size"] == 4
    assert sp["batches"] == -(-N_TEST // 4)
    assert sp["per_image_s"]["p50"] <= sp["batch_s"]["p50"]
    assert sp["machine"]["cpu_count"] >= 1 and sp["machine"]["cpu_model"]
    json.dumps(m, allow_nan=False)


def test_predictions_cache_records(report: Path, tiny_model_dir: Path) -> None:
    recs = _lines(report / "predictions.jsonl")
    assert recs[0]["record"] == "run"
    model = [r for r in recs if r["record"] == "model"]
    images = [r for r in recs if r["record"] == "image"]
    assert len(model) == 1 and [r["record"] for r in recs].count("timing") == 1
    assert len(images) == N_TEST
    assert all(r["split"] == "test" for r in images)
    labels = model[0]["labels"]
    th = model[0]["thresholds"]
    for r in images:
        if not r["ok"]:
            assert r["error_type"] and r["message"]
            continue
        assert list(r["probabilities"]) == labels
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert r["top_label"] == max(labels, key=lambda k: r["probabilities"][k])
        ivory = sum(p for lab, p in r["probabilities"].items()
                    if model[0]["label_groups"][lab] == "ivory")
        expect = "flag" if ivory >= th["ivory"]["flag"] else \
            "review" if ivory >= th["ivory"]["review"] else "pass"
        assert r["decisions"]["ivory"] == expect
        assert len(r["sha256"]) == 64


def test_render_reproduces_metrics(report: Path, tmp_path: Path) -> None:
    original = json.loads((report / "metrics.json").read_text())
    out1, out2 = tmp_path / "r1", tmp_path / "r2"
    assert main(["bench", "render", str(report / "predictions.jsonl"), "--out", str(out1),
                 "--bootstrap", "200"]) == 0
    assert main(["bench", "--from-predictions", str(report / "predictions.jsonl"),
                 "--out", str(out2), "--bootstrap", "200", "--no-plots"]) == 0
    for out in (out1, out2):
        m = json.loads((out / "metrics.json").read_text())
        assert m["models"] == original["models"]
        assert m["provenance"]["command"] == original["provenance"]["command"]
        assert m["provenance"]["render_command"].startswith("wildvision bench render ")
        assert (out / "predictions.jsonl").read_bytes() == \
            (report / "predictions.jsonl").read_bytes()
        assert (out / "report.md").is_file()
    assert list(out2.glob("*.png")) == []
    assert len(list(out1.glob("*.png"))) == 4


def test_card_metrics_from_file(report: Path) -> None:
    cm = card_metrics(report / "metrics.json")
    assert cm["model"]["name"] == "tiny-test"
    assert cm["data"]["split"] == "test" and cm["data"]["failed"] == len(BAD)
    assert cm["data"]["manifest_sha256"] and cm["command"].startswith("wildvision bench")
    assert set(cm["headline"]["accuracy_group"]) == {"value", "ci95"}


def test_two_models_side_by_side(dataset: Path, tmp_path: Path, tiny_model_dir: Path) -> None:
    other = tmp_path / "tiny-b"
    shutil.copytree(tiny_model_dir, other)
    card = json.loads((other / "card.json").read_text())
    card.update(name="tiny-b", temperature=0.25)
    (other / "card.json").write_text(json.dumps(card))
    out = tmp_path / "cmp"
    rc = main(["bench", "-m", str(tiny_model_dir), "-m", str(other), "--data",
               str(dataset / "manifest.csv"), "--out", str(out), "--bootstrap", "100"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert [b["key"] for b in m["models"]] == ["tiny-test@0.0.1", "tiny-b@0.0.1"]
    comp = m["comparison"]
    assert comp["models"] == ["tiny-test@0.0.1", "tiny-b@0.0.1"]
    assert comp["paired"][0]["images"] == N_TEST - len(BAD)
    # same logits, other temperature: the argmax label is the same, calibration differs
    a, b = (x["headline"] for x in m["models"])
    assert a["accuracy_fine"]["value"] == b["accuracy_fine"]["value"]
    assert a["macro_f1_fine"]["value"] == b["macro_f1_fine"]["value"]
    assert comp["paired"][0]["delta"]["accuracy_fine"] == {"value": 0.0, "ci95": [0.0, 0.0]}
    assert a["ece_top_label"]["value"] != pytest.approx(b["ece_top_label"]["value"])
    assert (out / "pr_compare.png").is_file()
    md = (out / "report.md").read_text()
    assert "## Comparison" in md and "## tiny-b@0.0.1" in md


def test_suite_file_with_positive_groups(dataset: Path, tmp_path: Path,
                                         tiny_model_dir: Path) -> None:
    suites = tmp_path / "suites.yaml"
    suites.write_text(
        f"manifest: {dataset / 'manifest.csv'}\n"
        "suites:\n"
        "  ivory-vs-lookalikes:\n"
        "    description: ivory against ceramics and bone\n"
        "    fine_labels: [ivory_carving, ceramics, bone_horn_craft]\n"
        "    positive_groups: [ivory]\n"
    )
    out = tmp_path / "suite"
    rc = main(["bench", "-m", str(tiny_model_dir), "--suite",
               f"{suites}#ivory-vs-lookalikes", "--data-root", str(dataset), "--out", str(out),
               "--bootstrap", "50", "--no-plots"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["provenance"]["suite"]["name"] == "ivory-vs-lookalikes"
    assert m["provenance"]["suite"]["file_sha256"] == _sha(suites)
    assert m["provenance"]["images"] == 8
    b = m["models"][0]
    assert b["counts"]["by_group"] == {"ivory": 3, "benign": 5}
    assert b["binary"]["positive_groups"] == ["ivory"]
    assert b["binary"]["positives"] == 3 and b["binary"]["negatives"] == 5
    assert "Binary task: ivory vs the rest" in (out / "report.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["bench", "--data", "x.csv", "--out", "o"], "at least one --model"),
    (["bench", "--model", "m", "--out", "o"], "--data"),
    (["bench", "--model", "m", "--data", "x.csv"], "--out"),
    (["bench", "render", "--out", "o"], "render PREDICTIONS"),
    (["bench", "render", "p.jsonl", "--model", "m", "--out", "o"], "takes no --model"),
    (["bench", "--model", "m", "--data", "x.csv", "--out", "o", "--bootstrap", "-1"],
     "--bootstrap"),
])
def test_usage_errors_exit_2(argv: list[str], message: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_data_errors_exit_1(dataset: Path, tmp_path: Path, tiny_model_dir: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    base = ["bench", "-m", str(tiny_model_dir), "--out", str(tmp_path / "o")]
    assert main([*base, "--data", str(tmp_path / "nope.csv")]) == 1
    assert "manifest not found" in capsys.readouterr().err
    assert main([*base, "--data", str(dataset / "manifest.csv"), "--split", "val"]) == 1
    assert "no rows with split 'val'" in capsys.readouterr().err
    assert main(["bench", "render", str(tmp_path / "none.jsonl"), "--out",
                 str(tmp_path / "o")]) == 1


def test_split_all_includes_training_rows(dataset: Path, tmp_path: Path,
                                          tiny_model_dir: Path) -> None:
    out = tmp_path / "all"
    assert main(["bench", "-m", str(tiny_model_dir), "--data", str(dataset / "manifest.csv"),
                 "--split", "all", "--out", str(out), "--bootstrap", "0", "--no-plots"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["models"][0]["counts"]["images"] == N_TEST + 1
    assert m["models"][0]["headline"]["accuracy_group"]["ci95"] == [None, None]


def test_bench_import_is_light() -> None:
    code = ("import sys, wildvision.bench, wildvision.bench._cli; "
            "print(sorted(m for m in ('matplotlib', 'sklearn', 'torch', 'yaml') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
