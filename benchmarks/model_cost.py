"""What does one model cost at inference against another? Side by side in one process.

    python benchmarks/model_cost.py --model wildvision-base \
        --model runs/wildvision-base-v1-lite1/package --precision fp32 --precision int8 \
        --images 512 --out runs/bench/model_cost.json

The same photos (read into memory first; with ``--listing-size N`` re-encoded as JPEG with
the long side at N px, like marketplace photos) go through ``Classifier(model,
precision=...)`` for every model and precision, alternating rounds so that machine load hits
all alike. Reports images/s of each (best round) and the ratio to the first configuration.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

from PIL import Image

from wildvision.data.manifest import read_manifest
from wildvision.predict import Classifier


def _listing_size(blob: bytes, long_side: int) -> bytes:
    with Image.open(io.BytesIO(blob)) as im:
        im = im.convert("RGB")
        scale = long_side / max(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)),
                       Image.Resampling.BICUBIC)
        out = io.BytesIO()
        im.save(out, "JPEG", quality=90)
        return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True,
                    help="model name or package folder (repeat; the first is the baseline)")
    ap.add_argument("--precision", action="append", choices=["fp32", "int8"],
                    help="repeat for several (default fp32)")
    ap.add_argument("--data", default="datasets/wildvision-ref/manifest.csv")
    ap.add_argument("--split", default="test")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--listing-size", type=int, default=0,
                    help="re-encode the photos with this long side in px (0: as stored)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None, help="JSON report")
    a = ap.parse_args(argv)

    m = read_manifest(a.data)
    rows = [r for r in m if r.split == a.split and r.readable][: a.images]
    blobs = [m.abs_path(r).read_bytes() for r in rows]
    if a.listing_size:
        blobs = [_listing_size(b, a.listing_size) for b in blobs]
    configs = {}
    for model in a.model:
        for precision in a.precision or ["fp32"]:
            clf = Classifier(model, precision=precision)
            configs[f"{clf.package.card.name}@{clf.package.card.version}/{precision}"] = clf
    times: dict[str, list[float]] = {k: [] for k in configs}
    load = [os.getloadavg()[0]]
    for _ in range(a.rounds):
        for name, clf in configs.items():
            t0 = time.perf_counter()
            res = clf.classify_many(blobs, batch_size=32)
            times[name].append(time.perf_counter() - t0)
            if not all(r.ok for r in res):
                print(f"{name}: {sum(not r.ok for r in res)} photos failed", file=sys.stderr)
                return 1
    load.append(os.getloadavg()[0])
    best = {k: len(blobs) / min(v) for k, v in times.items()}
    base = next(iter(best.values()))
    report = {
        "command": "python benchmarks/model_cost.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "images": len(blobs), "listing_size": a.listing_size or None, "rounds": a.rounds,
        "images_per_s": {k: round(v, 1) for k, v in best.items()},
        "ratio_to_first": {k: round(v / base, 3) for k, v in best.items()},
        "load_average_1min_before_after": load, "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
