"""``wildvision extend`` on the shipped default model and real photos (../shared/data).

The shipped model was trained on every folder of the reference data, so no label there is
new to it. The tests therefore derive from it a base that lacks two labels — ``live_wolf``
(flaggable, ``live_protected_animal``) and ``seashell_decor`` (benign, a look-alike of ivory
carvings) — by removing their rows from its head, its extension bank and its open-set gate
(:func:`wildvision.extend.drop_labels`), and extend that base with 40 reference training photos
of each, through the ``wildvision extend`` command in a subprocess (which must not import
torch).

What this checks, honestly: the head refit, retention of the base groups, the thresholds and
the gate. It does NOT check whether the embedding can represent a concept the network never
saw: the network was fine-tuned with wolves and seashells among its labels.
``benchmarks/extend_unseen.py`` measures that with a model trained without a whole source
(docs/extend.md).

To stay fast, the reference test split is a fixed stratified subset: every test photo of the
two labels (their held-out photos), every ivory test photo up to 60, and up to 15 of every
other label (about 570 photos, embedded once: the extended package runs the same network, so
its outputs are its head applied to the same embeddings; the real classification path is
checked on parrots, ivory and the held-out photos).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from wildvision import Classifier, Prediction
from wildvision.bank import BANK_FILE, embed_images, package_bank
from wildvision.head import HEAD_FILE, package_head
from wildvision.modelpack import ModelCard, load_package, sha256_file
from wildvision.scores import softmax

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "datasets" / "wildvision-ref" / "manifest.csv"
BASE = ROOT / "wildvision" / "models" / "wildvision-base"
NEW = {"live_wolf": "live_protected_animal", "seashell_decor": "benign"}
N_NEW = 40  # training photos per label given to extend
CAP, CAP_IVORY = 15, 60  # test photos per label in the subset

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@dataclass
class Setup:
    shipped: ModelCard
    base: Path  # the shipped model without the two labels
    ext: Path  # base extended with them
    summary: dict[str, object]  # what `wildvision extend` printed
    torch_imported: bool
    paths: list[str]  # the test subset
    truth: list[str]  # fine labels
    embeddings: np.ndarray
    logits: np.ndarray  # the shipped model's


def _rows() -> list[dict[str, str]]:
    with open(MANIFEST, encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if not r["error"]]


def _test_subset(rows: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    seen: dict[str, int] = {}
    for r in rows:
        if r["split"] != "test":
            continue
        lab = r["fine_label"]
        cap = (10**6 if lab in NEW else CAP_IVORY if lab == "ivory_carving" else CAP)
        if seen.get(lab, 0) < cap:
            seen[lab] = seen.get(lab, 0) + 1
            out.append(r)
    return out


@pytest.fixture(scope="module")
def setup(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("extend-real")
    rows = _rows()
    new_csv = root / "new.csv"
    with open(new_csv, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "fine_label", "group"])
        for lab, group in NEW.items():
            given = [r for r in rows if r["split"] == "train" and r["fine_label"] == lab]
            assert len(given) >= N_NEW, lab
            w.writerows([shared_data / r["path"], lab, group] for r in given[:N_NEW])
    base, ext = root / "base-without", root / "extended"
    code = (
        "import json, sys\n"
        "from wildvision.extend import drop_labels\n"
        "from wildvision.cli import main\n"
        f"drop_labels({str(BASE)!r}, {list(NEW)!r}, {str(base)!r}, name='base-without')\n"
        f"rc = main(['extend', '--base', {str(base)!r}, '--data', {str(new_csv)!r}, "
        f"'--out', {str(ext)!r}])\n"
        "assert rc == 0, rc\n"
        "print(json.dumps({'torch': 'torch' in sys.modules}))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    summary = json.loads("\n".join(lines[:-1]))  # the command's summary, then ours
    torch_imported = json.loads(lines[-1])["torch"]

    test = _test_subset(rows)
    clf = Classifier(BASE, open_set=False)
    emb = embed_images(clf, [str(shared_data / r["path"]) for r in test])
    assert not emb.failures
    return Setup(load_package(BASE).card, base, ext, summary, torch_imported,
                 [str(shared_data / r["path"]) for r in test],
                 [r["fine_label"] for r in test], emb.embeddings, emb.logits)


def _f1(pred: Sequence[str], truth: Sequence[str], k: str) -> float:
    tp = sum(p == k and t == k for p, t in zip(pred, truth, strict=True))
    fp = sum(p == k and t != k for p, t in zip(pred, truth, strict=True))
    fn = sum(p != k and t == k for p, t in zip(pred, truth, strict=True))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def _labels(s: Setup, pkg_dir: Path) -> tuple[ModelCard, list[str]]:
    """A package's most probable label on the test subset (its head on the embeddings)."""
    pkg = load_package(pkg_dir)
    head = package_head(pkg)
    assert head is not None
    p = softmax(head.logits(s.embeddings), pkg.card.temperature)
    return pkg.card, [pkg.card.labels[k] for k in p.argmax(axis=1)]


