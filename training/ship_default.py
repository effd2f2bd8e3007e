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
        --extra training/wildvision-base-v2.card-extra.json
    # the README's section on the default model, generated from the card (a test checks it)
    python training/ship_default.py readme wildvision/models/wildvision-base README.md
    # the README's demo list: reference test photos (never trained on, never used to pick a
    # threshold), marketplace-like sources first (a test checks it is current)
    python training/ship_default.py demo datasets/wildvision-ref/manifest.csv \
        examples/unseen-test-photos.txt

Every number written into the card comes from a ``metrics.json`` written by
``wildvision bench`` (its command, data, manifest hash and commit travel with it).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path
from typing import Any

from wildvision.bench import card_metrics
from wildvision.modelcard_md import write_card
from wildvision.modelpack import ModelCard, load_package

SHIPPED_FILES = ("model.onnx", "model.int8.onnx", "familiarity.npz", "bank.npz")


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


README_START = "<!-- default-model: generated by training/ship_default.py readme; do not edit -->"
README_END = "<!-- /default-model -->"


def _v(block: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(block, dict) or k not in block:
            return None
        block = block[k]
    if isinstance(block, dict) and "value" in block:
        return block["value"]
    return block


def _p(x: Any, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * float(x):.{digits}f}%"


def _f(x: Any) -> str:
    return "–" if x is None else f"{float(x):.3f}"


def _ci(block: Any, *keys: str) -> str:
    for k in keys:
        block = block.get(k) if isinstance(block, dict) else None
    if not isinstance(block, dict) or block.get("value") is None:
        return "–"
    lo, hi = (block.get("ci95") or [None, None])[:2]
    s = f"{block['value']:.3f}"
    return s if lo is None or hi is None else f"{s} [{lo:.3f}, {hi:.3f}]"


def _pair(value: Any, ci: Any) -> str:
    if value is None:
        return "–"
    if isinstance(ci, list | tuple) and len(ci) == 2 and None not in ci:
        return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return f"{value:.3f}"


def _lookup(card: ModelCard, path: list[str]) -> Any:
    """``["metrics", block, ...]`` or ``["extra", key, ...]`` in the card; ``value`` of a
    ``{value, ci95}`` entry."""
    root: Any = card.metrics if path[0] == "metrics" else card.extra
    return _v(root, *path[1:])


def target_value(card: ModelCard, t: dict[str, Any]) -> tuple[Any, bool]:
    """The number a target is about, and whether it meets the target. ``op`` is ``>=`` or
    ``<=``, or ``within`` (absolute difference to the value at ``of`` at most ``target``)."""
    got = _lookup(card, t["path"])
    if t["op"] == "within":
        ref = _lookup(card, t["of"])
        if got is None or ref is None:
            return None, False
        got = abs(float(got) - float(ref))
    if got is None:
        return None, False
    ok = float(got) >= t["target"] if t["op"] == ">=" else float(got) <= t["target"]
    return got, ok


def _fmt_target(v: Any, t: dict[str, Any]) -> str:
    if v is None:
        return "not measured"
    return _p(v, 2) if t.get("unit") == "%" else f"{float(v):.3f}"


def readme_section(card: ModelCard, package_dir: Path) -> str:
    """The README's section on the default model, from its card alone (so it cannot drift)."""
    m, x = card.metrics, card.extra
    sizes = ", ".join(f"`{n}` {(package_dir / n).stat().st_size / 1e6:.1f} MB"
                      for n in card.files if (package_dir / n).is_file())
    rt = m.get("reference_test", {})
    L = [README_START, "",
         f"`{card.name}` {card.version} ships inside the package (`wildvision/models/"
         f"{card.name}`: {sizes}, `card.json` and the card [README](wildvision/models/"
         f"{card.name}/README.md)). {x.get('readme_summary', card.description)}", ""]
    if x.get("readme_can"):
        L += [f"**It can** {x['readme_can']}", ""]
    if x.get("readme_cannot"):
        L += [f"**It cannot** {x['readme_cannot']}", ""]
    cols = [("reference_test", "this model"), ("reference_test_int8", "int8"),
            ("reference_test_no_gate", "open-set gate off")]
    cols = [(k, t) for k, t in cols if k in m]
    if rt:
        d = rt.get("data", {})
        L += [f"Measured on the reference **test split** ({d.get('images')} images, none seen "
              f"in training), by `{rt.get('command')}` (95% bootstrap intervals; commit "
              f"{str(rt.get('git_commit'))[:7]}):", "",
              "| | " + " | ".join(t for _, t in cols) + " |",
              "|---|" + "---:|" * len(cols)]
        rows = [
            ("macro-F1 over groups", lambda b: _ci(b, "headline", "macro_f1_group")),
            ("macro-F1 over fine labels", lambda b: _ci(b, "headline", "macro_f1_fine")),
            ("ivory F1, most probable group",
             lambda b: _pair(_v(b, "groups", "ivory", "argmax_f1"),
                             _v(b, "groups", "ivory", "argmax_f1_ci95"))),
            ("ivory F1 at the card's thresholds", lambda b: _f(_v(b, "groups", "ivory",
                                                                   "flag_f1"))),
            ("ivory recall at 95% precision", lambda b: _f(_v(b, "groups", "ivory",
                                                               "recall_at_precision_0.95"))),
            ("live protected animal F1, most probable group",
             lambda b: _f(_v(b, "groups", "live_protected_animal", "argmax_f1"))),
            ("benign photos flagged", lambda b: _p(_v(b, "headline", "false_flag_rate"))),
            ("benign photos sent to review", lambda b: _p(b.get("benign_review_rate"))),
            ("expected calibration error (top label)",
             lambda b: _f(_v(b, "headline", "ece_top_label"))),
        ]
        for title, fn in rows:
            L.append(f"| {title} | " + " | ".join(fn(m[k]) for k, _ in cols) + " |")
        L.append("")
        passed = rt.get("pass_rate_by_benign_label") or {}
        flagged = rt.get("false_flag_rate_by_benign_label") or {}
        pets = ", ".join(f"{lab.replace('_', ' ')} {_p(passed.get(lab))} passed"
                         for lab in ("domestic_cat", "domestic_dog", "farm_animal",
                                     "wild_mammal_common", "bird_common")
                         if passed.get(lab) is not None)
        if pets:
            L += [f"On the test split: {pets}; bone and horn crafts flagged "
                  f"{_p(flagged.get('bone_horn_craft'))}.", ""]
    met = m.get("suite_met_ivory")
    if met:
        L += [f"Met ivory against Met ceramics (`{met.get('command')}`): balanced accuracy "
              f"{_ci(met, 'binary', 'argmax', 'balanced_accuracy')} for the most probable group,"
              f" {_ci(met, 'binary', 'at_threshold', 'balanced_accuracy')} at the card's "
              "thresholds.", ""]
    prev = [(k, b) for k, b in m.items() if k.startswith("earlier_test_")]
    if prev:
        L += ["On the test split of the earlier reference data (which no version trained on):",
              "", "| model | macro-F1 over groups | ivory F1 (most probable group) | "
              "benign photos flagged |", "|---|---:|---:|---:|"]
        for _, b in prev:
            L.append(f"| {b['model']['name']} {b['model']['version']} | "
                     f"{_ci(b, 'headline', 'macro_f1_group')} | "
                     f"{_f(_v(b, 'groups', 'ivory', 'argmax_f1'))} | "
                     f"{_p(_v(b, 'headline', 'false_flag_rate'))} |")
        L.append("")
    pol = x.get("policy")
    if pol:
        meas = pol.get("measured", {})
        ins, oos = meas.get("in_source", {}), meas.get("out_of_source", {})
        L += [f"**Review budget.** The thresholds follow from a policy in the card: at most "
              f"{_p(pol.get('review_budget'))} of benign photos sent to review, flags at "
              f"{pol.get('flag_precision')} precision, derived on validation photos and on "
              "photos of sources the model never saw (leave-one-source-out models; "
              "`training/derive_policy.py`). With them, benign photos sent to review / "
              f"flagged: in source {_p(ins.get('benign_review_share'))} / "
              f"{_p(ins.get('benign_flag_share'))}, out of source "
              f"{_p(oos.get('benign_review_share'))} / {_p(oos.get('benign_flag_share'))}; "
              f"flag recall in source {_p(ins.get('flag_recall'))}. "
              "Your own budget, from your own labelled photos, without retraining: "
              "`wildvision calibrate wildvision-base --data my.csv --review-budget 0.01 "
              "--out my-model`.", ""]
        cross = pol.get("cross_source") or {}
        if cross:
            L += ["Thresholds derived without a source, measured on it (what a new kind of "
                  "traffic gets):", "",
                  "| held-out source | benign photos | sent to review | flagged | "
                  "flag recall |", "|---|---:|---:|---:|---:|"]
            for src, c in cross.items():
                L.append(f"| {src} | {c.get('benign')} | {_p(c.get('benign_review_share'))} |"
                         f" {_p(c.get('benign_flag_share'))} | {_p(c.get('flag_recall'))} |")
            L.append("")
    loso = [k for k in m if k.startswith("loso_") and not k.endswith("_no_gate")
            and (k + "_no_gate") in m]
    if loso:
        L += ["**Out of distribution (leave one source out).** The same recipe trained without "
              "one source, tested on all of its photos (`python training/loso.py "
              "--holdout-source SOURCE ...`), with the model's open-set gate and without:", "",
              "| held-out source | its benign photos flagged (gate on / off) | "
              "all benign photos flagged (on / off) | flag recall (on / off) |",
              "|---|---:|---:|---:|"]
        for k in loso:
            on, off = m[k], m[k + "_no_gate"]
            src = k.removeprefix("loso_")
            L.append(f"| {src} | {_p((on.get('false_flag_rate_by_source') or {}).get(src))} / "
                     f"{_p((off.get('false_flag_rate_by_source') or {}).get(src))} | "
                     f"{_p(_v(on, 'headline', 'false_flag_rate'))} / "
                     f"{_p(_v(off, 'headline', 'false_flag_rate'))} | "
                     f"{_f(_v(on, 'headline', 'flag_recall'))} / "
                     f"{_f(_v(off, 'headline', 'flag_recall'))} |")
        L.append("")
    targets = x.get("targets") or []
    if targets:
        L += ["**Targets** (each checked against the card's numbers when this section is "
              "generated):", ""]
        for t in targets:
            got, ok = target_value(card, t)
            mark = "met" if ok else "**not met**"
            L.append(f"- {t['what']}: {_fmt_target(got, t)} (target {t['op']} "
                     f"{_fmt_target(t['target'], t)}) — {mark}")
        L.append("")
    L.append(README_END)
    return "\n".join(L)


def readme(package: Path, readme_path: Path, check: bool = False) -> bool:
    """Replace the README's generated section (between the markers) with the card's."""
    pkg = load_package(package)
    text_ = readme_path.read_text(encoding="utf-8")
    if README_START not in text_ or README_END not in text_:
        raise SystemExit(f"{readme_path}: markers not found ({README_START!r} ... "
                         f"{README_END!r})")
    head, rest = text_.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    new = head + readme_section(pkg.card, package) + tail
    if check:
        return new == text_
    readme_path.write_text(new, encoding="utf-8")
    print(f"{readme_path}: default-model section from {package}")
    return True


# (source, photos) for the README's demo list: listing-style sources first, then the kinds of
# photo a marketplace sees most; each takes its first test-split photos in sha256 order
DEMO_SOURCES = (("pet_shops", 8), ("ecommerce_shops", 4), ("bone_horn_maker", 4),
                ("met_ivory", 4), ("web_conservation", 4), ("everyday_products", 4),
                ("common_animals", 4), ("bigcats", 2))
DEMO_PREFIX = "../shared/data/"  # the README's commands run in the repository root


def demo_list(manifest: Path) -> str:
    """The README demo's file list: test-split photos of the reference manifest only (the
    split the default model never trained on, nor picked a threshold with)."""
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test" and not r["error"]]
    lines = []
    for source, n in DEMO_SOURCES:
        picked = sorted((r for r in rows if r["source"] == source), key=lambda r: r["sha256"])
        if len(picked) < n:
            raise SystemExit(f"{manifest}: {source} has {len(picked)} test photos, {n} wanted")
        lines += [DEMO_PREFIX + r["path"] for r in picked[:n]]
    return "\n".join(lines) + "\n"


def demo(manifest: Path, out: Path, check: bool = False) -> bool:
    text_ = demo_list(manifest)
    if check:
        return out.is_file() and out.read_text(encoding="utf-8") == text_
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text_, encoding="utf-8")
    print(f"{out}: {text_.count(chr(10))} test-split photos from {manifest}")
    return True


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
    rd = sub.add_parser("readme")
    rd.add_argument("package", type=Path)
    rd.add_argument("readme", type=Path)
    dm = sub.add_parser("demo")
    dm.add_argument("manifest", type=Path)
    dm.add_argument("out", type=Path)
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
    elif a.cmd == "readme":
        readme(a.package, a.readme)
    elif a.cmd == "demo":
        demo(a.manifest, a.out)
    else:
        metrics(a.package, a.benches, a.drop)


if __name__ == "__main__":
    main()
