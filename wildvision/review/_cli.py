"""``wildvision review`` — argument parsing only; the page builder is imported when it runs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``review`` command to the ``wildvision`` parser."""
    r = subparsers.add_parser(
        "review", help="write an offline HTML review page for classify results",
        description="Write one self-contained HTML page (thumbnails embedded, works offline "
                    "from a file) to confirm, reject or relabel flagged photos with the "
                    "keyboard; decisions are kept in the browser and exported as CSV/JSONL "
                    "for `wildvision data from-reviews`.")
    r.add_argument("results", help="JSONL results of `wildvision classify` (--explain adds "
                                   "heatmaps)")
    r.add_argument("-o", "--out", default="review.html", help="HTML page to write "
                                                              "(default: review.html)")
    r.add_argument("--root", default=None,
                   help="folder the results' relative paths are in (default: current folder)")
    r.add_argument("--decisions", default="flag,review",
                   help="model decisions to review, comma-separated (default: flag,review; "
                        "add pass to audit passes)")
    r.add_argument("--no-heatmaps", dest="heatmaps", action="store_false",
                   help="leave the results' heatmaps out of the page")
    r.add_argument("--thumb-size", type=int, default=256, help="thumbnail side in pixels")
    r.add_argument("--title", default=None, help="page title")
    r.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from .page import build_review_page

    decisions = [d.strip() for d in args.decisions.split(",") if d.strip()]
    page = build_review_page(args.results, args.out, image_root=args.root, decisions=decisions,
                             heatmaps=args.heatmaps, thumb_size=args.thumb_size,
                             title=args.title)
    print(f"wrote {page.path} ({page.items} photos, {page.heatmaps} with heatmaps, "
          f"{page.bytes / 1e6:.1f} MB)", file=sys.stderr)
    if page.failed:
        print(f"{page.failed} results are failed inputs (not reviewable)", file=sys.stderr)
    for line in page.unavailable[:20]:
        print(f"warning: {line}", file=sys.stderr)
    if len(page.unavailable) > 20:
        print(f"warning: … and {len(page.unavailable) - 20} more", file=sys.stderr)
    return 0
