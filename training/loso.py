"""Leave-one-source-out (LOSO) run of a recipe: how well does a model do on photos from a
source it never saw?

    python training/loso.py --holdout-source caltech101 \
        --recipe training/recipes/wildvision-base-v2.yaml --out runs/loso/caltech101 \
        --cache-dir runs/wildvision-base-v2/cache

Steps (each an ordinary wildvision command, printed before it runs):

1. ``wildvision data split`` of the reference manifest with ``--holdout-source``: every image
   of the source (and anything duplicating it) goes to ``test``; every other image keeps its
   split in the reference manifest (``--keep-splits``), so the LOSO model is validated and
   tested on the same photos of the other sources as the full model, and its training photos
   are a subset of the full model's.
2. The training manifest: the ``train`` and ``val`` rows of that split, minus the fine labels
   with fewer than ``labels.min_train`` training images once the source is gone (e.g. Caltech
   was the only source of ``furniture``, ``watch``, ``everyday_object``). Those labels are
   listed; the model cannot output them, which is exactly the situation LOSO measures.
3. ``wildvision train`` with the recipe, unchanged. With ``--cache-dir`` pointing at the full
   run's cache, the trunk cache is gathered from the full run's (same backbone, augmentation
   and seed; each photo keeps the augmented views drawn for it there) instead of recomputed.
4. ``wildvision bench`` of the trained package on the split's ``test`` rows: the held-out
   source plus the other sources' usual test images, with its open-set gate (``bench``) and
   without (``bench-no-gate``: the same predictions, decisions re-made without the gate).
   Per-source numbers are in the report (``false_flag_rate_by_source``, ``per_source``).

Needs ``pip install -e ".[train,bench]"`` and the photos in ``../shared/data``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

from wildvision.data.manifest import read_manifest, write_manifest
from wildvision.train.recipe import load_recipe

REFERENCE = Path("datasets/wildvision-ref/manifest.csv")


def _run(cmd: list[str]) -> None:
    print("+ " + shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)


_SEVERITY = {"flag": 2, "review": 1, "pass": 0}


def _without_gate(src: Path, dst: Path) -> None:
    """``src`` (a bench predictions.jsonl) with every decision made without the open-set gate:
    a group's flag / review from its probability (the sum of its labels') and thresholds."""
    models: dict[str, dict[str, object]] = {}
    lines = []
    for line in src.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec.get("record") == "model":
            rec["open_set"] = False
            rec["open_set_thresholds"] = None
            models[rec["model_key"]] = rec
        elif rec.get("record") == "image" and rec.get("ok"):
            info = models[rec["model_key"]]
            lg: dict[str, str] = info["label_groups"]  # type: ignore[assignment]
            th: dict[str, dict[str, float]] = info["thresholds"]  # type: ignore[assignment]
            gp: dict[str, float] = {}
            for lab, p in rec["probabilities"].items():
                gp[lg[lab]] = gp.get(lg[lab], 0.0) + float(p)
            dec = {}
            for g in rec["decisions"]:
                t = th.get(g)
                p = gp.get(g, 0.0)
                dec[g] = ("pass" if t is None else "flag" if p >= t["flag"] else
                          "review" if p >= t["review"] else "pass")
            rec["decisions"] = dec
            rec["decision"] = max(dec.values(), key=_SEVERITY.__getitem__, default="pass")
            rec.pop("familiarity", None)
            rec.pop("unfamiliar", None)
        lines.append(json.dumps(rec))
    dst.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--holdout-source", required=True, help="source held out of training")
    ap.add_argument("--recipe", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="folder for everything of the run")
    ap.add_argument("--manifest", type=Path, default=REFERENCE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="cache folder of the full run (its trunk cache is reused)")
    ap.add_argument("--fresh-split", action="store_true",
                    help="re-split the other sources 70/15/15 instead of keeping the "
                         "reference manifest's split")
    ap.add_argument("--skip-train", action="store_true",
                    help="reuse OUT/run/package (e.g. to re-bench)")
    a = ap.parse_args(argv)

    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    # manifests written under OUT keep the reference data root
    root = read_manifest(a.manifest).root.resolve()
    (out / "dataset.json").write_text(json.dumps({"data_root": str(root)}) + "\n",
                                      encoding="utf-8")
    split = out / "split.csv"
    _run(["wildvision", "data", "split", str(a.manifest), "--seed", str(a.seed),
          "--holdout-source", a.holdout_source, "--out", str(split),
          "--report", str(out / "split.json"),
          *([] if a.fresh_split else ["--keep-splits", str(a.manifest)])])

    recipe = load_recipe(a.recipe)
    m = read_manifest(split)
    train_counts = Counter(r.fine_label for r in m if r.split == "train" and r.readable)
    small = sorted(lab for lab in {r.fine_label for r in m if r.readable}
                   if train_counts.get(lab, 0) < recipe.labels.min_train)
    rows = [r for r in m if r.split in ("train", "val") and r.readable
            and r.fine_label not in small]
    trainval = out / "trainval.csv"
    sha = write_manifest(trainval, rows)
    info = {"holdout_source": a.holdout_source, "recipe": str(a.recipe),
            "split_manifest": str(split), "trainval_manifest": str(trainval),
            "trainval_sha256": sha, "train_rows": sum(r.split == "train" for r in rows),
            "val_rows": sum(r.split == "val" for r in rows),
            "labels_dropped": {lab: train_counts.get(lab, 0) for lab in small},
            "min_train": recipe.labels.min_train}
    (out / "loso.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    print(f"labels without {recipe.labels.min_train}+ training images once "
          f"{a.holdout_source} is held out (not learnable, dropped): "
          f"{', '.join(small) or 'none'}", flush=True)

    run = out / "run"
    if not a.skip_train:
        _run(["wildvision", "train", "--data", str(trainval), "--recipe", str(a.recipe),
              "--out", str(run), "--no-progress",
              *(["--cache-dir", str(a.cache_dir)] if a.cache_dir else [])])
    _run(["wildvision", "bench", "-m", str(run / "package"), "--data", str(split),
          "--split", "test", "--out", str(out / "bench"), "--no-progress", "--no-plots"])
    # The same predictions with the gate off: decisions re-made from the recorded
    # probabilities and thresholds alone (no second model run), then rendered.
    ungated = out / "predictions-no-gate.jsonl"
    _without_gate(out / "bench" / "predictions.jsonl", ungated)
    _run(["wildvision", "bench", "render", str(ungated), "--out", str(out / "bench-no-gate"),
          "--no-plots"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
