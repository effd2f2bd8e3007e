"""``wildvision bench`` (stdlib imports only at module level; the work is imported lazily)."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

DESCRIPTION = """\
Benchmark one or more models on a labelled manifest and write a report folder:
predictions.jsonl (cached predictions), metrics.json (schema: docs/bench.md), report.md and
PNG plots (PR curves, confusion matrices, reliability diagrams; with several models, a
comparison table and overlaid PR curves).

  wildvision bench --model A [--model B] --data MANIFEST [--split test] [--suite NAME] --out DIR
  wildvision bench render DIR/predictions.jsonl --out DIR2     (re-render, no model run)
  wildvision bench --from-predictions DIR/predictions.jsonl --out DIR2

Exit status: 0 when the report was written (failed images are counted and listed in it),
1 on a failure, 2 on a usage error."""


def register(subparsers: Any) -> None:
    """Add the ``bench`` subcommand."""
    p = subparsers.add_parser(
        "bench", help="benchmark models on a labelled manifest (metrics, plots, report)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", nargs="?", choices=("run", "render"), default=None,
                   help="run (default) or render an existing predictions.jsonl")
    p.add_argument("predictions_file", nargs="?", default=None, metavar="PREDICTIONS",
                   help="with 'render': the predictions.jsonl to render")
    p.add_argument("-m", "--model", action="append", default=None, metavar="MODEL",
                   help="model name, package folder or hf://org/name (repeat to compare)")
    p.add_argument("--data", metavar="MANIFEST",
                   help="manifest CSV with fine_label/group (default with --suite: the "
                        "suite's manifest)")
    p.add_argument("--data-root", metavar="DIR", default=None,
                   help="folder the manifest's paths are relative to")
    p.add_argument("--split", default=None,
                   help="train, val, test or all (default: test, or the suite's split)")
    p.add_argument("--suite", default=None, metavar="NAME",
                   help="a suite of datasets/wildvision-ref/suites.yaml, FILE#NAME or a suite "
                        "file: the rows to evaluate (e.g. ivory-vs-lookalikes)")
    p.add_argument("--positive-groups", default=None, metavar="G1,G2",
                   help="groups of a binary task (default: the suite's positive_groups)")
    p.add_argument("-o", "--out", metavar="REPORT_DIR", help="report folder to write")
    p.add_argument("--from-predictions", metavar="PREDICTIONS", default=None,
                   help="re-render a report from a predictions.jsonl (no model run)")
    from ..options import add_classifier_arguments

    add_classifier_arguments(p, skip=("thresholds", "top_k"))
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples for the 95%% CIs (default 1000; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress line on stderr (default: on a terminal)")
    p.set_defaults(func=run)


def _canonical_command(args: argparse.Namespace) -> str:
    parts = ["wildvision", "bench"]
    for m in args.model or []:
        parts += ["--model", m]
    if args.data:
        parts += ["--data", args.data]
    if args.data_root:
        parts += ["--data-root", args.data_root]
    if args.split:
        parts += ["--split", args.split]
    if args.suite:
        parts += ["--suite", args.suite]
    if args.positive_groups:
        parts += ["--positive-groups", args.positive_groups]
    parts += ["--out", args.out]
    if args.batch_size != 32:
        parts += ["--batch-size", str(args.batch_size)]
    if args.threads is not None:
        parts += ["--threads", str(args.threads)]
    if args.backend != "onnx":
        parts += ["--backend", args.backend]
    if args.precision != "fp32":
        parts += ["--precision", args.precision]
    if not args.open_set:
        parts.append("--no-open-set")
    if args.bootstrap != 1000:
        parts += ["--bootstrap", str(args.bootstrap)]
    if args.seed:
        parts += ["--seed", str(args.seed)]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    """Run ``wildvision bench``; returns the exit status."""
    from ..errors import ConfigError

    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if not args.out:
        raise ConfigError("wildvision bench needs --out REPORT_DIR")
    render_from = args.from_predictions
    if args.action == "render":
        if not args.predictions_file and not render_from:
            raise ConfigError("usage: wildvision bench render PREDICTIONS.jsonl --out DIR")
        render_from = args.predictions_file or render_from
    elif args.predictions_file:
        raise ConfigError(f"unexpected argument {args.predictions_file!r} "
                          "(did you mean: wildvision bench render PREDICTIONS --out DIR?)")
    if render_from:
        if args.model or args.data:
            raise ConfigError("--from-predictions/render takes no --model or --data: the "
                              "predictions file already holds them")
        from .report import render_report

        cmd = ["wildvision", "bench", "render", render_from, "--out", args.out]
        if args.bootstrap != 1000:
            cmd += ["--bootstrap", str(args.bootstrap)]
        if args.seed:
            cmd += ["--seed", str(args.seed)]
        metrics = render_report(render_from, args.out, n_resamples=args.bootstrap,
                                seed=args.seed, plots=not args.no_plots,
                                render_command=shlex.join(cmd))
        _summary(metrics, args.out)
        return 0
    if not args.model:
        raise ConfigError("wildvision bench needs at least one --model")
    if not args.data and not args.suite:
        raise ConfigError("wildvision bench needs --data MANIFEST (or a --suite)")
    positive = None
    if args.positive_groups:
        positive = [g.strip() for g in args.positive_groups.split(",") if g.strip()]
    from ..options import ClassifierOptions
    from .api import run_bench

    show = args.progress if args.progress is not None else sys.stderr.isatty()
    last: dict[str, float] = {}

    def progress(key: str, done: int, total: int) -> None:
        import time

        now = time.monotonic()
        if key not in last or now - last[key] > 0.5 or done == total:
            last[key] = now
            sys.stderr.write(f"\r{key}: {done}/{total} images")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    metrics = run_bench(
        args.model, args.data, args.out, data_root=args.data_root, split=args.split,
        suite=args.suite, positive_groups=positive, options=ClassifierOptions.from_args(args),
        n_resamples=args.bootstrap, seed=args.seed, plots=not args.no_plots,
        command=_canonical_command(args), progress=progress if show else None,
    )
    _summary(metrics, args.out)
    return 0


def _summary(metrics: dict[str, Any], out: str) -> None:
    for b in metrics["models"]:
        h = b["headline"]
        c = b["counts"]

        def v(k: str, h: dict[str, Any] = h) -> str:
            x = h[k]["value"]
            return "n/a" if x is None else f"{x:.3f}"

        print(f"{b['key']}: {c['evaluated']} evaluated, {c['failed']} failed; macro-F1 groups "
              f"{v('macro_f1_group')}, flag precision {v('flag_precision')}, flag recall "
              f"{v('flag_recall')}, false-flag rate {v('false_flag_rate')}", file=sys.stderr)
    print(f"report: {out}/report.md", file=sys.stderr)
