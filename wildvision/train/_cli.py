"""``wildvision train`` command-line plug-in (stdlib-only imports at module level)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

__all__ = ["register", "run"]

_EPILOG = """\
examples:
  wildvision train --data data/manifest.csv --recipe training/recipes/wildvision-base-v2.yaml \\
      --out runs/base-v1
  wildvision train --data new_species.csv --recipe training/recipes/quick.yaml --out runs/new \\
      --head-only
  wildvision train --data data/manifest.csv --recipe R.yaml --out runs/base-v1 --resume

The model package is written to OUT/package (use it with: wildvision classify -m OUT/package).
See docs/train.md and training/README.md for the recipe schema.
"""


def register(subparsers: Any) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train", help="train a model package from a manifest and a recipe ([train] extra)",
        description="Fine-tune a backbone (or only a linear head with --head-only), calibrate, "
                    "choose thresholds on validation, export ONNX and write a model package.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, metavar="MANIFEST", help="manifest CSV")
    p.add_argument("--recipe", required=True, metavar="RECIPE.yaml",
                   help="training recipe (see training/recipes/)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    p.add_argument("--data-root", default=None, help="root of the manifest's relative paths")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--head-only", action="store_true",
                   help="fast path: fit a linear head on cached backbone embeddings")
    p.add_argument("--from-scratch", action="store_true",
                   help="random initialisation instead of pretrained weights (explicit)")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="backbone weights: .safetensors, .pth (weights only) or a model "
                        "package folder")
    p.add_argument("--epochs", type=int, default=None, metavar="N", help="override epochs")
    p.add_argument("--limit-per-class", type=int, default=None, metavar="N",
                   help="use at most N images per class and split (quick runs)")
    p.add_argument("--cache-dir", default=None,
                   help="where embeddings / trunk outputs are cached (default RUN_DIR/cache)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars on stderr (default: on a terminal)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``wildvision train`` (heavy imports happen here)."""
    logger = logging.getLogger("wildvision.train")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("train: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        from .engine import train
    except ImportError as e:
        from ..errors import MissingExtraError

        raise MissingExtraError(str(e.name or "torch"), "train", "wildvision train") from e
    result = train(
        args.data, args.recipe, args.out, data_root=args.data_root, resume=args.resume,
        head_only=args.head_only, from_scratch=args.from_scratch, weights=args.weights,
        epochs=args.epochs, limit_per_class=args.limit_per_class, cache_dir=args.cache_dir,
        progress=args.progress,
    )
    val = result.card.metrics.get("validation", {})
    summary = f"validation macro-F1 {val['macro_f1']:.4f}, " if val else ""
    print(f"train: done in {result.wall_seconds:.1f} s; {summary}package: {result.package_dir}",
          file=sys.stderr)
    print(str(result.package_dir))
    return 0