def test_extend_ran_without_torch_and_wrote_the_lineage(setup: Setup) -> None:
    assert setup.torch_imported is False
    card = load_package(setup.ext).card  # every sha256 verified
    assert {"model.onnx", "model.int8.onnx", HEAD_FILE, BANK_FILE, "familiarity.npz"} <= \
        set(card.files)
    assert card.labels[-2:] == tuple(NEW)
    assert all(card.label_groups[lab] == g for lab, g in NEW.items())
    steps = card.extra["lineage"][-2:]  # after the shipped model's own steps
    assert [s["step"] for s in steps] == ["drop_labels", "extend"]
    assert steps[0]["base"] == "wildvision-base" and steps[0]["base_version"] == \
        setup.shipped.version
    assert steps[0]["base_files"]["model.onnx"] == sha256_file(BASE / "model.onnx")
    assert steps[0]["gate_references_removed"] > 0
    assert {lab: v["train"] + v["val"] for lab, v in steps[1]["labels"].items()} == \
        dict.fromkeys(NEW, N_NEW)
    # the derived base really lacks them: no labels, no bank rows
    base = load_package(setup.base)
    bank = package_bank(base)
    shipped_bank = package_bank(load_package(BASE))
    assert bank is not None and shipped_bank is not None
    assert not set(NEW) & set(base.card.labels) and not set(NEW) & set(bank.label_names)
    gone = [shipped_bank.label_names.index(lab) for lab in NEW]
    assert len(bank.labels) == int((~np.isin(shipped_bank.labels, gone)).sum())
    # the shipped bank (the base's training embeddings) fits the budget
    assert (BASE / BANK_FILE).stat().st_size <= 10_000_000


def test_base_groups_keep_their_f1_on_the_reference_test_split(setup: Setup) -> None:
    """Every base group's F1 (most probable group), on the test photos of the base's labels,
    within 1 point of the base's."""
    bcard, before = _labels(setup, setup.base)
    ecard, after = _labels(setup, setup.ext)
    idx = [i for i, t in enumerate(setup.truth) if t in bcard.label_groups]
    truth = [bcard.label_groups[setup.truth[i]] for i in idx]
    g_before = [bcard.label_groups[before[i]] for i in idx]
    g_after = [ecard.label_groups[after[i]] for i in idx]
    shipped = softmax(setup.logits, setup.shipped.temperature).argmax(axis=1)
    g_shipped = [setup.shipped.label_groups[setup.shipped.labels[shipped[i]]] for i in idx]
    report = {}
    for g in bcard.groups:
        b, a = _f1(g_before, truth, g), _f1(g_after, truth, g)
        report[g] = {"base": round(b, 4), "extended": round(a, 4),
                     "shipped": round(_f1(g_shipped, truth, g), 4)}
        assert a >= b - 0.01, (g, report[g])
    print(f"\nreference test subset ({len(idx)} photos), group F1:", report)


