"""How long does adding labels take? ``wildvision extend`` against the ``--head-only`` route.

    python benchmarks/extend_speed.py --base PACKAGE_WITH_BANK --photos 100 \
        --out runs/bench/extend_speed

Both commands get the same new photos (``--photos`` in all, split evenly over two labels taken
from folders of ../shared/data that the reference data does not hold: bears, flaggable, and
decorative seashells, benign) and run as subprocesses, one after the other, ``--rounds`` times
alternating, so that machine load hits both alike:

* ``wildvision extend --base BASE --data new.csv --out ...``: embeds the photos with the base
  model and fits a head over the base labels and the new ones (core install, no torch);
* ``wildvision train --head-only --recipe training/recipes/probe-lite2.yaml``: the route the
  docs offered before: a linear head on frozen ImageNet embeddings of the same backbone, which
  knows only the new labels ([train] extra, torch).

Reports the wall time of each (median over rounds), their ratio, and the number of photos.
``--base`` must carry an extension bank (``wildvision export bank BASE --data MANIFEST``). A
base that already knows those labels (the default model 2.0.0 was trained on these folders)
is first copied without them (``wildvision.extend.drop_labels``, not timed), so that what is
timed is always adding new labels to the head.
``--skip-head-only`` times ``extend`` alone (no [train] extra needed).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from wildvision.bank import package_bank
from wildvision.imaging import collect_inputs
from wildvision.modelpack import load_package

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = (("common_animals/bear", "live_bear", "live_protected_animal"),
           ("everyday_products/seashells_and_coral_decor", "seashell_decor", "benign"))


def _manifest(data_root: Path, n: int, path: Path) -> int:
    per = n // len(FOLDERS)
    rows = 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "fine_label", "group", "split"])
        for folder, label, group in FOLDERS:
            files = collect_inputs([data_root / folder])[:per]
            if len(files) < per:
                raise SystemExit(f"{data_root / folder}: {len(files)} photos, need {per}")
            for i, p in enumerate(files):
                # extend holds out its own share; --head-only needs the split spelled out
                w.writerow([p, label, group, "val" if i % 5 == 0 else "train"])
                rows += 1
    return rows


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-3000:]}")
    return wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="base package folder with bank.npz")
    ap.add_argument("--photos", type=int, default=100, help="new photos in all (default 100)")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--recipe", default=str(ROOT / "training" / "recipes" / "probe-lite2.yaml"))
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--skip-head-only", action="store_true")
    ap.add_argument("--out", default="runs/bench/extend_speed")
    a = ap.parse_args(argv)

    if package_bank(load_package(a.base)) is None:
        print(f"{a.base} has no bank.npz; add one with `wildvision export bank {a.base} "
              "--data MANIFEST`", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    known = [label for _, label, _ in FOLDERS if label in load_package(a.base).card.labels]
    base = a.base
    if known:
        from wildvision.extend import drop_labels

        base = os.fspath(out / "base-without-new-labels")
        shutil.rmtree(base, ignore_errors=True)
        drop_labels(a.base, known, base)
        print(f"{a.base} knows {known}: timing against a copy without them ({base})")
    manifest = out / "new.csv"
    n = _manifest(Path(a.data_root), a.photos, manifest)
    exe = [sys.executable, "-m", "wildvision.cli"]
    times: dict[str, list[float]] = {"extend": [], "head_only": []}
    load = [os.getloadavg()[0]]
    for r in range(a.rounds):
        target = out / f"extended-{r}"
        shutil.rmtree(target, ignore_errors=True)
        times["extend"].append(_timed([*exe, "extend", "--base", base, "--data",
                                       str(manifest), "--out", str(target)]))
        if not a.skip_head_only:
            run = out / f"head-only-{r}"
            shutil.rmtree(run, ignore_errors=True)
            times["head_only"].append(_timed([*exe, "train", "--data", str(manifest),
                                              "--recipe", a.recipe, "--out", str(run),
                                              "--head-only", "-q"]))
        load.append(os.getloadavg()[0])
    report: dict[str, object] = {
        "photos": n, "rounds": a.rounds, "base": a.base, "labels_dropped_first": known,
        "extend_s": round(statistics.median(times["extend"]), 2),
        "extend_all_s": [round(t, 2) for t in times["extend"]],
        "load_avg_1min": [round(x, 2) for x in load], "cpus": os.cpu_count(),
    }
    if times["head_only"]:
        report["head_only_s"] = round(statistics.median(times["head_only"]), 2)
        report["head_only_all_s"] = [round(t, 2) for t in times["head_only"]]
        report["extend_over_head_only"] = round(
            statistics.median(times["extend"]) / statistics.median(times["head_only"]), 3)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
