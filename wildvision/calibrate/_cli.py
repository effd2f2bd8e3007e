"""``wildvision calibrate`` (stdlib imports only at module level; the work is imported lazily)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

DESCRIPTION = """\
Re-derive a model's flag and review thresholds for your review budget from your own labelled
photos, without retraining and without torch, and write a copy of the package with them.

  wildvision calibrate MODEL --data my_traffic.csv --review-budget 0.01 --out DIR
  wildvision calibrate MODEL --data my_traffic.csv --review-budget 0.01      (measure only)

The manifest needs 'path' and the true 'group' of each photo (benign, ivory,
live_protected_animal ...) or a 'fine_label'. The review budget is the share of benign photos
that may go to review; flag thresholds reach --flag-precision on your photos of each group
(groups with fewer than --min-positives photos keep theirs). Prints the trade-off curve
(review share and flag recall against the budget).

Exit status: 0 when the thresholds were derived (and written), 1 on a failure or when the
budget cannot be met, 2 on a usage error."""


def register(subparsers: Any) -> None:
    """Add the ``calibrate`` subcommand."""
    p = subparsers.add_parser(
        "calibrate", help="re-derive thresholds for a review budget from labelled photos",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model name, package folder or hf://org/name")
    p.add_argument("--data", required=True, metavar="MANIFEST",
                   help="CSV with path and group (or fine_label) of each photo")
    p.add_argument("--data-root", metavar="DIR", default=None,
                   help="folder the manifest's paths are relative to")
    p.add_argument("--split", default=None, help="use only rows of this split")
    p.add_argument("--results", metavar="JSONL", default=None,
                   help="use this `wildvision classify` output for the photos instead of "
                        "running the model")
    p.add_argument("--review-budget", type=float, default=0.02, metavar="SHARE",
                   help="share of benign photos that may go to review (default 0.02)")
    p.add_argument("--flag-precision", type=float, default=0.95, metavar="P",
                   help="precision each group's flag must reach (default 0.95)")
    p.add_argument("--min-positives", type=int, default=20, metavar="N",
                   help="re-derive a group's flag threshold only from at least N photos of it")
    p.add_argument("--min-flag", type=float, default=0.5, metavar="P",
                   help="never flag under this calibrated probability (default 0.5)")
    p.add_argument("--no-open-set", action="store_true",
                   help="calibrate with the open-set gate off")
    p.add_argument("-o", "--out", default=None, metavar="DIR",
                   help="write the calibrated package here (a new folder)")
    p.add_argument("--version", default=None, dest="new_version",
                   help="version of the written package (default: MODEL's +calibrated)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.1f}%"


def run(args: argparse.Namespace) -> int:
    from ..errors import WildvisionError
    from ..policy import ReviewPolicy
    from ..registry import load_model
    from . import calibrate_package, score_manifest, scores_from_results

    try:
        policy = ReviewPolicy(review_budget=args.review_budget,
                              flag_precision=args.flag_precision,
                              min_positives=args.min_positives, min_flag=args.min_flag)
        package = load_model(args.model)
        if args.results:
            scores = scores_from_results(args.results, args.data, package, split=args.split,
                                         data_root=args.data_root)
        else:
            scores = score_manifest(package, args.data, split=args.split,
                                    data_root=args.data_root, open_set=not args.no_open_set)
        source = {"manifest": str(args.data), "split": args.split}
        report = calibrate_package(package, scores, policy, out=args.out, source=source,
                                   version=args.new_version)
    except WildvisionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    res = report.result
    if args.json:
        print(json.dumps({"policy": res.to_dict(), "before": report.before,
                          "after": report.after, "curve": report.curve,
                          "failures": [list(f) for f in report.failures],
                          "out": str(report.out) if report.out else None}, indent=2))
    else:
        out = sys.stdout
        out.write(f"{report.photos} photos ({res.benign} benign); "
                  f"{len(report.failures)} unreadable (left out)\n")
        for path, why in report.failures[:10]:
            out.write(f"  unreadable: {path}: {why}\n")
        out.write(f"review budget {_pct(policy.review_budget)}, flag precision "
                  f"{policy.flag_precision}\n\n")
        out.write("group                  flag      review\n")
        for g, t in res.thresholds.items():
            out.write(f"{g:<22} {t.flag:<9.4f} {t.review:.4f}\n")
        b, a = report.before["calibration"], report.after["calibration"]
        out.write(f"\nbenign sent to review: {_pct(b.get('benign_review_share'))} -> "
                  f"{_pct(a.get('benign_review_share'))}; flagged: "
                  f"{_pct(b.get('benign_flag_share'))} -> {_pct(a.get('benign_flag_share'))}\n")
        out.write(f"flag recall: {_pct(b.get('flag_recall'))} -> {_pct(a.get('flag_recall'))};"
                  f" flagged or reviewed: {_pct(b.get('seen_recall'))} -> "
                  f"{_pct(a.get('seen_recall'))}\n")
        for note in res.notes:
            out.write(f"note: {note}\n")
        out.write("\ntrade-off on these photos (budget: review share of benign / flag "
                  "recall / flagged or reviewed)\n")
        for row in report.curve:
            c = row["calibration"]
            out.write(f"  {_pct(row['review_budget']):>6}: {_pct(c.get('benign_review_share'))}"
                      f" / {_pct(c.get('flag_recall'))} / {_pct(c.get('seen_recall'))}\n")
        if report.out:
            out.write(f"\nwrote {report.out}\n")
    return 0 if res.budget_met else 1
