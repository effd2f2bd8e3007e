"""Record of how the default model's thresholds follow from its review-budget policy.

    python training/derive_policy.py wildvision/models/wildvision-base \
        --in-source runs/bench/base-v2-val/predictions.jsonl \
        --loso runs/loso/caltech101 --loso runs/loso/common_animals \
        --loso runs/loso/everyday_products --review-budget 0.02 --flag-precision 0.95

Photos from the sources a model was trained on are easy for it; a platform's traffic is not.
So the thresholds are derived on:

* **in source**: the package's own predictions on the validation split
  (``wildvision bench --model PKG --data datasets/wildvision-ref/manifest.csv --split val``);
* **out of source**: for each leave-one-source-out run (``training/loso.py``), that run's model's
  predictions on every photo of the source it never saw (its ``bench/predictions.jsonl``,
  with its own open-set gate): the benign ones stand for unseen everyday traffic, the
  flaggable ones (e.g. bears and wolves of common_animals) for unseen protected animals.

A cross-source check keeps this honest: the out-of-source review share of the thresholds
derived on all of it is near the budget by construction, so for each held-out source the
thresholds are derived again without that source's photos and measured on them
(``policy.cross_source`` in the card): what a new kind of traffic gets.

Both together are the calibration photos of :func:`wildvision.calibrate.calibrate_package`:
``flag`` thresholds reach the flag precision on them, ``review`` thresholds keep the benign
photos sent to review within the budget. The card's ``policy`` block records the thresholds,
the trade-off curve (review share and flag recall against the budget) in source and out of
source, and where the photos came from. The weights are unchanged; the package is rewritten
in place (same version).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from wildvision.calibrate import calibrate_package, concat_scores, scores_from_bench
from wildvision.modelpack import load_package
from wildvision.policy import ReviewPolicy, derive_thresholds, measure


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package", type=Path)
    ap.add_argument("--in-source", type=Path, required=True,
                    help="bench predictions.jsonl of PACKAGE on the validation split")
    ap.add_argument("--loso", type=Path, action="append", default=[],
                    help="a training/loso.py output folder (repeat)")
    ap.add_argument("--review-budget", type=float, default=0.02)
    ap.add_argument("--flag-precision", type=float, default=0.95)
    ap.add_argument("--dry-run", action="store_true", help="print, write nothing")
    a = ap.parse_args(argv)

    pkg = load_package(a.package)
    in_source = scores_from_bench(a.in_source, pkg)
    oos_parts, held = [], []
    for d in a.loso:
        info = json.loads((d / "loso.json").read_text(encoding="utf-8"))
        loso_pkg = load_package(d / "run" / "package")
        src = info["holdout_source"]
        held.append(src)
        oos_parts.append(scores_from_bench(d / "bench" / "predictions.jsonl", loso_pkg,
                                           sources=[src]))
    out_of_source = concat_scores(oos_parts) if oos_parts else None
    calibration = concat_scores([in_source, *oos_parts])
    evaluate = {"in_source": in_source}
    if out_of_source is not None:
        evaluate["out_of_source"] = out_of_source
        for src, part in zip(held, oos_parts, strict=True):
            evaluate[f"out_of_source_{src}"] = part
    policy = ReviewPolicy(review_budget=a.review_budget, flag_precision=a.flag_precision)
    source = {"in_source": f"validation split ({a.in_source})",
              "out_of_source": [f"{s} (leave-one-source-out model, {d})"
                                for s, d in zip(held, a.loso, strict=True)],
              "command": "python training/derive_policy.py " + " ".join(argv or [])}
    current = {g: pkg.card.threshold(g) for g in pkg.card.groups if g != "benign"}
    cross = {}
    for k, src in enumerate(held):
        rest = concat_scores([in_source, *(p for j, p in enumerate(oos_parts) if j != k)])
        r = derive_thresholds(rest.probabilities, rest.true_groups, rest.groups, current,
                              policy, gated=rest.gated)
        part = oos_parts[k]
        cross[src] = {"thresholds": {g: t.to_dict() for g, t in r.thresholds.items()},
                      **measure(part.probabilities, part.true_groups, part.groups,
                                r.thresholds, gated=part.gated)}
    source["cross_source"] = cross
    report = calibrate_package(pkg, calibration, policy, evaluate=evaluate, source=source,
                               out=None if a.dry_run else a.package,
                               version=pkg.card.version, overwrite=True)
    print(json.dumps({"thresholds": {g: t.to_dict() for g, t in
                                     report.result.thresholds.items()},
                      "before": report.before, "after": report.after,
                      "cross_source": cross, "notes": list(report.result.notes)}, indent=1))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
