"""Which open-set score keeps a model's flags on unfamiliar photos down? (docs/core.md)

Runs a model package over a split manifest, then compares scores for telling its false flags
on benign photos apart from its true flags, and what a gate on each score does when its
threshold is the ``--quantile`` of the score over the correctly flagged validation images:

- from the outputs only: max softmax probability, energy (logsumexp of the logits), max logit,
  the largest flaggable group probability (a stricter flag threshold in disguise);
- 1-nearest-neighbour cosine similarity of the embedding to the training images (Sun et al.
  2022), in full and in the 256-d projection that ``wildvision export familiarity`` ships.

    python benchmarks/open_set.py --model runs/loso/caltech101/run/package \
        --data runs/loso/caltech101/split.csv --out runs/bench/open_set_loso_caltech101.json

``--data`` must have train, val and test rows (the LOSO split of training/loso.py holds the
source out in test). Needs the core install plus scikit-learn (``[bench]``) for the AUROC.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from wildvision.data.manifest import read_manifest
from wildvision.imaging import decode_image
from wildvision.openset import build_familiarity
from wildvision.predict import Classifier
from wildvision.preprocess import preprocess_image
from wildvision.taxonomy import FLAGGABLE_GROUPS


def _outputs(clf: Classifier, manifest: Any, rows: list[Any]) -> dict[str, np.ndarray]:
    """The classifier's arrays (logits, embedding, calibrated label and group
    probabilities) for ``rows``, decoded and preprocessed exactly as inference does."""
    cfg = clf.card.preprocess

    def prep(r: Any) -> np.ndarray:
        img = decode_image(manifest.abs_path(r), draft_size=cfg.draft_size).image
        return preprocess_image(img, cfg)

    parts: list[dict[str, np.ndarray]] = []
    with ThreadPoolExecutor(2) as ex:
        for i in range(0, len(rows), 64):
            parts.append(clf.predict_arrays(np.stack(list(ex.map(prep, rows[i:i + 64])))))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model package folder")
    ap.add_argument("--data", required=True, help="split manifest (train/val/test rows)")
    ap.add_argument("--quantile", type=float, default=0.01)
    ap.add_argument("--out", required=True, help="JSON report")
    a = ap.parse_args(argv)
    from sklearn.metrics import roc_auc_score

    t0 = time.perf_counter()
    clf = Classifier(a.model, open_set=False)  # the scores are compared without any gate
    card = clf.card
    m = read_manifest(a.data)
    rows = {s: [r for r in m if r.split == s and r.readable
                and (s == "test" or r.fine_label in card.label_groups)]
            for s in ("train", "val", "test")}
    out = {s: _outputs(clf, m, rows[s]) for s in rows}
    groups = list(card.groups)
    flaggable = [i for i, g in enumerate(groups) if g in FLAGGABLE_GROUPS]

    def decisions(split: str) -> dict[str, Any]:
        o = out[split]
        z, p, gp = o["logits"].astype(np.float64), o["probabilities"], o["group_probabilities"]
        flags = np.zeros((len(z), len(groups)), bool)
        for i in flaggable:
            th = clf.thresholds[groups[i]]
            flags[:, i] = [th.decide(float(v)) == "flag" for v in gp[:, i]]
        truth = np.array([card.label_groups.get(r.fine_label, r.group) for r in rows[split]])
        true_flag = np.array([truth[k] in groups and flags[k, groups.index(truth[k])]
                              for k in range(len(z))])
        scores = {
            "max_softmax": p.max(1),
            "energy": np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1),
            "max_logit": z.max(1),
            "flag_group_probability": gp[:, flaggable].max(1),
        }
        return {"flagged": flags.any(1), "true_flag": true_flag,
                "benign": truth == "benign", "scores": scores, "emb": o["embedding"]}

    val, test = decisions("val"), decisions("test")
    x_train = out["train"]["embedding"]
    for name, dims in (("nearest_neighbour_full", x_train.shape[1]),
                       ("nearest_neighbour_256", 256)):
        # only the scores are used here: every score gets the same pooled threshold below
        gate, _ = build_familiarity(x_train, {"pooled": val["emb"][val["true_flag"]]},
                                    dims=dims)
        val["scores"][name] = gate.score(val["emb"])
        test["scores"][name] = gate.score(test["emb"])

    fb = test["benign"] & test["flagged"]           # false flags on benign photos
    fp = ~test["benign"] & test["flagged"]           # flags on flaggable photos
    pos = ~test["benign"]
    report: dict[str, Any] = {
        "command": "python benchmarks/open_set.py " + " ".join(sys.argv[1:] if argv is None
                                                               else argv),
        "model": {"name": card.name, "version": card.version},
        "data": {"manifest": a.data, "sha256": m.sha256,
                 "rows": {s: len(r) for s, r in rows.items()}},
        "quantile": a.quantile,
        "no_gate": {"benign_flagged": float(np.mean(test["flagged"][test["benign"]])),
                    "flag_recall": float(np.mean(test["flagged"][pos]))},
        "scores": {},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "seconds": 0.0,
    }
    try:
        report["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                              text=True, check=False).stdout.strip()
    except OSError:
        report["git_commit"] = None
    for name in test["scores"]:
        s_val, s_test = val["scores"][name], test["scores"][name]
        tau = float(np.quantile(s_val[val["true_flag"]], a.quantile))
        keep = s_test >= tau
        report["scores"][name] = {
            "auroc_false_flag_vs_true_flag": float(roc_auc_score(
                np.r_[np.zeros(fb.sum()), np.ones(fp.sum())], np.r_[s_test[fb], s_test[fp]])),
            "threshold": tau,
            "benign_flagged": float(np.mean((test["flagged"] & keep)[test["benign"]])),
            "flag_recall": float(np.mean((test["flagged"] & keep)[pos])),
        }
    report["seconds"] = round(time.perf_counter() - t0, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: report[k] for k in ("no_gate", "scores")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