def test_new_labels_f1_on_held_out_photos(setup: Setup) -> None:
    """Each new label's F1 (most probable label) on its reference test photos (not given to
    extend), with every other photo of the subset as a negative."""
    ecard, pred = _labels(setup, setup.ext)
    scores = {}
    for lab in NEW:
        scores[lab] = round(_f1(pred, setup.truth, lab), 4)
        n = sum(t == lab for t in setup.truth)
        val = ecard.metrics["extension_validation"]["new_labels"][lab]["f1"]
        print(f"\n{lab}: F1 {scores[lab]} on {n} held-out photos (validation: {val})")
        assert n >= 10
        assert scores[lab] >= 0.85, (lab, scores[lab])
    # the real classification path agrees with the head on the embeddings
    held = [i for i, t in enumerate(setup.truth) if t in NEW]
    preds = Classifier(setup.ext, top_k=1).classify_many([setup.paths[i] for i in held])
    got = [p.top_labels[0].label for p in preds if isinstance(p, Prediction)]
    assert sum(g == pred[i] for g, i in zip(got, held, strict=True)) >= len(held) - 1
    # the flaggable new label is flagged (or sent to review) like its group
    wolves = [p for p, i in zip(preds, held, strict=True) if setup.truth[i] == "live_wolf"]
    caught = sum(isinstance(p, Prediction) and p.decision in ("flag", "review")
                 for p in wolves)
    print(f"wolves flagged or reviewed: {caught}/{len(wolves)}")
    assert caught >= 0.85 * len(wolves)


def test_parrots_and_ivory_are_still_flagged(setup: Setup) -> None:
    for lab, group in (("live_parrot", "live_protected_animal"), ("ivory_carving", "ivory")):
        photos = [p for p, t in zip(setup.paths, setup.truth, strict=True) if t == lab]
        assert len(photos) >= 5
        flagged, caught = {}, {}
        for tag, pkg in (("base", setup.base), ("extended", setup.ext)):
            res = [r.group(group).decision for r in Classifier(pkg).classify_many(photos)
                   if isinstance(r, Prediction)]
            assert len(res) == len(photos)
            flagged[tag] = sum(d == "flag" for d in res)
            caught[tag] = sum(d in ("flag", "review") for d in res)
        print(f"\n{lab} ({len(photos)} photos): flagged {flagged}, flagged or reviewed {caught}")
        tol = max(1, len(photos) // 20)
        assert flagged["extended"] >= flagged["base"] - tol, lab
        assert caught["extended"] >= caught["base"] - tol, lab
        assert caught["extended"] >= 0.75 * len(photos), lab


def test_extended_package_serves_benches_and_shows_its_lineage(
        setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same package paths as the default model: the service, the benchmark command,
    ``models show`` (lineage) and int8."""
    from wildvision.cli import main

    held = [(p, t) for p, t in zip(setup.paths, setup.truth, strict=True) if t in NEW]
    # models show prints the lineage back to the shipped model
    assert main(["models", "show", str(setup.ext)]) == 0
    shown = capsys.readouterr().out
    assert "Lineage" in shown and "drop_labels" in shown and "extend" in shown
    assert f"wildvision-base {setup.shipped.version}" in shown
    # bench: the extended package beside its base on held-out photos of the new labels
    bench_csv = tmp_path / "bench.csv"
    with open(bench_csv, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "fine_label", "group", "split"])
        w.writerows([p, t, NEW[t], "test"] for p, t in held[:8] + held[-8:])
    assert main(["bench", "-m", str(setup.ext), "--data", str(bench_csv), "--split", "test",
                 "--out", str(tmp_path / "bench"), "--no-plots", "--bootstrap", "50"]) == 0
    metrics = json.loads((tmp_path / "bench" / "metrics.json").read_text())
    assert "extended" in json.dumps(metrics)
    # int8 runs the same head
    photos = [p for p, _ in held[:6]]
    fp32 = Classifier(setup.ext).classify_many(photos)
    int8 = Classifier(setup.ext, precision="int8").classify_many(photos)
    agree = sum(isinstance(a, Prediction) and isinstance(b, Prediction)
                and a.top_labels[0].label == b.top_labels[0].label
                for a, b in zip(fp32, int8, strict=True))
    assert agree >= len(photos) - 1
    # the service answers with the extended model
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from wildvision.serve import ServeConfig, create_app

    photo = Path(held[0][0])
    with TestClient(create_app(ServeConfig(model=str(setup.ext)))) as client:
        for _ in range(300):
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.1)
        r = client.post("/v1/classify", content=photo.read_bytes(),
                        headers={"content-type": "application/octet-stream"})
        assert r.status_code == 200, r.text
        got = r.json()
    want = Classifier(setup.ext).classify(photo)
    assert isinstance(want, Prediction)
    assert got["model"] == "extended"
    assert got["top_labels"][0]["label"] == want.top_labels[0].label
    assert got["decision"] == want.decision
