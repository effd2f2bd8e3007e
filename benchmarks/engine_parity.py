"""Accuracy parity of the runtimes on the reference test split: ONNX Runtime fp32 / int8 and
OpenVINO fp32 / bf16 / int8, on the same preprocessed photos.

    python benchmarks/engine_parity.py                       # default model, whole test split
    python benchmarks/engine_parity.py --limit 200 --out runs/engine_parity.json

For each engine and precision: the largest absolute logit difference and the share of photos
with the same top fine label and the same top group as (a) ONNX Runtime fp32 and (b) ONNX
Runtime on the same file (int8 against int8), the overall decision (flag / review / pass with
the card's thresholds, familiarity gate off) agreement with ONNX Runtime fp32, and the group
macro-F1 and accuracy against the manifest's groups. The photos are decoded and preprocessed
once (``wildvision.preprocess``), so only the engines differ. Needs the [openvino] extra; a
CPU without bfloat16 instructions leaves bf16 out (and says so).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MANIFEST = REPO / "datasets" / "wildvision-ref" / "manifest.csv"
DEFAULT_DATA = REPO.parent / "shared" / "data"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="wildvision-base")
    ap.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="root of the manifest paths")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=0, help="every k-th row, this many (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "engine_parity.json")
    args = ap.parse_args(argv)

    from wildvision.bench.metrics import confusion_matrix, macro_f1
    from wildvision.imaging import decode_image
    from wildvision.predict import Classifier
    from wildvision.preprocess import preprocess_image
    from wildvision.registry import load_model
    from wildvision.taxonomy import FLAGGABLE_GROUPS

    pkg = load_model(args.model)
    card = pkg.card
    cfg = card.preprocess
    with open(args.manifest, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == args.split and not r["error"]]
    if args.limit:
        rows = rows[:: max(1, len(rows) // args.limit)][: args.limit]
    t0 = time.perf_counter()
    x = np.stack([preprocess_image(decode_image(args.data / r["path"],
                                                draft_size=cfg.draft_size).image, cfg)
                  for r in rows])
    print(f"{len(rows)} {args.split} photos of {args.manifest} preprocessed "
          f"[{time.perf_counter() - t0:.0f} s]", flush=True)
    groups = list(card.groups)
    truth = np.array([groups.index(r["group"]) for r in rows])
    eval_groups = sorted(set(truth.tolist()))

    try:
        from wildvision._openvino import bf16_supported, openvino_version
    except ImportError:
        raise SystemExit("needs the [openvino] extra: pip install 'wildvision[openvino]'") \
            from None
    configs = [("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32")]
    if bf16_supported():
        configs.append(("openvino", "bf16"))
    else:
        print("bf16: this CPU has no bfloat16 instructions; left out")
    configs.append(("openvino", "int8"))
    configs = [(b, p) for b, p in configs if p != "int8" or "int8" in pkg.precisions]

    outs: dict[str, dict[str, np.ndarray]] = {}
    th = {g: card.threshold(g) for g in groups}
    for backend, precision in configs:
        key = f"{backend}_{precision}"
        t0 = time.perf_counter()
        clf = Classifier(pkg, backend=backend, precision=precision, threads=args.threads,
                         open_set=False)
        parts = [clf.predict_arrays(x[i: i + 32]) for i in range(0, len(x), 32)]
        o = {k: np.concatenate([p[k] for p in parts])
             for k in ("logits", "group_probabilities")}
        code = {"flag": 0, "review": 1, "pass": 2}
        dec = np.full(len(x), 2)
        for gi, g in enumerate(groups):
            if g in FLAGGABLE_GROUPS:
                probs = o["group_probabilities"][:, gi]
                d = np.array([code[th[g].decide(float(p))] for p in probs])
                dec = np.minimum(dec, d)
        o["decision"] = dec
        outs[key] = o
        print(f"{key}: {time.perf_counter() - t0:.0f} s", flush=True)

    def f1(o: dict[str, np.ndarray]) -> float:
        cm = confusion_matrix(truth, o["group_probabilities"].argmax(1), len(groups))
        return float(macro_f1(cm, eval_groups))

    ref = outs["onnx_fp32"]
    table: dict[str, Any] = {}
    for key, o in outs.items():
        same_file = outs.get(key.replace("openvino", "onnx").replace("bf16", "fp32"), ref)
        rec = {
            "macro_f1_group": f1(o),
            "accuracy_group": float(np.mean(o["group_probabilities"].argmax(1) == truth)),
            "vs_onnx_fp32": {
                "top_label": float(np.mean(o["logits"].argmax(1) == ref["logits"].argmax(1))),
                "top_group": float(np.mean(o["group_probabilities"].argmax(1)
                                           == ref["group_probabilities"].argmax(1))),
                "decision": float(np.mean(o["decision"] == ref["decision"])),
                "max_abs_logit_diff": float(np.abs(o["logits"] - ref["logits"]).max()),
                "macro_f1_group_diff_points": 100 * (f1(o) - f1(ref)),
            },
            "vs_onnx_same_file": {
                "top_label": float(np.mean(o["logits"].argmax(1)
                                           == same_file["logits"].argmax(1))),
                "max_abs_logit_diff": float(np.abs(o["logits"] - same_file["logits"]).max()),
                "macro_f1_group_diff_points": 100 * (f1(o) - f1(same_file)),
            },
        }
        table[key] = rec
    import onnxruntime

    result = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/engine_parity.py " + " ".join(argv or sys.argv[1:]),
        "model": {"name": card.name, "version": card.version},
        "photos": len(rows), "split": args.split,
        "manifest": os.fspath(args.manifest),
        "onnxruntime": onnxruntime.__version__, "openvino": openvino_version(),
        "engines": table,
    }
    print(f"\n{card.name} {card.version}, {len(rows)} {args.split} photos; "
          "agreement with ONNX Runtime fp32 (and with ONNX Runtime on the same file)\n")
    print("| engine | precision | group macro-F1 | Δ vs ORT fp32 (points) | same top label "
          "| same decision | max abs logit diff | same top label, same file |")
    print("|---|---|---|---|---|---|---|---|")
    for key, rec in table.items():
        b, p = key.split("_")
        v, s = rec["vs_onnx_fp32"], rec["vs_onnx_same_file"]
        print(f"| {b} | {p} | {rec['macro_f1_group']:.4f} | "
              f"{v['macro_f1_group_diff_points']:+.2f} | {100 * v['top_label']:.1f}% | "
              f"{100 * v['decision']:.1f}% | {v['max_abs_logit_diff']:.2g} | "
              f"{100 * s['top_label']:.1f}% |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    tmp.replace(args.out)
    print(f"\nresult: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
