"""``wildvision data index|map|split|check|card`` — argument parsing only (stdlib imports);
the work is imported when a command runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``data`` command and its actions to the ``wildvision`` parser."""
    d = subparsers.add_parser(
        "data", help="dataset tooling: index folders, map labels, split, check, card",
        description="Build trustworthy datasets: every image accounted for, labels mapped to "
                    "the taxonomy, leak-free train/val/test splits.")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION")

    i = dsub.add_parser(
        "index", help="index an image folder into a manifest CSV",
        description="Walk ROOT/<source>/<label>/<file> or ROOT/<label>/<file>, read every file "
                    "with the core loader and write one manifest row per file (unreadable "
                    "files get their reason in the error column).")
    i.add_argument("root", help="dataset folder")
    i.add_argument("-o", "--out", required=True, help="manifest CSV to write")
    i.add_argument("--labels", metavar="YAML",
                   help="label map: fill fine_label/group (unknown labels are an error)")
    i.add_argument("--source", default=None,
                   help="source name for the ROOT/<label>/<file> layout (default: ROOT's name)")
    i.add_argument("-w", "--workers", type=int, default=None,
                   help="decoding threads (default: CPU count, at most 8)")
    i.add_argument("--stats-out", metavar="JSON", help="write the timing and counts here")
    i.add_argument("--strict", action="store_true", help="exit 1 if any file is unreadable")
    i.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    i.set_defaults(func=_run_index)

    m = dsub.add_parser("map", help="fill fine_label/group of a manifest from a label map",
                        description="Map dataset labels to taxonomy fine labels; every "
                                    "unknown label is listed and nothing is written.")
    m.add_argument("manifest")
    m.add_argument("--labels", required=True, metavar="YAML")
    m.add_argument("-o", "--out", required=True, help="manifest to write (may be the input)")
    m.set_defaults(func=_run_map)

    s = dsub.add_parser(
        "split", help="group-aware, stratified train/val/test split",
        description="Deterministic split stratified by fine label; exact and near-duplicates "
                    "always land in the same split. Prints the leakage check and class counts.")
    s.add_argument("manifest")
    s.add_argument("-o", "--out", required=True, help="split manifest to write")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--ratios", default="0.7,0.15,0.15",
                   help="train,val,test shares (default 0.7,0.15,0.15)")
    s.add_argument("--holdout-source", action="extend", nargs="+", default=[], metavar="NAME",
                   help="put every image of this source in test only (repeatable)")
    s.add_argument("--phash-threshold", type=int, default=None, metavar="N",
                   help="near-duplicate Hamming distance (default 10, measured on the "
                        "reference data)")
    s.add_argument("--report", metavar="JSON",
                   help="write the split parameters, leakage check and counts here")
    s.add_argument("--keep-splits", metavar="MANIFEST",
                   help="an earlier split manifest: its images (by sha256) keep their split, "
                        "and new duplicates of them join it; only new images are split")
    s.set_defaults(func=_run_split)

    c = dsub.add_parser(
        "check", help="check a manifest: files, labels, duplicates, leakage, counts",
        description="Missing files, unreadable images, labels not in the taxonomy, exact and "
                    "near-duplicates (across splits = error), class counts per split. "
                    "Exit 1 on any error.")
    c.add_argument("manifest")
    c.add_argument("--data-root", default=None,
                   help="where the files are (default: dataset.json next to the manifest, "
                        "$WILDVISION_DATA_ROOT, or the manifest's folder)")
    c.add_argument("--phash-threshold", type=int, default=None, metavar="N")
    c.add_argument("--no-files", action="store_true",
                   help="do not look at the files (manifest-only checks)")
    c.add_argument("--verify-hashes", action="store_true", help="re-hash every file (sha256)")
    c.set_defaults(func=_run_check)

    k = dsub.add_parser(
        "card", help="generate the dataset card (README.md) from a split manifest",
        description="Render a dataset card from the manifest and the files next to it "
                    "(sources.yaml, split.json, index_stats.json, phash_eval.json, "
                    "suites.yaml, build.sh).")
    k.add_argument("manifest")
    k.add_argument("-o", "--out", required=True)
    k.add_argument("--data-root", default=None)
    k.add_argument("--name", default=None, help="dataset name (default: the folder's name)")
    k.add_argument("--check", action="store_true",
                   help="do not write: exit 1 if --out differs from what would be generated")
    k.set_defaults(func=_run_card)

    fr = dsub.add_parser(
        "from-reviews", help="turn review-page decisions into a manifest for train/extend",
        description="Read decisions exported by the `wildvision review` page (CSV or JSONL), "
                    "check each image still has the reviewed sha256, and write one manifest "
                    "row per image with the reviewer's label (split left empty). Decisions "
                    "that cannot be used are listed, never dropped silently.")
    fr.add_argument("decisions", help="decisions file exported by the review page")
    fr.add_argument("-o", "--out", required=True, help="manifest CSV to write")
    fr.add_argument("--source", default="reviews", help="manifest source of the rows "
                                                         "(default: reviews)")
    fr.add_argument("--root", default=None,
                    help="folder the decisions' relative paths are in (default: current "
                         "folder)")
    fr.add_argument("--reject-label", default=None, metavar="LABEL",
                    help="label for rejected photos the model had no benign label for, e.g. "
                         "everyday_object (default: leave them out, listed)")
    fr.add_argument("--strict", action="store_true",
                    help="exit 1 if any decision was left out")
    fr.set_defaults(func=_run_from_reviews)

    d.set_defaults(func=lambda args: _no_action(d))


