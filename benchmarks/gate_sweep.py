"""Open-set gate operating points: false-flag rate at equal flag recall, from two bench runs.

    python benchmarks/gate_sweep.py \
        --run lite1=runs/loso/caltech101-lite1/bench,runs/loso/caltech101-lite1/bench-nogate \
        --run lite0=runs/loso/caltech101/bench-fam,runs/loso/caltech101/bench \
        --recall 0.80 0.85 0.90 --out runs/bench/gate_sweep.json

Each ``--run NAME=GATED,UNGATED`` names the report folders of one model benchmarked with its
gate (``wildvision bench``) and without it (``--no-open-set``) on the same rows. The gate's
per-group thresholds (from the model's card) are shifted together by ``delta`` in
[-0.3, 0.3]; a photo stays flagged for a group when the ungated run flagged it and its
familiarity is at least the shifted threshold. For each ``delta``: flag recall (any flag on a
flaggable photo, as the bench counts it) and the false-flag rate on benign photos. Two models
whose default thresholds sit at different points of this trade-off are then compared at the
same flag recall. No model is run: the predictions are read back.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

FLAGGABLE = ("ivory", "live_protected_animal")


def _records(folder: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    recs: dict[str, dict[str, Any]] = {}
    model: dict[str, Any] = {}
    with open(Path(folder) / "predictions.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r.get("record") == "model" and not model:
                model = r
            elif r.get("record") == "image" and r.get("ok"):
                recs[r["path"]] = r
    return recs, model


def sweep(gated: str, ungated: str, deltas: np.ndarray) -> list[dict[str, float]]:
    g, model = _records(gated)
    n, _ = _records(ungated)
    card = json.loads((Path(model["path"]) / "card.json").read_text(encoding="utf-8"))
    tau: dict[str, float] = card["familiarity"]["thresholds"]
    if set(g) != set(n):
        raise SystemExit(f"{gated} and {ungated} did not evaluate the same photos")
    fam = np.array([g[k]["familiarity"] for k in n])
    pos = np.array([r["group"] in FLAGGABLE for r in n.values()])
    flags = {grp: np.array([r["decisions"].get(grp) == "flag" for r in n.values()])
             for grp in tau}
    out = []
    for d in deltas:
        flagged = np.zeros(len(n), dtype=bool)
        for grp, t in tau.items():
            flagged |= flags[grp] & (fam >= t + d)
        out.append({"delta": round(float(d), 4),
                    "flag_recall": float(flagged[pos].mean()),
                    "false_flag_rate": float(flagged[~pos].mean())})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, metavar="NAME=GATED,UNGATED")
    ap.add_argument("--recall", type=float, nargs="+", default=[0.80, 0.85, 0.90])
    ap.add_argument("--out", default=None, help="JSON report")
    a = ap.parse_args(argv)
    deltas = np.linspace(-0.3, 0.3, 121)
    report: dict[str, Any] = {"command": "python benchmarks/gate_sweep.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "runs": {}, "at_recall": {}}
    for spec in a.run:
        name, _, dirs = spec.partition("=")
        gated, _, ungated = dirs.partition(",")
        curve = sweep(gated, ungated, deltas)
        default = next(c for c in curve if c["delta"] == 0.0)
        report["runs"][name] = {"gated": gated, "ungated": ungated, "default": default,
                                "curve": curve}
        report["at_recall"][name] = {
            str(r): min((c["false_flag_rate"] for c in curve if c["flag_recall"] >= r),
                        default=None) for r in a.recall}
    for name, run in report["runs"].items():
        d = run["default"]
        print(f"{name}: default thresholds: flag recall {d['flag_recall']:.3f}, "
              f"false-flag rate {d['false_flag_rate']:.4f}")
    for r in a.recall:
        cells = ", ".join(f"{name} {v[str(r)]:.4f}" if v[str(r)] is not None else f"{name} -"
                          for name, v in report["at_recall"].items())
        print(f"lowest false-flag rate with flag recall >= {r:.2f}: {cells}")
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
