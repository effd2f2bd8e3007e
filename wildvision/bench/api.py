"""``run_bench``: the whole bench (predict, then render) as one function."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..options import ClassifierOptions
from ..taxonomy import GROUP_NAMES
from .report import render_report
from .runner import (
    git_commit,
    load_bench_suite,
    predict_to_file,
    read_bench_manifest,
    select_rows,
    suite_manifest,
)

__all__ = ["run_bench"]


def run_bench(
    models: Sequence[str | os.PathLike[str]],
    data: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str],
    *,
    data_root: str | os.PathLike[str] | None = None,
    split: str | None = None,
    suite: str | None = None,
    positive_groups: Sequence[str] | None = None,
    options: ClassifierOptions | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    plots: bool = True,
    command: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    **classifier_opts: Any,
) -> dict[str, Any]:
    """Benchmark models on a manifest: writes ``predictions.jsonl``, ``metrics.json``,
    ``report.md`` and the plots into ``out_dir``.

    Args:
        models: model names, package folders or ``hf://org/name`` (one or more).
        data: the manifest CSV (ground truth from its ``fine_label`` / ``group`` columns);
            ``None`` with a suite: the suite's manifest.
        out_dir: the report folder (created).
        data_root: the folder the manifest's paths are relative to (see
            :func:`wildvision.data.read_manifest` for the default).
        split: ``train``/``val``/``test``, or ``all`` for every row; default ``test``, or
            the suite's own split.
        suite: a suite name or suite file (``wildvision.data.suites``) filtering the rows.
        positive_groups: the groups of a binary task ("flag these, not the rest"); default:
            the suite's ``positive_groups``. Adds the ``binary`` metrics block.
        options: how the models run (:class:`~wildvision.ClassifierOptions`: batch size,
            threads, decode workers, backend, precision; ``open_set=False`` turns the
            packages' open-set gate off, ``--no-open-set``).
        n_resamples, seed: bootstrap confidence intervals.
        plots: write PNG plots (needs matplotlib).
        command: the command line to record (default: a canonical ``wildvision bench ...``).
        progress: called as ``progress(model_key, done, total)``.
        **classifier_opts: options as keywords (``batch_size=16``, ``threads=2``,
            ``open_set=False`` ...), applied on top of ``options``.

    Returns:
        The ``metrics.json`` object.

    Raises:
        DataError: unreadable manifest, or nothing to evaluate.
        ConfigError: bad options. UnknownModelError / ModelIntegrityError: a bad model.

    Example:
        >>> m = run_bench(["wildvision-base"], "manifest.csv", "report/")  # doctest: +SKIP
        >>> m["models"][0]["headline"]["macro_f1_group"]  # doctest: +SKIP
        {'value': 0.91, 'ci95': [0.89, 0.93]}
    """
    opts = ClassifierOptions.build(options, **classifier_opts)
    root = None if data_root is None else str(data_root)
    suite_obj = load_bench_suite(suite) if suite else None
    if data is None:
        if suite_obj is None:
            raise ConfigError("give a manifest (--data) or a suite (--suite)")
        manifest = suite_manifest(suite_obj, root)
        data = str(suite_obj.manifest)
    else:
        manifest = read_bench_manifest(data, root)
    rows, suite_info = select_rows(manifest, split, suite_obj)
    if positive_groups is None and suite_info and suite_info.get("positive_groups"):
        positive_groups = suite_info["positive_groups"]
    bad = [g for g in positive_groups or () if g not in GROUP_NAMES]
    if bad:
        raise ConfigError(f"unknown positive group(s) {bad}; groups: {', '.join(GROUP_NAMES)}")
    if command is None:
        import shlex

        parts = ["wildvision", "bench"]
        for m in models:
            parts += ["--model", str(m)]
        parts += ["--data", str(data)]
        if data_root is not None:
            parts += ["--data-root", str(data_root)]
        if split:
            parts += ["--split", split]
        if suite:
            parts += ["--suite", suite]
        if not opts.open_set:
            parts.append("--no-open-set")
        parts += ["--out", str(out_dir)]
        command = shlex.join(parts)
    run_info = {
        "command": command,
        "manifest": {"path": str(data), "sha256": manifest.sha256, "rows": len(manifest)},
        "data_root": str(manifest.root),
        "split": split or (suite_info or {}).get("split") or "test",
        "suite": suite_info,
        "positive_groups": list(positive_groups) if positive_groups else None,
        "images": len(rows),
        "git": git_commit(),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred = predict_to_file(
        [str(m) for m in models], manifest, rows, out / "predictions.jsonl", run_info=run_info,
        options=opts, progress=progress,
    )
    return render_report(pred, out, n_resamples=n_resamples, seed=seed, plots=plots)