def _run_from_reviews(args: argparse.Namespace) -> int:
    from .reviews import manifest_from_reviews

    res = manifest_from_reviews(args.decisions, args.out, source=args.source,
                                default_reject_label=args.reject_label, image_root=args.root)
    print(f"{res.summary()}\n-> {args.out}", file=sys.stderr)
    return 1 if (args.strict and res.skipped) else 0


def _no_action(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _show_progress(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


def _run_index(args: argparse.Namespace) -> int:
    from ._progress import ProgressBar
    from .index import index_folder, walk_images
    from .labels import apply_label_map, load_label_map
    from .manifest import record_data_root, write_manifest

    label_map = load_label_map(args.labels) if args.labels else None
    entries, ignored = walk_images(args.root, args.source)
    # paths are relative to ROOT: a manifest written in another folder records where ROOT is
    # in a dataset.json beside it (a conflicting one fails here, before the slow part)
    record_data_root(args.out, args.root, check_only=True)
    if label_map is not None:  # fail before the slow part, listing every unknown label
        label_map.check_known((e.source, e.label) for e in entries)
    bar = ProgressBar(len(entries), _show_progress(args.progress), "index")
    try:
        result = index_folder(args.root, entries=entries, workers=args.workers,
                              on_row=lambda r: bar.update(r.readable))
    finally:
        bar.close()
    rows = list(result.rows)
    if label_map is not None:
        rows = apply_label_map(rows, label_map)
    write_manifest(args.out, rows)
    meta = record_data_root(args.out, args.root)
    if meta is not None:
        print(f"wrote {meta}: the manifest's paths are relative to {args.root}",
              file=sys.stderr)
    stats = result.stats()
    stats["ignored_files"] = ignored
    if args.stats_out:
        Path(args.stats_out).write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    bad = result.unreadable
    print(f"indexed {len(rows)} files in {stats['seconds']} s ({stats['images_per_second']} "
          f"images/s, {result.workers} threads) -> {args.out}; {len(bad)} unreadable",
          file=sys.stderr)
    for r in bad[:20]:
        print(f"  unreadable: {r.path}: {r.error}", file=sys.stderr)
    if len(bad) > 20:
        print(f"  ... and {len(bad) - 20} more (see the error column)", file=sys.stderr)
    if ignored:
        print(f"not indexed (files directly in ROOT): {', '.join(ignored)}", file=sys.stderr)
    return 1 if (bad and args.strict) else 0


def _run_map(args: argparse.Namespace) -> int:
    from .labels import apply_label_map, load_label_map
    from .manifest import read_manifest, write_manifest

    label_map = load_label_map(args.labels)
    manifest = read_manifest(args.manifest)
    rows = apply_label_map(manifest.rows, label_map)
    write_manifest(args.out, rows)
    print(f"mapped {len(rows)} rows -> {args.out}", file=sys.stderr)
    return 0


def _run_split(args: argparse.Namespace) -> int:
    from .check import format_table
    from .manifest import read_manifest, write_manifest
    from .split import DEFAULT_PHASH_THRESHOLD, SplitConfig, class_counts, split_rows

    threshold = (DEFAULT_PHASH_THRESHOLD if args.phash_threshold is None
                 else args.phash_threshold)
    cfg = SplitConfig(seed=args.seed, ratios=args.ratios,
                      holdout_sources=tuple(args.holdout_source), phash_threshold=threshold)
    manifest = read_manifest(args.manifest)
    keep = None
    if args.keep_splits:
        keep = {r.sha256: r.split for r in read_manifest(args.keep_splits).rows
                if r.sha256 and r.split}
    result = split_rows(manifest.rows, cfg, keep=keep)
    write_manifest(args.out, result.rows)
    counts = class_counts(result.rows, "fine_label")
    out = sys.stdout
    out.write(f"split {len(result.rows)} rows (seed {cfg.seed}, ratios "
              f"{','.join(str(x) for x in cfg.ratios)}, holdout "
              f"{', '.join(cfg.holdout_sources) or 'none'}, phash threshold {threshold}) "
              f"-> {args.out}\n")
    out.write(f"duplicate groups: {result.groups} ({result.grouped_images} images, largest "
              f"{result.largest_group}), each kept in one split\n")
    for note in result.notes:
        out.write(f"note: {note}\n")
    out.write(result.leakage.summary() + "\n\n")
    out.write(format_table(class_counts(result.rows, "group"), "group") + "\n\n")
    out.write(format_table(counts, "fine label") + "\n")
    if args.report:
        report = {
            "seed": cfg.seed, "ratios": list(cfg.ratios),
            "holdout_sources": list(cfg.holdout_sources), "phash_threshold": threshold,
            "rows": len(result.rows),
            "leakage": {"exact": result.leakage.exact, "near": result.leakage.near},
            "duplicate_groups": result.groups, "largest_group": result.largest_group,
            "pulled_into_test": result.pulled_into_test,
            "kept_from": (Path(args.keep_splits).as_posix() if args.keep_splits else None),
            "notes": list(result.notes),
        }
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 1 if result.leakage.total else 0


def _run_check(args: argparse.Namespace) -> int:
    from .check import check_manifest, format_table
    from .manifest import read_manifest
    from .split import DEFAULT_PHASH_THRESHOLD

    threshold = (DEFAULT_PHASH_THRESHOLD if args.phash_threshold is None
                 else args.phash_threshold)
    manifest = read_manifest(args.manifest, args.data_root)
    report = check_manifest(manifest, phash_threshold=threshold,
                            check_files=not args.no_files, verify_hashes=args.verify_hashes)
    out = sys.stdout
    width = max(len(f.check) for f in report.findings)
    out.write(f"{'check':<{width}}  {'result':<7}  {'count':>6}  details\n")
    out.write(f"{'-' * width}  {'-' * 7}  {'-' * 6}  {'-' * 7}\n")
    for f in report.findings:
        out.write(f"{f.check:<{width}}  {f.severity.upper():<7}  {f.count:>6}  {f.detail}\n")
        for ex in f.examples:
            out.write(f"{'':<{width}}  {'':<7}  {'':>6}  e.g. {ex}\n")
    out.write("\n" + format_table(report.group_counts, "group") + "\n\n")
    out.write(format_table(report.counts, "fine label") + "\n\n")
    n_err = len(report.errors)
    out.write(f"{report.rows} rows: {'OK' if report.ok else f'{n_err} check(s) failed'}\n")
    return 0 if report.ok else 1


def _run_card(args: argparse.Namespace) -> int:
    import tempfile

    from .card import write_card

    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            text = write_card(args.manifest, Path(tmp) / "README.md", data_root=args.data_root,
                              name=args.name)
        current = Path(args.out).read_text(encoding="utf-8") if Path(args.out).is_file() else ""
        if current != text:
            print(f"{args.out} is out of date: regenerate it with wildvision data card",
                  file=sys.stderr)
            return 1
        print(f"{args.out} is up to date", file=sys.stderr)
        return 0
    write_card(args.manifest, args.out, data_root=args.data_root, name=args.name)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
