"""INT8 quantization choices compared: agreement with fp32 and speed, per variant of
``wildvision.export.quantize.quantize_package``.

    python benchmarks/int8_variants.py                      # EfficientNet-Lite0, ImageNet-1k
    python benchmarks/int8_variants.py --model PACKAGE_DIR --out runs/int8_variants.json

Calibration uses ``--calib`` real photos from ../shared/data, the agreement ``--check`` other
photos (top-1 over the model's labels, top group, largest probability difference). Speed is
single-threaded CPU time per image on batches of 8 (thread CPU time, which other processes on
the machine disturb much less than wall time) and the ratio to fp32. The model is ``--model``
or, by default, EfficientNet-Lite0 with its ImageNet weights (see benchmarks/throughput.py).
"""

from __future__ import annotations

import argparse
import csv
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

import numpy as np

sys.path.insert(0, os.fspath(Path(__file__).resolve().parent))
from throughput import DEFAULT_DATA, build_lite0_package, machine

VARIANTS: dict[str, dict[str, Any]] = {
    "static (default)": {},
    "static 8-bit weights": {"reduce_range": False},
    "static all layers int8": {"keep_ends_fp32": False},
    "static per-tensor weights": {"per_channel": False},
    "dynamic": {"method": "dynamic"},
}


def cpu_ms_per_image(path: Path, batch: np.ndarray, rounds: int = 3) -> float:
    from wildvision.runtime import OnnxBackend

    backend = OnnxBackend(path, threads=1)
    backend.run(batch[:8])
    out = []
    for _ in range(rounds):
        t0 = time.thread_time()
        for i in range(0, len(batch), 8):
            backend.run(batch[i: i + 8])
        out.append((time.thread_time() - t0) / len(batch) * 1000)
    return statistics.median(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--model", default=None, help="package folder (default: EfficientNet-Lite0)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--calib", type=int, default=160, help="calibration photos")
    ap.add_argument("--check", type=int, default=256, help="photos for the agreement")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma-separated subset of: " + ", ".join(VARIANTS))
    ap.add_argument("--out", type=Path, default=Path("runs") / "int8_variants.json")
    args = ap.parse_args(argv)

    from wildvision.export.quantize import measure_agreement, quantize_package
    from wildvision.imaging import decode_image
    from wildvision.modelpack import load_package
    from wildvision.preprocess import preprocess_image

    with open(args.data / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = [r["path"] for r in csv.DictReader(f) if r["path"].lower().endswith(".jpg")]
    pick = np.linspace(0, len(rows) - 1, args.calib + args.check).round().astype(int)
    photos = [os.fspath(args.data / rows[i]) for i in pick]
    calib, check = photos[0::2][: args.calib], photos[1::2][: args.check]
    if len(calib) < args.calib or len(check) < args.check:
        calib, check = photos[: args.calib], photos[args.calib:]

    with tempfile.TemporaryDirectory(prefix="wv-int8-variants-") as tmp:
        base = Path(args.model) if args.model else build_lite0_package(Path(tmp) / "fp32")
        pkg = load_package(base)
        cfg = pkg.card.preprocess
        batch = np.stack([preprocess_image(decode_image(p, draft_size=cfg.draft_size).image, cfg)
                          for p in check[:64]])
        fp32_ms = cpu_ms_per_image(pkg.onnx_file("fp32"), batch)
        result: dict[str, Any] = {
            "machine": machine(), "model": pkg.card.name, "labels": len(pkg.card.labels),
            "calibration_images": len(calib), "check_images": len(check),
            "fp32_cpu_ms_per_image": fp32_ms, "variants": {},
        }
        print(f"{pkg.card.name}: {len(pkg.card.labels)} labels; fp32 {fp32_ms:.1f} ms CPU/image "
              f"(1 thread); calibration {len(calib)} photos, agreement on {len(check)} others")
        for name in args.variants.split(","):
            opts = VARIANTS[name.strip()]
            d = Path(tmp) / f"v{len(result['variants'])}"
            shutil.copytree(base, d)
            t0 = time.perf_counter()
            quantize_package(d, calib, holdout=0.0, **opts)
            t_quant = time.perf_counter() - t0
            agree = measure_agreement(d, check)
            ms = cpu_ms_per_image(d / "model.int8.onnx", batch)
            rec = {"options": opts, "quantize_s": round(t_quant, 1), **agree,
                   "cpu_ms_per_image": ms, "speedup_vs_fp32": fp32_ms / ms}
            result["variants"][name] = rec
            print(f"{name:<28} top-1 agreement {agree['top1_agreement']:.3f}  max prob diff "
                  f"{agree['max_prob_diff']:.3f}  {ms:6.1f} ms CPU/image  "
                  f"x{fp32_ms / ms:.2f} vs fp32", flush=True)
    result["load_avg_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"result: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
