"""Accuracy effect of JPEG draft decoding: macro-F1 of a model on a manifest split with
``jpeg_draft`` on (the shipped setting, used in training too) and off, side by side.

    python benchmarks/draft_accuracy.py --model M --data MANIFEST --split test
    python benchmarks/draft_accuracy.py --model M --data MANIFEST --split test --upscale 1400

Draft decoding only changes JPEGs at least twice the model's resize size on both sides (the
DCT scales are 1/2, 1/4, 1/8); the report says how many of the images it touched. The
reference photos in ../shared/data are at most 400 px, so ``--upscale LONG_SIDE`` re-encodes
the split's images at listing size (JPEG q90, in a temporary folder) to measure the effect
where it matters. Metrics come from ``wildvision.bench.metrics`` when present (else a small
numpy macro-F1). Writes a JSON result with ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _macro_f1(y_true: Sequence[int], y_pred: Sequence[int], n: int) -> float:
    """Mean F1 over the classes present in ``y_true``."""
    try:
        from wildvision.bench.metrics import confusion_matrix, macro_f1

        return float(macro_f1(confusion_matrix(y_true, y_pred, n)))
    except ImportError:
        cm = np.zeros((n, n), np.int64)
        np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
        tp = np.diag(cm).astype(float)
        support, predicted = cm.sum(1), cm.sum(0)
        present = support > 0
        f1 = 2 * tp[present] / (support[present] + predicted[present])
        return float(f1.mean())


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--model", required=True, help="model name or package folder")
    ap.add_argument("--data", required=True, type=Path, help="manifest .csv (mapped labels)")
    ap.add_argument("--data-root", default=None, help="data root of the manifest's paths")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=0, help="at most N images (0: all)")
    ap.add_argument("--upscale", type=int, default=0, metavar="LONG_SIDE",
                    help="re-encode the images at this long side (JPEG q90) first")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = ap.parse_args(argv)

    from PIL import Image

    from wildvision.data.manifest import read_manifest
    from wildvision.imaging import decode_image
    from wildvision.modelpack import ModelPackage
    from wildvision.predict import Classifier
    from wildvision.registry import load_model

    pkg = load_model(args.model)
    card = pkg.card
    manifest = read_manifest(args.data, data_root=args.data_root).split(args.split)
    labels, groups = list(card.labels), list(card.groups)
    rows = [r for r in manifest if r.readable and r.fine_label in labels]
    skipped = len(manifest) - len(rows)
    if args.limit:
        idx = np.linspace(0, len(rows) - 1, min(args.limit, len(rows))).round().astype(int)
        rows = [rows[i] for i in sorted(set(idx.tolist()))]
    if not rows:
        raise SystemExit(f"no readable rows of split {args.split!r} with a label of {card.name}")
    paths = [os.fspath(manifest.abs_path(r)) for r in rows]

    tmp = None
    if args.upscale:
        tmp = tempfile.TemporaryDirectory(prefix="wv-draft-")
        scaled = []
        for i, p in enumerate(paths):
            img = decode_image(p).image
            s = args.upscale / max(img.size)
            img = img.resize((max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s))),
                             Image.Resampling.BICUBIC)
            out = Path(tmp.name) / f"{i:06d}.jpg"
            img.save(out, quality=90)
            scaled.append(os.fspath(out))
        paths = scaled
        print(f"re-encoded {len(paths)} images at {args.upscale} px long side (JPEG q90) in "
              f"{tmp.name}", file=sys.stderr)

    draft_cfg = dataclasses.replace(card.preprocess, jpeg_draft=True)
    touched = 0
    for p in paths:
        d = decode_image(p, draft_size=draft_cfg.draft_size)
        touched += d.image.size != d.original_size and min(d.original_size) > 0
    y_fine = [labels.index(r.fine_label) for r in rows]
    y_group = [groups.index(card.label_groups[r.fine_label]) for r in rows]

    sys.path.insert(0, os.fspath(Path(__file__).resolve().parent))
    from throughput import machine

    result: dict[str, Any] = {
        "machine": machine(), "load_avg_before": os.getloadavg(),
        "model": card.name, "model_version": card.version, "manifest": os.fspath(args.data),
        "split": args.split, "images": len(rows), "skipped_rows": skipped,
        "upscaled_long_side": args.upscale or None,
        "draft_size": list(draft_cfg.draft_size or ()),
        "images_reduced_by_draft": touched, "runs": {},
    }
    top: dict[str, list[int]] = {}
    for draft in (True, False):
        cfg = dataclasses.replace(card.preprocess, jpeg_draft=draft)
        clf = Classifier(ModelPackage(pkg.path, dataclasses.replace(card, preprocess=cfg)))
        t0 = time.perf_counter()
        res = clf.classify_many(paths, batch_size=args.batch_size)
        dt = time.perf_counter() - t0
        failed = [r for r in res if not r.ok]
        if failed:
            raise SystemExit(f"{len(failed)} images failed, e.g. {failed[0].source}")
        pf = [labels.index(r.top_labels[0].label) for r in res]  # type: ignore[union-attr]
        pg = [groups.index(r.top_group) for r in res]  # type: ignore[union-attr]
        key = "draft_on" if draft else "draft_off"
        top[key] = pf
        result["runs"][key] = {
            "macro_f1_fine": _macro_f1(y_fine, pf, len(labels)),
            "macro_f1_group": _macro_f1(y_group, pg, len(groups)),
            "accuracy_fine": float(np.mean(np.array(pf) == np.array(y_fine))),
            "images_per_s": len(paths) / dt,
        }
    on, off = result["runs"]["draft_on"], result["runs"]["draft_off"]
    result["delta_macro_f1_fine_points"] = 100 * (on["macro_f1_fine"] - off["macro_f1_fine"])
    result["delta_macro_f1_group_points"] = 100 * (on["macro_f1_group"] - off["macro_f1_group"])
    result["top1_changed"] = float(np.mean(np.array(top["draft_on"]) != np.array(top["draft_off"])))
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
