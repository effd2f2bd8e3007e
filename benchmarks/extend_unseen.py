"""Can ``wildvision extend`` teach a model a concept its network never saw? An accuracy
benchmark on real photos (not part of the test run).

    python benchmarks/extend_unseen.py --base runs/loso/common_animals/run/package \
        --manifest datasets/wildvision-ref/manifest.csv --out runs/bench/extend_unseen

``--base`` should be a model trained WITHOUT one source of the reference data (a
leave-one-source-out model, ``--source``, default ``common_animals``): its network never saw
bears, wolves or farm animals. The script

1. gives the base a copy with an extension bank when it has none (``wildvision export bank``
   on the base's own training manifest, the card's ``training.manifest``; ``--bank-manifest``
   to name another), cached under ``--work`` by the base's ``model.onnx`` sha256;
2. extends it with ``--photos`` (40) photos each of ``live_bear`` and ``live_wolf``
   (``live_protected_animal``) and ``farm_animal`` (``benign``, the look-alike) from the
   source's ``train`` rows of ``--manifest``;
3. embeds the manifest's ``test`` rows once with the base network (the extended package runs
   the same network with a new head, so its outputs are the head applied to the same
   embeddings) and reports
   * each new label's precision/recall/F1 (most probable label) on the source's test rows, and
     on the whole test split;
   * on the source's test rows, through the real ``Classifier`` (thresholds and open-set gate):
     how many bears and wolves are flagged (or sent to review) before and after, and how many
     of its benign photos are;
   * each base group's F1 (most probable group) on the test rows of the other sources, before
     and after.

Writes ``report.json`` into ``--out`` and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wildvision import Classifier
from wildvision.bank import BANK_FILE, embed_images, package_bank
from wildvision.data.manifest import read_manifest
from wildvision.export.bank import add_bank
from wildvision.extend import extend_model
from wildvision.head import package_head
from wildvision.modelpack import load_package, sha256_file
from wildvision.scores import softmax

ROOT = Path(__file__).resolve().parents[1]
NEW = (("live_bear", "live_protected_animal"), ("live_wolf", "live_protected_animal"),
       ("farm_animal", "benign"))


def _f1(pred: Sequence[str], truth: Sequence[str], k: str) -> dict[str, float]:
    tp = sum(p == k and t == k for p, t in zip(pred, truth, strict=True))
    fp = sum(p == k and t != k for p, t in zip(pred, truth, strict=True))
    fn = sum(p != k and t == k for p, t in zip(pred, truth, strict=True))
    return {"support": tp + fn,
            "precision": round(tp / (tp + fp), 4) if tp + fp else 0.0,
            "recall": round(tp / (tp + fn), 4) if tp + fn else 0.0,
            "f1": round(2 * tp / (2 * tp + fp + fn), 4) if tp + fp + fn else 0.0}


def _resolve(path: str, base: Path) -> Path | None:
    p = Path(path)
    if p.is_absolute():
        return p if p.is_file() else None
    for root in (Path.cwd(), *base.resolve().parents):
        if (root / p).is_file():
            return root / p
    return None


def banked_base(base: Path, work: Path, bank_manifest: str | None) -> Path:
    """``base`` itself when it carries a bank, else a cached copy given one."""
    pkg = load_package(base)
    if package_bank(pkg) is not None:
        return base
    target = work / f"base-{sha256_file(pkg.onnx_file())[:12]}"
    if (target / BANK_FILE).is_file() and BANK_FILE in load_package(target).card.files:
        print(f"bank: cached in {target}", file=sys.stderr)
        return target
    manifest = (_resolve(bank_manifest, base) if bank_manifest
                else _resolve(str(pkg.card.training.get("manifest", "")), base))
    if manifest is None:
        raise SystemExit(f"{base} has no bank and its training manifest was not found; "
                         "pass --bank-manifest")
    tmp = work / f".{target.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp)
    t0 = time.perf_counter()
    rec = add_bank(tmp, manifest, command=f"wildvision export bank {base} --data {manifest}")
    print(f"bank: {rec['rows']} rows embedded in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="package trained without --source")
    ap.add_argument("--manifest", default=str(ROOT / "datasets/wildvision-ref/manifest.csv"))
    ap.add_argument("--source", default="common_animals",
                    help="the source the base never saw (default common_animals)")
    ap.add_argument("--photos", type=int, default=40, help="new photos per label (default 40)")
    ap.add_argument("--bank-manifest", default=None,
                    help="manifest of the base's training data (default: the card's)")
    ap.add_argument("--also", action="append", default=[], metavar="LABEL=GROUP",
                    help="another label of the source to add (e.g. wild_mammal_common=benign: "
                    "look-alike negatives); repeatable")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--work", default="runs/bench/extend_unseen/work",
                    help="cache folder (the banked base copy)")
    ap.add_argument("--out", default="runs/bench/extend_unseen")
    a = ap.parse_args(argv)
    new = list(NEW) + [tuple(x.split("=", 1)) for x in a.also]
    t_start = time.perf_counter()
    base_in, out, work = Path(a.base), Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    base_card = load_package(base_in).card
    for label, _g in new:
        if label in base_card.labels:
            raise SystemExit(f"{a.base} already has {label}: use a model trained without "
                             f"{a.source}")

    t0 = time.perf_counter()
    base = banked_base(base_in, work, a.bank_manifest)
    bank_s = time.perf_counter() - t0

    m = read_manifest(a.manifest, data_root=a.data_root)
    rows = [r for r in m if r.readable]
    new_csv = out / "new.csv"
    with open(new_csv, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "fine_label", "group"])
        for label, group in new:
            given = [r for r in rows if r.source == a.source and r.split == "train"
                     and r.fine_label == label][: a.photos]
            if len(given) < a.photos:
                raise SystemExit(f"{a.manifest}: {len(given)} {a.source} train rows of "
                                 f"{label}, need {a.photos}")
            w.writerows([os.fspath(m.abs_path(r).resolve()), label, group] for r in given)
    ext_dir = out / "extended"
    shutil.rmtree(ext_dir, ignore_errors=True)
    t0 = time.perf_counter()
    res = extend_model(base, new_csv, ext_dir, name="extended-unseen",
                       command=f"wildvision extend --base {base} --data {new_csv} "
                               f"--out {ext_dir}")
    extend_s = time.perf_counter() - t0
    ext = load_package(ext_dir)
    head = package_head(ext)
    assert head is not None
    bcard, ecard = load_package(base).card, ext.card

    # the test split, embedded once with the (shared) network
    test = [r for r in rows if r.split == "test"]
    clf = Classifier(base, open_set=False)
    emb = embed_images(clf, [os.fspath(m.abs_path(r).resolve()) for r in test])
    test = [test[int(i)] for i in emb.index]
    lab_before = [bcard.labels[k] for k in
                  softmax(emb.logits, bcard.temperature).argmax(axis=1)]
    lab_after = [ecard.labels[k] for k in
                 softmax(head.logits(emb.embeddings), ecard.temperature).argmax(axis=1)]
    truth = [r.fine_label or r.label for r in test]
    src = [r.source == a.source for r in test]

    new_labels: dict[str, Any] = {}
    for label, _g in new:
        idx = [i for i, s in enumerate(src) if s]
        fp = Counter(truth[i] for i in range(len(test))
                     if lab_after[i] == label and truth[i] != label)
        fn = Counter(lab_after[i] for i in range(len(test))
                     if truth[i] == label and lab_after[i] != label)
        new_labels[label] = {
            f"{a.source}_test": _f1([lab_after[i] for i in idx], [truth[i] for i in idx],
                                    label),
            "all_test": _f1(lab_after, truth, label),
            "false_positives_by_true_label": dict(fp.most_common()),
            "misses_by_predicted_label": dict(fn.most_common())}

    # base groups on the other sources' test rows (labels the base has)
    other = [i for i, r in enumerate(test) if r.source != a.source
             and truth[i] in bcard.label_groups]
    g_truth = [bcard.label_groups[truth[i]] for i in other]
    g_before = [bcard.label_groups[lab_before[i]] for i in other]
    g_after = [ecard.label_groups[lab_after[i]] for i in other]
    groups: dict[str, Any] = {}
    for g in bcard.groups:
        b, af = _f1(g_before, g_truth, g)["f1"], _f1(g_after, g_truth, g)["f1"]
        groups[g] = {"before": b, "after": af, "change_points": round(100 * (af - b), 2),
                     "support": sum(t == g for t in g_truth)}

    # decisions on the source's test rows, thresholds and open-set gate as shipped
    src_rows = [r for r in test if r.source == a.source]
    paths = [os.fspath(m.abs_path(r).resolve()) for r in src_rows]
    decisions: dict[str, Any] = {}
    for tag, pkg in (("before", base), ("after", ext_dir)):
        preds = Classifier(pkg).classify_many(paths)
        d: dict[str, dict[str, int]] = {}
        for r, p in zip(src_rows, preds, strict=True):
            key = (r.fine_label if r.fine_label in ("live_bear", "live_wolf")
                   else "benign" if r.group == "benign" else r.fine_label)
            dec = p.decision if p.ok else "error"  # type: ignore[union-attr]
            d.setdefault(key, {"n": 0, "flag": 0, "review": 0, "pass": 0, "error": 0})
            d[key]["n"] += 1
            d[key][dec] += 1
        decisions[tag] = d

    report = {
        "base": {"path": os.fspath(base_in), "name": bcard.name, "version": bcard.version,
                 "model_sha256": sha256_file(load_package(base).onnx_file()),
                 "training_manifest": bcard.training.get("manifest"),
                 "held_out_source": a.source},
        "manifest": a.manifest, "manifest_sha256": m.sha256,
        "new_photos_per_label": a.photos, "new_labels_given": dict(new),
        "new_labels": new_labels,
        "extension_validation": res.new_labels,
        "retention_bank_validation": res.retention,
        "thresholds_after": {g: t.to_dict() for g, t in ecard.thresholds.items()},
        "base_groups_other_sources_test": {"n": len(other), "metric":
                                           "F1 of the most probable group", "per_group": groups},
        f"{a.source}_test_decisions": decisions,
        "seconds": {"bank": round(bank_s, 1), "extend": round(extend_s, 1),
                    "total": round(time.perf_counter() - t_start, 1)},
        "command": "python benchmarks/extend_unseen.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    print(f"\nbase {bcard.name} {bcard.version} trained without {a.source}; extended with "
          f"{a.photos} photos each of " + ", ".join(lab for lab, _ in new))
    print(f"\nnew labels (most probable label), {a.source} test rows | all test rows")
    print(f"{'label':14} {'n':>4} {'P':>6} {'R':>6} {'F1':>6} | {'P':>6} {'R':>6} {'F1':>6}")
    for label, v in new_labels.items():
        s, t = v[f"{a.source}_test"], v["all_test"]
        print(f"{label:14} {s['support']:4d} {s['precision']:6.3f} {s['recall']:6.3f} "
              f"{s['f1']:6.3f} | {t['precision']:6.3f} {t['recall']:6.3f} {t['f1']:6.3f}")
        print(f"{'':14} taken for it: {v['false_positives_by_true_label']}; "
              f"missed as: {v['misses_by_predicted_label']}")
    print(f"\ndecisions on {a.source} test rows (flag/review/pass), before -> after")
    for key in sorted(decisions["after"]):
        b, af = decisions["before"].get(key, {}), decisions["after"][key]
        print(f"{key:14} n={af['n']:3d}  {b.get('flag', 0)}/{b.get('review', 0)}/"
              f"{b.get('pass', 0)} -> {af['flag']}/{af['review']}/{af['pass']}")
    print(f"\nbase groups, F1 of the most probable group on other sources' test rows "
          f"(n={len(other)})")
    for g, v in groups.items():
        print(f"{g:24} {v['before']:.4f} -> {v['after']:.4f} ({v['change_points']:+.2f})")
    print(f"\nbank {bank_s:.0f} s, extend {extend_s:.0f} s; report: {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
