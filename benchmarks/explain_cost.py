"""What does ``explain=True`` cost at inference? Side by side in one process.

    python benchmarks/explain_cost.py --model wildvision-base \
        --data datasets/wildvision-ref/manifest.csv --split test --images 512

The same photos (read into memory first) through ``Classifier(model)`` and
``Classifier(model, explain=True)`` (same precision), alternating rounds so that machine load
hits both alike; reports images/s of each, their ratio (target: explain costs at most 10 %
more time per image), and the explanation's own time per image (the map from the batch's
``features`` output and its mapping onto the photo) measured apart.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from wildvision.data.manifest import read_manifest
from wildvision.imaging import decode_image
from wildvision.predict import Classifier
from wildvision.preprocess import preprocess_image
from wildvision.taxonomy import FLAGGABLE_GROUPS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="wildvision-base")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "int8"))
    ap.add_argument("--data", default="datasets/wildvision-ref/manifest.csv")
    ap.add_argument("--split", default="test")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", default=None, help="JSON report")
    a = ap.parse_args(argv)

    m = read_manifest(a.data)
    rows = [r for r in m if r.split == a.split and r.readable][: a.images]
    blobs = [m.abs_path(r).read_bytes() for r in rows]
    plain = Classifier(a.model, precision=a.precision)
    explained = Classifier(a.model, precision=a.precision, explain=True)
    times: dict[str, list[float]] = {"explain": [], "plain": []}
    load = [os.getloadavg()[0]]
    for _ in range(a.rounds):
        for name, clf in (("explain", explained), ("plain", plain)):
            t0 = time.perf_counter()
            res = clf.classify_many(blobs, batch_size=a.batch_size)
            times[name].append(time.perf_counter() - t0)
            assert all(r.ok for r in res)
            if name == "explain":
                assert all(r.explanation is not None for r in res)  # type: ignore[union-attr]
    load.append(os.getloadavg()[0])
    # The explanation's own work on one batch of model outputs, apart from the model run.
    cfg = explained.card.preprocess
    prepared = [explained._prepare(i, b) for i, b in enumerate(blobs[: a.batch_size])]
    import numpy as np

    batch = np.stack([preprocess_image(decode_image(b, draft_size=cfg.draft_size).image, cfg)
                      for b in blobs[: a.batch_size]])
    out = explained.predict_arrays(batch)
    groups = [max((g for g in explained._groups if g in FLAGGABLE_GROUPS),
                  key=lambda g: gp[explained._groups.index(g)]) for gp in
              out["group_probabilities"]]
    reps = 20
    t0 = time.perf_counter()
    for _ in range(reps):
        explained._explanations(out, prepared, groups)
    explain_ms = (time.perf_counter() - t0) / reps / len(prepared) * 1000
    best = {k: len(blobs) / min(v) for k, v in times.items()}
    report = {
        "command": "python benchmarks/explain_cost.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "model": explained.card.name, "version": explained.card.version,
        "precision": a.precision, "images": len(blobs), "rounds": a.rounds,
        "images_per_s": {k: round(v, 1) for k, v in best.items()},
        "time_ratio_explain_vs_plain": round(best["plain"] / best["explain"], 3),
        "explain_ms_per_image": round(explain_ms, 3),
        "load_average_1min_before_after": load, "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
