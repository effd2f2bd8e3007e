"""``wildvision export``: ``int8`` (add an INT8 model to a package) and ``triton`` (write a
Triton Inference Server model repository). Only the stdlib is imported here; the work is
imported when a subcommand runs."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

__all__ = ["register", "run_bank", "run_familiarity", "run_int8", "run_triton"]


def run_int8(args: argparse.Namespace) -> int:
    """``wildvision export int8 PACKAGE_DIR --calib MANIFEST_OR_FOLDER``."""
    from .quantize import calibration_images, quantize_package

    limit = None if args.limit == 0 else args.limit
    images = calibration_images(args.calib, split=args.split or None, limit=limit,
                                data_root=args.data_root)
    print(f"quantizing {args.package} ({args.method}) with {len(images)} images from "
          f"{args.calib}", file=sys.stderr)
    command = "wildvision export int8 " + " ".join(shlex.quote(str(a)) for a in (
        args.package, "--calib", args.calib, "--split", args.split, "--limit", args.limit,
        "--method", args.method, *(["--per-tensor"] if args.per_tensor else []),
        *(["--full-range"] if args.full_range else []), "--holdout", args.holdout))
    path = quantize_package(
        args.package, images, method=args.method, per_channel=not args.per_tensor,
        reduce_range=not args.full_range, holdout=args.holdout, command=command,
    )
    from ..modelpack import load_package

    record = load_package(args.package).card.extra.get("int8", {})
    print(json.dumps({"int8_model": str(path), **record}, indent=2))
    return 0


def run_familiarity(args: argparse.Namespace) -> int:
    """``wildvision export familiarity PACKAGE_DIR --data MANIFEST``."""
    from .familiarity import add_familiarity

    command = "wildvision export familiarity " + " ".join(shlex.quote(str(a)) for a in (
        args.package, "--data", args.data, "--train-split", args.train_split, "--val-split",
        args.val_split, "--dims", args.dims, "--quantile", args.quantile))
    record = add_familiarity(args.package, args.data, train_split=args.train_split,
                             val_split=args.val_split, dims=args.dims, quantile=args.quantile,
                             data_root=args.data_root, command=command)
    print(json.dumps(record, indent=2))
    return 0


def run_bank(args: argparse.Namespace) -> int:
    """``wildvision export bank PACKAGE_DIR --data MANIFEST``."""
    from .bank import add_bank

    command = "wildvision export bank " + " ".join(shlex.quote(str(a)) for a in (
        args.package, "--data", args.data, "--train-split", args.train_split, "--val-split",
        args.val_split, "--dims", args.dims, "--max-mb", args.max_mb))
    record = add_bank(args.package, args.data, train_split=args.train_split,
                      val_split=args.val_split, dims=args.dims,
                      max_bytes=int(args.max_mb * 1_000_000), data_root=args.data_root,
                      threads=args.threads, command=command)
    print(json.dumps(record, indent=2))
    return 0


def run_triton(args: argparse.Namespace) -> int:
    """``wildvision export triton MODEL --out DIR``."""
    from .triton import export_triton

    path = export_triton(
        args.model, args.out, max_batch_size=args.max_batch_size, precision=args.precision,
        instance_count=args.instance_count,
    )
    print(path)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``export int8|familiarity|bank|triton`` to the ``wildvision`` parser."""
    p = subparsers.add_parser("export", help="add INT8, the open-set gate or the extension "
                              "bank to a package; Triton",
                              description="Export a model package to other forms.")
    sub = p.add_subparsers(dest="export_command", metavar="FORMAT")

    q = sub.add_parser(
        "int8", help="write model.int8.onnx into a package (ONNX Runtime quantization)",
        description="Quantize a package's model to INT8 with ONNX Runtime, calibrated on real "
        "images through the package's preprocessing; checks it against fp32 on held-out "
        "images and records method, image count and agreement in card.json. Select it with "
        "`wildvision classify --precision int8`. Needs onnx and sympy ([export] extra).",
    )
    q.add_argument("package", metavar="PACKAGE_DIR", help="model package folder (modified)")
    q.add_argument("--calib", required=True, metavar="MANIFEST_OR_FOLDER",
                   help="calibration images: a manifest .csv or a folder of images")
    q.add_argument("--split", default="val",
                   help="manifest split to calibrate on (default: val; '' for all rows)")
    q.add_argument("--limit", type=int, default=256,
                   help="at most this many images, spread over the list (0: all; default 256)")
    q.add_argument("--data-root", default=None, help="data root of the manifest's paths")
    q.add_argument("--method", choices=("static", "dynamic"), default="static",
                   help="static: calibrated QDQ (default, faster and closer to fp32); "
                   "dynamic: weights only")
    q.add_argument("--per-tensor", action="store_true",
                   help="one scale per weight tensor instead of per output channel")
    q.add_argument("--full-range", action="store_true",
                   help="8-bit weights (only for CPUs with VNNI; default is 7-bit)")
    q.add_argument("--holdout", type=float, default=0.2,
                   help="fraction of the images kept for the fp32 agreement check (default 0.2)")
    q.set_defaults(func=run_int8)

    f = sub.add_parser(
        "familiarity", help="add the open-set gate (familiarity.npz) to a package",
        description="Embed the training images of a manifest with the package's own model, "
        "store a compact reference set in the package and choose the familiarity threshold on "
        "validation: a flag on a photo unlike every training photo becomes review. Core "
        "install only. See docs/core.md, 'Unfamiliar photos'.",
    )
    f.add_argument("package", metavar="PACKAGE_DIR", help="model package folder (modified)")
    f.add_argument("--data", required=True, metavar="MANIFEST",
                   help="the manifest the model was trained on")
    f.add_argument("--train-split", default="train", help="reference images (default: train)")
    f.add_argument("--val-split", default="val", help="threshold images (default: val)")
    f.add_argument("--dims", type=int, default=256,
                   help="projection width of the stored references (default 256)")
    f.add_argument("--quantile", type=float, default=0.01,
                   help="share of correctly flagged validation images allowed below the "
                   "threshold (default 0.01)")
    f.add_argument("--data-root", default=None, help="data root of the manifest's paths")
    f.set_defaults(func=run_familiarity)

    b = sub.add_parser(
        "bank", help="add the extension bank (bank.npz) to a package",
        description="Embed the training and validation images of the manifest the model was "
        "trained on with the package's own model and store them, projected and in float16, "
        "as the package's extension bank: what `wildvision extend` needs to add labels "
        "while keeping the model's own. Core install only. See docs/extend.md.",
    )
    b.add_argument("package", metavar="PACKAGE_DIR", help="model package folder (modified)")
    b.add_argument("--data", required=True, metavar="MANIFEST",
                   help="the manifest the model was trained on")
    b.add_argument("--train-split", default="train", help="training rows (default: train)")
    b.add_argument("--val-split", default="val", help="validation rows (default: val)")
    b.add_argument("--dims", type=int, default=256,
                   help="leading directions kept when the package has no open-set gate "
                   "(default 256; with a gate, the gate's projection is used)")
    b.add_argument("--max-mb", type=float, default=10.0,
                   help="size budget in MB; training rows of the largest labels are "
                   "subsampled to fit (default 10)")
    b.add_argument("--data-root", default=None, help="data root of the manifest's paths")
    b.add_argument("-t", "--threads", type=int, default=None, help="inference threads")
    b.set_defaults(func=run_bank)

    t = sub.add_parser(
        "triton", help="write a Triton Inference Server model repository",
        description="Write a Triton model repository (ONNX Runtime backend) for a model.",
    )
    t.add_argument("model", metavar="MODEL", help="model name, package folder or hf://org/name")
    t.add_argument("-o", "--out", required=True, metavar="DIR", help="output repository folder")
    t.add_argument("--max-batch-size", type=int, default=32)
    t.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    t.add_argument("--instance-count", type=int, default=1)
    t.set_defaults(func=run_triton)

    def _usage(args: argparse.Namespace) -> int:
        p.print_help(sys.stderr)
        return 2

    p.set_defaults(func=_usage)
