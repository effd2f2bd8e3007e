"""``wildvision bench``: standard, statistically honest metrics and plots for one or more
models on a labelled manifest (``[bench]`` extra: matplotlib for the plots, pyyaml for suites).

Outputs of a run (``out_dir``): ``predictions.jsonl`` (the cache every number is computed
from), ``metrics.json`` (versioned schema, see ``docs/bench.md``), ``report.md`` and PNG plots.

Example:
    >>> from wildvision.bench import run_bench, card_metrics
    >>> run_bench(["wildvision-base"], "manifest.csv", "report/")  # doctest: +SKIP
    >>> card_metrics("report/metrics.json")["headline"]["macro_f1_group"]  # doctest: +SKIP
"""

from __future__ import annotations

from .api import run_bench as run_bench
from .predictions import read_predictions as read_predictions
from .report import SCHEMA_VERSION as SCHEMA_VERSION
from .report import build_metrics as build_metrics
from .report import card_metrics as card_metrics
from .report import render_report as render_report

__all__ = [
    "SCHEMA_VERSION",
    "build_metrics",
    "card_metrics",
    "read_predictions",
    "render_report",
    "run_bench",
]
