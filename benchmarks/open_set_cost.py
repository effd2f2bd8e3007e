"""What does the open-set gate cost at inference? Side by side in one process.

    python benchmarks/open_set_cost.py --model wildvision-base \
        --data datasets/wildvision-ref/manifest.csv --split test --images 512

The same photos (read into memory first) through ``Classifier(model)`` and
``Classifier(model, open_set=False)``, alternating rounds so that machine load hits both
alike; reports images/s of each, their ratio, and the gate's own time per image (scoring a
batch of embeddings against the reference set) measured apart.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from wildvision.data.manifest import read_manifest
from wildvision.predict import Classifier


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="wildvision-base")
    ap.add_argument("--data", default="datasets/wildvision-ref/manifest.csv")
    ap.add_argument("--split", default="test")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None, help="JSON report")
    a = ap.parse_args(argv)

    m = read_manifest(a.data)
    rows = [r for r in m if r.split == a.split and r.readable][: a.images]
    blobs = [m.abs_path(r).read_bytes() for r in rows]
    gated, plain = Classifier(a.model), Classifier(a.model, open_set=False)
    if gated.familiarity is None:
        print(f"{a.model} has no open-set gate", file=sys.stderr)
        return 2
    times: dict[str, list[float]] = {"gate": [], "no_gate": []}
    load = [os.getloadavg()[0]]
    for _ in range(a.rounds):
        for name, clf in (("gate", gated), ("no_gate", plain)):
            t0 = time.perf_counter()
            res = clf.classify_many(blobs, batch_size=32)
            times[name].append(time.perf_counter() - t0)
            assert all(r.ok for r in res)
    load.append(os.getloadavg()[0])
    emb = np.stack([np.asarray(r.embedding) for r in Classifier(
        a.model, open_set=False, return_embedding=True).classify_many(blobs[:64])])
    t0 = time.perf_counter()
    for _ in range(20):
        gated.familiarity.score(emb[:32])
    score_ms = (time.perf_counter() - t0) / 20 / 32 * 1000
    best = {k: len(blobs) / min(v) for k, v in times.items()}
    report = {
        "command": "python benchmarks/open_set_cost.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "images": len(blobs), "rounds": a.rounds,
        "images_per_s": {k: round(v, 1) for k, v in best.items()},
        "ratio_gate_vs_no_gate": round(best["gate"] / best["no_gate"], 3),
        "gate_ms_per_image": round(score_ms, 3),
        "references": int(gated.familiarity.references.shape[0]),
        "dims": int(gated.familiarity.references.shape[1]),
        "load_average_1min_before_after": load, "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
