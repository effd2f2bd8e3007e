"""Training speed with and without the frozen-trunk cache, side by side, same recipe and data.

    python benchmarks/train_trunk_cache.py --data datasets/wildvision-ref/manifest.csv \
        --recipe training/recipes/wildvision-base-v1.yaml --limit-per-class 20 --epochs 3

Runs ``wildvision train`` twice (``trunk_cache.enabled`` true, then false) into a temporary
folder and reports, from each run's ``metrics.jsonl``, the seconds per epoch of each stage
(head only; top blocks), the one-off cost of building the cache and the wall time of the whole
run, then the ratios cached/uncached. Both runs export and check a package; their validation
macro-F1 is reported too (the cache trains on a fixed set of augmented views, so the numbers
differ a little). Writes a JSON result with ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _run(data: str, recipe: Any, out: Path, data_root: str | None, limit: int | None,
         epochs: int | None) -> dict[str, Any]:
    from wildvision.train import train

    t0 = time.perf_counter()
    res = train(data, recipe, out, data_root=data_root, limit_per_class=limit, epochs=epochs,
                progress=False)
    wall = time.perf_counter() - t0
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    by_stage: dict[str, list[float]] = {}
    for e in log:
        by_stage.setdefault(e["stage"], []).append(e["train_seconds"])
    epoch_total = sum(e["epoch_seconds"] for e in log)
    return {
        "wall_seconds": round(wall, 1),
        "epochs_seconds": round(epoch_total, 1),
        "setup_and_export_seconds": round(wall - epoch_total, 1),
        "train_seconds_per_epoch": {k: round(sum(v) / len(v), 2) for k, v in by_stage.items()},
        "val_macro_f1": res.card.metrics.get("validation", {}).get("macro_f1"),
        "train_images": sum(res.card.training["train_counts"].values()),
        "trunk_cache": res.card.training["trunk_cache"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--limit-per-class", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--views", type=int, default=None, help="override trunk_cache.views")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    from wildvision.train import load_recipe

    base = load_recipe(args.recipe)
    tc = base.trunk_cache
    if args.views:
        tc = dataclasses.replace(tc, views=args.views)
    result: dict[str, Any] = {"recipe": args.recipe, "data": args.data,
                              "limit_per_class": args.limit_per_class, "epochs": args.epochs}
    with tempfile.TemporaryDirectory(prefix="wv-trunk-bench-") as tmp:
        for name, enabled in (("cached", True), ("uncached", False)):
            recipe = dataclasses.replace(base, trunk_cache=dataclasses.replace(tc,
                                                                               enabled=enabled))
            result[name] = _run(args.data, recipe, Path(tmp) / name, args.data_root,
                                args.limit_per_class, args.epochs)
    c, u = result["cached"], result["uncached"]
    result["ratio_cached_over_uncached"] = {
        "wall": round(c["wall_seconds"] / u["wall_seconds"], 3),
        **{f"train_epoch[{k}]": round(v / u["train_seconds_per_epoch"][k], 3)
           for k, v in c["train_seconds_per_epoch"].items()
           if u["train_seconds_per_epoch"].get(k)},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
