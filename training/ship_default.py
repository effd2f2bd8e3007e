"""Record of how the default model package inside the wheel is made from a training run.

    # 1. copy the run's ONNX + card into the package folder (no safetensors: keeps the wheel
    #    small; retrain from the recipe instead)
    python training/ship_default.py copy runs/wildvision-base-v1/package \
        wildvision/models/wildvision-base --extra training/wildvision-base-v1.card-extra.json
    # 2. the open-set gate, if the run did not add it (runs since recipe open_set do)
    wildvision export familiarity wildvision/models/wildvision-base \
        --data datasets/wildvision-ref/manifest.csv
    # 3. INT8 beside fp32 (calibrated on validation images)
    wildvision export int8 wildvision/models/wildvision-base \
        --calib datasets/wildvision-ref/manifest.csv --split val --limit 256
    # 4. bench runs (see training/README.md), then put their numbers in the card:
    python training/ship_default.py metrics wildvision/models/wildvision-base \
        reference_test=runs/bench/base-v1 ...
    # 5. blocks measured on an earlier version's card (baselines, LOSO runs of other
    #    recipes): carried over with their provenance, under a new key if given
    python training/ship_default.py carry wildvision/models/wildvision-base \
        --from runs/pkg-1.3.0 baseline_linear_probe_lite1=baseline_linear_probe ...
    # card text edited later (the JSON of step 1): re-render it, files and numbers unchanged
    python training/ship_default.py text wildvision/models/wildvision-base \
        --extra training/wildvision-base-v1.card-extra.json

Every number written into the card comes from a ``metrics.json`` written by
``wildvision bench`` (its command, data, manifest hash and commit travel with it).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from wildvision.bench import card_metrics
from wildvision.modelcard_md import write_card
from wildvision.modelpack import ModelCard, load_package

SHIPPED_FILES = ("model.onnx", "model.int8.onnx", "familiarity.npz")


def _with_extra(card: ModelCard, extra_json: Path | None) -> ModelCard:
    """The card with the card-text fields of ``extra_json`` merged into ``card.extra``."""
    extra = dict(card.extra)
    if extra_json is not None:
        extra.update(json.loads(extra_json.read_text(encoding="utf-8")))
    return card.with_updates(extra=extra)


def copy(run_package: Path, out: Path, extra_json: Path | None) -> None:
    pkg = load_package(run_package)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.is_file():
            old.unlink()
    for name in SHIPPED_FILES:
        if name in pkg.card.files:
            shutil.copy2(run_package / name, out / name)
    write_card(out, _with_extra(pkg.card, extra_json))
    load_package(out)  # verify what we wrote
    print(f"shipped {run_package} -> {out}")


def text(package: Path, extra_json: Path) -> None:
    pkg = load_package(package)
    write_card(package, _with_extra(pkg.card, extra_json), rehash=False)
    load_package(package)
    print(f"{package}: card text from {extra_json}")


def metrics(package: Path, benches: list[str], drop: list[str] | None = None) -> None:
    pkg = load_package(package)
    m: dict[str, Any] = {k: v for k, v in pkg.card.metrics.items() if k not in (drop or ())}
    for spec in benches:
        key, _, path = spec.partition("=")
        mj = Path(path)
        if mj.is_dir():
            mj = mj / "metrics.json"
        data = json.loads(mj.read_text(encoding="utf-8"))
        names = [b["model"]["name"] for b in data["models"]]
        model = pkg.card.name if pkg.card.name in names else None
        m[key] = card_metrics(data, model=model)
    write_card(package, pkg.card.with_updates(metrics=m), rehash=False)
    print(f"{package}: metrics {', '.join(k for k in m)}")


def carry(package: Path, source: Path, specs: list[str]) -> None:
    """Copy metric blocks from the card of ``source`` (``NEW=OLD`` or ``KEY``) into
    ``package``'s card: blocks written by ``wildvision bench`` keep their own command, data,
    manifest hash, model version and commit, so they stay traceable on the new card."""
    pkg = load_package(package)
    old = load_package(source, verify=False).card.metrics
    m: dict[str, Any] = dict(pkg.card.metrics)
    for spec in specs:
        new, _, key = spec.partition("=")
        key = key or new
        if key not in old:
            raise SystemExit(f"{source}: no metric block {key!r} (has: {', '.join(old)})")
        if new in m:
            raise SystemExit(f"{package}: already has a metric block {new!r}")
        m[new] = old[key]
    write_card(package, pkg.card.with_updates(metrics=m), rehash=False)
    print(f"{package}: carried {', '.join(specs)} from {source}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("copy")
    c.add_argument("run_package", type=Path)
    c.add_argument("out", type=Path)
    c.add_argument("--extra", type=Path, help="JSON of card.extra fields to add (card text)")
    mt = sub.add_parser("metrics")
    mt.add_argument("package", type=Path)
    mt.add_argument("benches", nargs="*", metavar="KEY=BENCH_DIR")
    mt.add_argument("--drop", nargs="+", default=[], metavar="KEY",
                    help="metric blocks to remove (e.g. of a replaced baseline)")
    ca = sub.add_parser("carry")
    ca.add_argument("package", type=Path)
    ca.add_argument("--from", dest="source", type=Path, required=True,
                    help="model package whose card holds the blocks")
    ca.add_argument("blocks", nargs="+", metavar="NEW=OLD")
    tx = sub.add_parser("text")
    tx.add_argument("package", type=Path)
    tx.add_argument("--extra", type=Path, required=True)
    a = ap.parse_args()
    if a.cmd == "copy":
        copy(a.run_package, a.out, a.extra)
    elif a.cmd == "carry":
        carry(a.package, a.source, a.blocks)
    elif a.cmd == "text":
        text(a.package, a.extra)
    else:
        metrics(a.package, a.benches, a.drop)


if __name__ == "__main__":
    main()
