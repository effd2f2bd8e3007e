"""training/loso.py: a leave-one-source-out run end to end on a small real manifest."""

from __future__ import annotations

import csv
import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")

REPO = Path(__file__).resolve().parent.parent
QUICK = REPO / "training" / "recipes" / "quick.yaml"
# (source, fine label, rows): caltech101 is held out; it is the only source of watch and
# everyday_object here, so those two labels cannot be learned and must be dropped.
PICK = [("bigcats", "live_tiger", 12), ("clothing", "clothing", 12),
        ("met_ivory", "ivory_carving", 12), ("caltech101", "watch", 5),
        ("caltech101", "everyday_object", 5), ("caltech101", "live_turtle_tortoise", 4),
        ("web_conservation", "live_turtle_tortoise", 12)]


def _load_loso():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("loso", REPO / "training" / "loso.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.realdata
def test_loso_holds_the_source_out_and_benches_on_it(shared_data: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with open(REPO / "datasets" / "wildvision-ref" / "manifest.csv", encoding="utf-8") as f:
        ref = list(csv.DictReader(f))
    rows = []
    for source, label, n in PICK:
        got = sorted((r for r in ref if r["source"] == source and r["fine_label"] == label),
                     key=lambda r: r["sha256"])[:n]
        assert len(got) == n, (source, label)
        rows += got
    man = tmp_path / "small" / "manifest.csv"
    man.parent.mkdir()
    with open(man, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(ref[0]))
        w.writeheader()
        w.writerows({**r, "split": ""} for r in rows)
    (man.parent / "dataset.json").write_text(json.dumps({"data_root": str(shared_data)}))

    out = tmp_path / "loso"
    assert _load_loso().main(["--holdout-source", "caltech101", "--recipe", str(QUICK),
                              "--out", str(out), "--manifest", str(man)]) == 0

    info = json.loads((out / "loso.json").read_text(encoding="utf-8"))
    assert set(info["labels_dropped"]) == {"watch", "everyday_object"}
    with open(out / "trainval.csv", encoding="utf-8") as f:
        trainval = list(csv.DictReader(f))
    assert trainval and not [r for r in trainval if r["source"] == "caltech101"]
    assert {r["split"] for r in trainval} == {"train", "val"}
    assert info["train_rows"] + info["val_rows"] == len(trainval)
    # the caltech turtles are tested although turtles were learned from another source
    with open(out / "split.csv", encoding="utf-8") as f:
        split = list(csv.DictReader(f))
    test = [r for r in split if r["split"] == "test"]
    assert Counter(r["source"] for r in test)["caltech101"] == 14
    card = json.loads((out / "run" / "package" / "card.json").read_text(encoding="utf-8"))
    assert "watch" not in card["labels"] and "live_turtle_tortoise" in card["labels"]
    metrics = json.loads((out / "bench" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["provenance"]["images"] == len(test)
    no_gate = json.loads((out / "bench-no-gate" / "metrics.json").read_text(encoding="utf-8"))
    assert no_gate["provenance"]["images"] == len(test)
    assert '"open_set": false' in json.dumps(no_gate) and '"open_set": true' in json.dumps(metrics)
    benign = metrics["models"][0]["benign"]
    assert benign["by_source"]["caltech101"]["n"] == 5 + 5  # its watches and everyday objects
