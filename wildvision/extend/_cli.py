"""``wildvision extend``: the command line of :mod:`wildvision.extend` (only the stdlib is
imported until the command runs)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

__all__ = ["register", "run_extend"]


def run_extend(args: argparse.Namespace) -> int:
    """``wildvision extend --data NEW --out DIR [--base MODEL] [--group LABEL=GROUP]...``."""
    from .data import parse_group_specs
    from .extension import extend_model

    groups = parse_group_specs(args.group or [])
    command = "wildvision extend " + " ".join(shlex.quote(str(a)) for a in (
        "--base", args.base, "--data", *args.data, "--out", args.out,
        *[x for g in (args.group or []) for x in ("--group", g)],
        *(["--force"] if args.force else []), "--holdout", args.holdout,
        "--min-photos", args.min_photos, "--max-drop", args.max_drop))
    result = extend_model(
        args.base, args.data if len(args.data) > 1 else args.data[0], args.out,
        groups=groups, name=args.name, version=args.version, holdout=args.holdout,
        min_photos=args.min_photos, max_drop=args.max_drop, force=args.force,
        threads=args.threads, data_root=args.data_root, command=command)
    print(json.dumps(result.summary(), indent=2))
    if result.forced:
        print("wildvision extend: WARNING: written with --force although a base group lost "
              f"more than {args.max_drop} points of F1 (recorded in the card)", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``extend`` to the ``wildvision`` parser."""
    p = subparsers.add_parser(
        "extend", help="add labels to an installed model (core install, no torch)",
        description="Write a new model package that knows the base model's labels and new "
        "ones: the new photos are embedded with the base model and a new head is fitted on "
        "them and the base package's extension bank, with temperature, thresholds and the "
        "open-set gate refitted. Refuses when a base group loses more than --max-drop points "
        "of F1 on the base model's validation bank. See docs/extend.md.",
    )
    p.add_argument("--base", default="wildvision-base",
                   help="the model to extend: name or package folder (default wildvision-base)")
    p.add_argument("--data", required=True, nargs="+", metavar="MANIFEST_OR_FOLDER",
                   help="a manifest .csv (path, fine_label or label, group, split) or folders "
                   "of photos (a folder per label, named as the label)")
    p.add_argument("-o", "--out", required=True, metavar="DIR",
                   help="the new package folder (must not exist)")
    p.add_argument("--group", action="append", metavar="LABEL=GROUP",
                   help="the group of a new label, e.g. rhino_horn_raw=rhino_horn or "
                   "buffalo_horn_raw=benign (repeatable)")
    p.add_argument("--name", default=None, help="name of the new package (default: DIR's name)")
    p.add_argument("--version", default="1.0.0", help="version of the new package")
    p.add_argument("--holdout", type=float, default=0.2,
                   help="share of each new label's photos kept for validation (default 0.2)")
    p.add_argument("--min-photos", type=int, default=10,
                   help="readable photos each new label needs (default 10)")
    p.add_argument("--max-drop", type=float, default=2.0,
                   help="largest F1 drop of a base group, in points (default 2)")
    p.add_argument("--force", action="store_true",
                   help="write even when a base group drops more (recorded in the card)")
    p.add_argument("--data-root", default=None, help="data root of a manifest's paths")
    p.add_argument("-t", "--threads", type=int, default=None, help="inference threads")
    p.set_defaults(func=run_extend)
