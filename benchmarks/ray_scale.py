"""Ray Data scoring on one machine vs the single-process core, on the same photos, side by side.

    python benchmarks/ray_scale.py                       # 400 listing-size photos
    python benchmarks/ray_scale.py --model PACKAGE_DIR --images 1000 --out runs/ray.json

(a) single process: ``wildvision.classify_images(files, model, batch_size=32)`` (its default
    decode threads and ONNX Runtime threads);
(b) Ray: ``wildvision.scale.classify_dataset(files, model, batch_size=32)`` on a local Ray
    started once beforehand (``ray.init(num_cpus=os.cpu_count())``; cluster start-up is not
    timed, as a catalogue job runs on a cluster that is already up), one actor per CPU, every
    result row pulled back to the driver (``iter_batches``).

Rounds alternate (a) and (b) ``--repeat`` times; the median is reported, so that machine load
hits both alike. For Ray two rates are reported: ``total`` (from the call to the last row:
actor start-up and model load included, as paid once per job) and ``steady`` (rows after the
first batch / time after the first batch, which is what a catalogue-size job sees).

Inputs: real photos from ../shared/data upscaled to 1200-1600 px (JPEG q90), as
benchmarks/throughput.py makes them. Model: ``--model``, else ``wildvision-base`` if
installed, else EfficientNet-Lite0 with ImageNet weights ([train] extra).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import build_lite0_package, listing_photos, machine  # noqa: E402


def run_local(files: list[str], model: str, batch_size: int) -> dict[str, float]:
    from wildvision.predict import Classifier

    t0 = time.perf_counter()
    clf = Classifier(model)  # model load timed, like the actors' in the Ray run
    results = clf.classify_many(files, batch_size=batch_size)
    wall = time.perf_counter() - t0
    assert len(results) == len(files)
    return {"wall_s": wall, "ips": len(files) / wall,
            "failed": sum(1 for r in results if not r.ok)}


def run_ray(files: list[str], model: str, batch_size: int, actors: int) -> dict[str, float]:
    import pyarrow.compute as pc

    from wildvision.scale import classify_dataset

    t0 = time.perf_counter()
    ds = classify_dataset(files, model=model, batch_size=batch_size, concurrency=actors)
    rows = failed = 0
    first_t = first_rows = None
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        rows += batch.num_rows
        failed += int(pc.sum(pc.invert(batch["ok"])).as_py() or 0)
        if first_t is None:
            first_t, first_rows = time.perf_counter(), rows
    end = time.perf_counter()
    assert rows == len(files), (rows, len(files))
    steady = (rows - first_rows) / (end - first_t) if first_t and end > first_t else float("nan")
    return {"wall_s": end - t0, "ips": rows / (end - t0), "steady_ips": steady,
            "first_batch_s": (first_t or end) - t0, "failed": failed}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--actors", type=int, default=None, help="default: one per CPU")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import ray

    work = Path(tempfile.mkdtemp(prefix="wv-ray-scale-"))
    try:
        if not (args.data / "manifest.csv").is_file():
            raise SystemExit(f"{args.data}: no manifest.csv (real photos needed)")
        files, _ = listing_photos(args.data, work / "photos", args.images)
        model = args.model
        if model is None:
            from wildvision.registry import default_model_name, installed_models

            model = (default_model_name() if default_model_name() in installed_models()
                     else str(build_lite0_package(work / "lite0")))
        from wildvision.registry import load_model

        card = load_model(model).card
        cpus = os.cpu_count() or 1
        actors = args.actors or cpus
        t0 = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray_init_s = time.perf_counter() - t0
        load_before = list(os.getloadavg())
        local_runs: list[dict[str, float]] = []
        ray_runs: list[dict[str, float]] = []
        for r in range(args.repeat):
            for kind in (("local", "ray") if r % 2 == 0 else ("ray", "local")):
                if kind == "local":
                    local_runs.append(run_local(files, model, args.batch_size))
                else:
                    ray_runs.append(run_ray(files, model, args.batch_size, actors))
                last = (local_runs if kind == "local" else ray_runs)[-1]
                print(f"round {r + 1} {kind}: " + json.dumps(
                    {k: round(v, 2) for k, v in last.items()}), file=sys.stderr)
        ray.shutdown()
        med = statistics.median
        local_ips = med(x["ips"] for x in local_runs)
        ray_ips = med(x["ips"] for x in ray_runs)
        ray_steady = med(x["steady_ips"] for x in ray_runs)
        report: dict[str, Any] = {
            "machine": machine(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "model": {"spec": model, "name": card.name, "arch": card.arch,
                      "input_size": card.preprocess.input_size},
            "images": len(files),
            "inputs": f"real photos from {args.data}, upscaled to 1200-1600 px, JPEG q90",
            "batch_size": args.batch_size,
            "ray_actors": actors,
            "ray_init_s (not timed)": round(ray_init_s, 1),
            "single_process_ips": round(local_ips, 1),
            "ray_total_ips": round(ray_ips, 1),
            "ray_steady_ips": round(ray_steady, 1),
            "ratio_total": round(ray_ips / local_ips, 3),
            "ratio_steady": round(ray_steady / local_ips, 3),
            "runs": {"local": local_runs, "ray": ray_runs},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
