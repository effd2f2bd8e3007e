"""``wildvision match``: build, edit, share and inspect known-photo indexes. Only the stdlib is
imported here; the index code loads when a subcommand runs."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["register"]

_EXPORT_FORMATS = ("share", "share-hashes", "te", "pdq-csv")


def _photos(sources: list[str], group: str) -> list[Any]:
    from ..errors import ConfigError
    from .build import photos_from_folder, photos_from_manifest

    out: list[Any] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            out += photos_from_folder(p, group=group)
        elif p.suffix.lower() == ".csv":
            if group:
                raise ConfigError("--group applies to folders; a manifest has a group column")
            out += photos_from_manifest(p)
        else:
            raise ConfigError(f"{s}: give a folder of photos or a .csv manifest")
    return out


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("hash_threshold", "similarity_threshold", "mode", "decision", "min_inliers"):
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    return out


def _report_failures(failures: list[Any]) -> int:
    for f in failures:
        print(f"not indexed: {f.source}: {f.error_type}: {f.message}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} photo(s) could not be read and were left out", file=sys.stderr)
    return 1 if failures else 0


def _summary(index: Any) -> dict[str, Any]:
    head = {k: v for k, v in index.header.items() if k != "policy"}
    rows = len(index) + index.view_count  # each photo and each stored view
    per_view = 32 + 1 + 2 * index.embedding_dim
    per_local = 6 + 36 * index.local_keypoints if index.local_keypoints else 0  # count, size
    per_photo = round((rows * per_view + 8 * index.view_count) / max(1, len(index))
                      + per_local)
    return {
        **head,
        "count": len(index),
        "groups": dict(sorted(Counter(index.groups).items())),
        "low_quality_hashes": int((index.quality < 50).sum()),
        "policy": index.policy(),
        "views": index.view_count,
        "local_keypoints_per_photo": index.local_keypoints,
        "bytes_per_photo_on_disk": per_photo,
    }


def run_build(args: argparse.Namespace) -> int:
    from .build import build_index

    photos = _photos(args.sources, args.group)
    print(f"indexing {len(photos)} photos", file=sys.stderr)
    index, failures = build_index(photos, model=args.model, precision=args.precision,
                                  batch_size=args.batch_size, threads=args.threads,
                                  views=args.views, local=not args.no_local,
                                  **_settings(args))
    index.save(args.output)
    print(json.dumps({"index": args.output, **_summary(index)}, indent=2))
    return _report_failures(failures)


def run_add(args: argparse.Namespace) -> int:
    from .build import add_photos
    from .store import load_index

    index = load_index(args.index)
    photos = _photos(args.sources, args.group)
    failures = add_photos(index, photos, model=args.model, precision=args.precision,
                          batch_size=args.batch_size, threads=args.threads)
    index.save(args.index)
    print(json.dumps({"index": args.index, **_summary(index)}, indent=2))
    return _report_failures(failures)


def run_remove(args: argparse.Namespace) -> int:
    from .store import load_index

    index = load_index(args.index)
    refs = list(args.references)
    if args.ids:  # shared entry ids -> this index's references
        rows = index.find_ids(refs)
        found = {index.entry_ids()[i] for i in rows}
        missing = [r for r in refs if r not in found]
        if missing:
            from ..errors import MatchIndexError

            raise MatchIndexError(f"no entry with id {missing[:5]} in {args.index}")
        refs = [index.references[i] for i in rows]
    n = index.remove(refs)
    index.save(args.index)
    print(f"removed {n} photo(s); {len(index)} left in {args.index}", file=sys.stderr)
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from .store import load_index

    merged = load_index(args.indexes[0])
    for path in args.indexes[1:]:
        merged = merged.merge(load_index(path), skip_duplicates=args.skip_duplicates)
    merged.save(args.output)
    print(json.dumps({"index": args.output, **_summary(merged)}, indent=2))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from .store import load_index

    index = load_index(args.index)
    if args.format == "share":
        index.for_sharing(local=not args.no_local).save(args.output)
    elif args.format == "share-hashes":
        index.for_sharing(embeddings=False).save(args.output)
    else:
        index.for_sharing(embeddings=False).write_pdq_list(
            args.output, "te" if args.format == "te" else "csv")
    print(f"wrote {args.output} ({args.format})", file=sys.stderr)
    return 0


def run_import(args: argparse.Namespace) -> int:
    from .store import load_index

    incoming = load_index(args.source)
    into = Path(args.into)
    if into.exists():
        index = load_index(into).merge(incoming, skip_duplicates=args.skip_duplicates)
    else:
        index = incoming
    index.save(into)
    print(json.dumps({"index": str(into), "imported": len(incoming), **_summary(index)},
                     indent=2))
    return 0


def run_show(args: argparse.Namespace) -> int:
    from .store import load_index

    index = load_index(args.index)
    if args.find:
        ids = index.entry_ids()
        rows = index.find_ids(args.find)
        for i in rows:
            print(json.dumps({"id": ids[i], "reference": index.references[i],
                              "label": index.labels[i], "group": index.groups[i]}))
        return 0 if len(rows) == len(set(args.find)) else 1
    print(json.dumps(_summary(index), indent=2))
    return 0


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", default=None,
                   help="model whose embeddings to store (default: the default model)")
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    p.add_argument("-b", "--batch-size", type=int, default=16)
    p.add_argument("-t", "--threads", type=int, default=None, help="inference threads")
    p.add_argument("--group", default="",
                   help="taxonomy group of every photo in the folders (default: from the "
                   "sub-folder name when it is a fine label, else 'unknown')")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``match build|add|remove|merge|export|import|show`` to the ``wildvision`` parser."""
    p = subparsers.add_parser(
        "match", help="indexes of known photos: build, edit, share",
        description="Known-photo indexes (PDQ hashes and model embeddings of confirmed "
        "photos, never the photos). Use one with `wildvision classify --match-index FILE`. "
        "Needs the [match] extra. See docs/match.md.")
    sub = p.add_subparsers(dest="match_command", metavar="ACTION")

    b = sub.add_parser("build", help="index confirmed photos (folders or .csv manifests)",
                       description="Index photos: a folder (label = sub-folder name, "
                       "reference = relative path) or a CSV with path[,reference,label,group]. "
                       "Unreadable photos are listed and left out (exit status 1).")
    b.add_argument("sources", nargs="+", metavar="FOLDER_OR_CSV")
    b.add_argument("-o", "--output", required=True, metavar="INDEX.npz")
    _model_args(b)
    b.add_argument("--hash-threshold", type=int, default=None,
                   help="PDQ distance <= this is a match (default 47)")
    b.add_argument("--similarity-threshold", type=float, default=None,
                   help="embedding cosine >= this is a match (default: see docs/match.md)")
    b.add_argument("--mode", choices=("either", "hash", "embedding", "both"), default=None,
                   help="which matches count (default: either)")
    b.add_argument("--decision", choices=("flag", "review"), default=None,
                   help="decision of a photo with a match (default: flag)")
    b.add_argument("--views", choices=("crops", "trim", "none"), default="crops",
                   help="extra views stored per photo: crops (default: the photo without "
                   "its border and five crops; matches crops and framed copies; about 6x "
                   "the memory), trim (only the photo without its border) or none")
    b.add_argument("--no-local", action="store_true",
                   help="store no keypoints (9 KB less per photo; rotated, cropped and "
                   "written-on copies are then found only when their embedding or hash is "
                   "close enough)")
    b.add_argument("--min-inliers", type=int, default=None,
                   help="keypoint pairs the local check needs to call a copy (default 15)")
    b.set_defaults(func=run_build)

    a = sub.add_parser("add", help="add photos to an index (rewritten in place, atomically)")
    a.add_argument("index", metavar="INDEX.npz")
    a.add_argument("sources", nargs="+", metavar="FOLDER_OR_CSV")
    _model_args(a)
    a.set_defaults(func=run_add)

    r = sub.add_parser("remove", help="remove photos by reference (or shared entry id)")
    r.add_argument("index", metavar="INDEX.npz")
    r.add_argument("references", nargs="+", metavar="REFERENCE")
    r.add_argument("--ids", action="store_true",
                   help="the arguments are entry ids from a shared export, not references")
    r.set_defaults(func=run_remove)

    m = sub.add_parser("merge", help="merge indexes made with the same model into one")
    m.add_argument("indexes", nargs="+", metavar="INDEX")
    m.add_argument("-o", "--output", required=True, metavar="OUT.npz")
    m.add_argument("--skip-duplicates", action="store_true",
                   help="keep the first entry of a reference found twice (default: error)")
    m.set_defaults(func=run_merge)

    e = sub.add_parser("export", help="write an index for sharing",
                       description="share: references replaced by content ids, labels by "
                       "groups, embeddings kept; share-hashes: the same without embeddings; "
                       "te: 'pdq <hex>' lines (python-threatexchange local file); pdq-csv: "
                       "'<hex>,<quality>,<group>' lines (reference pdq-photo-hasher layout).")
    e.add_argument("index", metavar="INDEX.npz")
    e.add_argument("-o", "--output", required=True, metavar="FILE")
    e.add_argument("-f", "--format", choices=_EXPORT_FORMATS, default="share")
    e.add_argument("--no-local", action="store_true",
                   help="share: leave out the keypoints (docs/match.md: what they reveal)")
    e.set_defaults(func=run_export)

    i = sub.add_parser("import", help="add a shared index or a PDQ hash list to an index",
                       description="Read a shared .npz, a 'pdq <hex>' list (.txt) or a "
                       "'<hex>,<quality>,<name>' list (.csv) and merge it into INDEX (created "
                       "when missing). Hash-only entries match by hash only.")
    i.add_argument("source", metavar="SHARED_FILE")
    i.add_argument("--into", required=True, metavar="INDEX.npz")
    i.add_argument("--skip-duplicates", action="store_true")
    i.set_defaults(func=run_import)

    s = sub.add_parser("show", help="summarise an index (model, counts, thresholds)")
    s.add_argument("index", metavar="INDEX")
    s.add_argument("--find", nargs="+", metavar="ID",
                   help="print the entries of these shared entry ids")
    s.set_defaults(func=run_show)
