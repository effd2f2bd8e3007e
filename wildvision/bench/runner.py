"""Run models over a manifest's images and write ``predictions.jsonl`` (with the speed of
the run and the provenance of everything involved)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..data.manifest import Manifest, ManifestRow, read_manifest
from ..errors import ConfigError, DataError
from ..modelpack import sha256_file
from ..options import ClassifierOptions
from ..taxonomy import FLAGGABLE_GROUPS
from .evaluate import true_group
from .predictions import PREDICTIONS_FORMAT, PredictionWriter

__all__ = ["git_commit", "machine_info", "predict_to_file", "select_rows"]

SPLIT_ALL = "all"


def git_commit(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The git commit (and whether the tree is dirty) of the repository holding ``path``
    (default: the installed wildvision package); ``None`` values outside a git checkout."""
    where = Path(path) if path else Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
            timeout=10, check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
        return {"commit": commit or None, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info(threads: int | None = None, decode_workers: int | None = None
                 ) -> dict[str, Any]:
    """CPU model (``/proc/cpuinfo``), core counts and library versions of this machine."""
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    try:
        import onnxruntime

        ort_version: str | None = onnxruntime.__version__
    except ImportError:  # pragma: no cover - onnxruntime is a core dependency
        ort_version = None
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "inference_threads": threads,
        "decode_workers": decode_workers,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort_version,
    }


# -- suites: the only place that knows the suite API of wildvision.data ----------------------
def load_bench_suite(name_or_path: str | os.PathLike[str]) -> Any:
    """``wildvision.data.suites.load_suite`` (a :class:`~wildvision.data.suites.Suite`)."""
    try:
        from ..data.suites import load_suite
    except ImportError as e:  # pragma: no cover - part of the package
        raise ConfigError(f"--suite needs wildvision.data.suites ({e})") from e
    return load_suite(name_or_path)


def suite_manifest(suite: Any, data_root: str | None) -> Manifest:
    """The manifest a suite names (used when no ``--data`` is given)."""
    m: Manifest = suite.load_manifest(data_root)
    return m


def suite_info(suite: Any) -> dict[str, Any]:
    """What ``metrics.json`` records about a suite."""
    info: dict[str, Any] = {
        "name": suite.name,
        "description": " ".join(str(suite.description or "").split()) or None,
        "selection": suite.describe(),
        "split": None if suite.holdout_source else suite.split,
        "holdout_source": suite.holdout_source,
        "positive_groups": list(suite.positive_groups),
        "file": str(suite.path) if suite.path else None,
        "file_sha256": sha256_file(suite.path) if suite.path and Path(suite.path).is_file()
        else None,
    }
    return info


def _suite_rows(suite: Any, manifest: Manifest, split: str | None
                ) -> tuple[list[ManifestRow], dict[str, Any]]:
    from dataclasses import replace

    if split is not None:
        if suite.holdout_source:
            raise ConfigError(f"suite {suite.name!r} is leave-one-source-out (all images of "
                              f"{suite.holdout_source}); it takes no --split")
        suite = replace(suite, split=split)
    rows = list(suite.select(manifest).rows)
    info = suite_info(suite)
    # the suite keeps readable rows only: say how many the manifest marks unreadable
    info["unreadable_rows_excluded"] = sum(
        1 for r in manifest.rows if not r.readable and suite.matches(replace(r, error=""))
    )
    return rows, info


def select_rows(manifest: Manifest, split: str | None = None, suite: Any = None
                ) -> tuple[list[ManifestRow], dict[str, Any] | None]:
    """The manifest rows a bench evaluates.

    Without a suite: the rows of ``split`` (default ``test``; ``all``: every row), including
    rows the manifest marks unreadable (they are counted as failed images). With a suite (a
    name, a file, or a loaded ``Suite``): the suite's rows; ``split`` overrides the suite's
    split.

    Raises:
        DataError: nothing left to evaluate (the message gives the split counts).
        ConfigError: an unknown suite, or ``split`` with a leave-one-source-out suite.
    """
    if suite is not None:
        s = load_bench_suite(suite) if isinstance(suite, (str, os.PathLike)) else suite
        return _suite_rows(s, manifest, split)
    split = split or "test"
    if split == SPLIT_ALL:
        return list(manifest.rows), None
    rows = list(manifest.split(split).rows)
    if not rows:
        counts: dict[str, int] = {}
        for r in manifest.rows:
            counts[r.split or "(empty)"] = counts.get(r.split or "(empty)", 0) + 1
        raise DataError(
            f"no rows with split {split!r} in the manifest (splits: "
            f"{', '.join(f'{k}={v}' for k, v in sorted(counts.items()))}); split it with "
            "`wildvision data split` or pass --split all"
        )
    return rows, None


def _model_info(key: str, clf: Any, args: dict[str, Any]) -> dict[str, Any]:
    card = clf.card
    path = Path(clf.package.path)
    card_file = path / "card.json"
    return {
        "record": "model",
        "model_key": key,
        "name": card.name,
        "version": card.version,
        "path": str(path),
        "card_sha256": sha256_file(card_file) if card_file.is_file() else None,
        "files": dict(card.files),
        "labels": list(card.labels),
        "label_groups": dict(card.label_groups),
        "thresholds": {g: t.to_dict() for g, t in clf.thresholds.items()
                       if g in FLAGGABLE_GROUPS},
        "temperature": card.temperature,
        "arch": card.arch,
        **args,
    }


def _percentiles(x: Sequence[float]) -> dict[str, float | None]:
    if not x:
        return {"p50": None, "p95": None, "mean": None}
    a = np.asarray(x, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "mean": float(a.mean())}


def predict_to_file(
    models: Sequence[str],
    manifest: Manifest,
    rows: Sequence[ManifestRow],
    out_path: str | os.PathLike[str],
    *,
    run_info: dict[str, Any],
    options: ClassifierOptions | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Classify ``rows`` with each model and write ``predictions.jsonl``.

    Args:
        models: model names, package folders or ``hf://`` specs.
        manifest: the manifest the rows come from (for their absolute paths).
        rows: the rows to classify, in order.
        out_path: the ``predictions.jsonl`` to write.
        run_info: the ``run`` record's provenance (manifest, split, suite, command ...).
        options: how the models run (:class:`~wildvision.ClassifierOptions`;
            ``open_set=False``: the packages' open-set gate off, to measure what it changes).
        progress: called as ``progress(model_key, done, total)``.

    Returns:
        The written path.
    """
    from ..predict import Classifier, Prediction

    opts = options if options is not None else ClassifierOptions()
    batch_size, threads = opts.batch_size, opts.threads
    if not models:
        raise ConfigError("give at least one --model")
    # load every model first: a typo in the second model must not cost the first one's run
    classifiers = []
    for spec in models:
        clf = Classifier(spec, opts)
        classifiers.append((spec, clf))
    keys: list[str] = []
    for _spec, clf in classifiers:
        key = f"{clf.card.name}@{clf.card.version}"
        base, i = key, 2
        while key in keys:
            key, i = f"{base}#{i}", i + 1
        keys.append(key)
    paths = [str(manifest.abs_path(r)) for r in rows]
    truth = [true_group({"group": r.group, "fine_label": r.fine_label}) for r in rows]
    out = Path(out_path)
    tmp = out.with_name(out.name + ".partial")
    with PredictionWriter(tmp) as w:
        w.write({"record": "run", "predictions_format": PREDICTIONS_FORMAT,
                 "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "wildvision_version": __version__, **run_info,
                 "machine": machine_info(threads, opts.decode_workers)})
        for key, (spec, clf) in zip(keys, classifiers, strict=True):
            w.write(_model_info(key, clf, {
                "spec": str(spec), "backend": opts.backend, "precision": opts.precision,
                "open_set": clf.gate is not None,
                "open_set_thresholds": (dict(clf.gate.thresholds)
                                        if clf.gate is not None else None),
                "batch_size": batch_size, "threads": threads,
                "decode_workers": clf.decode_workers,
            }))
            batch_times: list[float] = []
            batch_sizes: list[int] = []
            t0 = last = time.perf_counter()
            n_done = last_done = 0
            labels = clf.card.labels
            results = clf.iter_arrays(paths, batch_size=batch_size)
            for row, gt, (res, arrays) in zip(rows, truth, results, strict=True):
                rec: dict[str, Any] = {
                    "record": "image", "model_key": key, "path": row.path,
                    "sha256": row.sha256 or getattr(res, "image_sha256", ""),
                    "source": row.source, "fine_label": row.fine_label, "group": gt,
                    "split": row.split, "ok": bool(res.ok),
                }
                if isinstance(res, Prediction):
                    assert arrays is not None
                    probs = arrays["probabilities"].tolist()
                    rec.update({
                        "image_sha256": res.image_sha256,
                        "probabilities": dict(zip(labels, probs, strict=True)),
                        "top_label": res.top_labels[0].label,
                        "top_group": res.top_group,
                        "decision": res.decision,
                        "decisions": {g.group: g.decision for g in res.groups},
                    })
                    if res.familiarity is not None:
                        rec["familiarity"] = round(res.familiarity, 6)
                        rec["unfamiliar"] = res.unfamiliar
                    if row.sha256 and res.image_sha256 != row.sha256:
                        rec["sha256_mismatch"] = True
                else:
                    rec.update({"error_type": res.error_type, "message": res.message})
                w.write(rec)
                n_done += 1
                # iter_classify yields each batch at once: a boundary every batch_size results
                if n_done % batch_size == 0 or n_done == len(rows):
                    now = time.perf_counter()
                    batch_times.append(now - last)
                    batch_sizes.append(n_done - last_done)
                    last, last_done = now, n_done
                if progress is not None:
                    progress(key, n_done, len(rows))
            wall = time.perf_counter() - t0
            k = 1 if len(batch_times) > 1 else 0
            steady = batch_times[k:]
            per_image = [t / b for t, b in zip(batch_times[k:], batch_sizes[k:], strict=True)]
            w.write({"record": "timing", "model_key": key, "speed": {
                "machine_dependent": True,
                "images": n_done,
                "wall_s": wall,
                "images_per_s": n_done / wall if wall > 0 else None,
                "batch_size": batch_size,
                "batches": len(batch_times),
                "first_batch_s": batch_times[0] if batch_times else None,
                "batch_s": _percentiles(steady),
                "per_image_s": _percentiles(per_image),
                "note": "decode and inference overlap (wildvision.Classifier.iter_classify); "
                        "batch_s is the time between consecutive batch completions after the "
                        "first (warm-up) batch, per_image_s = a batch's time / its size; failed "
                        "images are included; numbers depend on the machine",
                "machine": machine_info(threads, clf.decode_workers),
            }})
            w.flush()
    os.replace(tmp, out)
    return out


def read_bench_manifest(data: str | os.PathLike[str], data_root: str | None
                        ) -> Manifest:
    """Read the manifest for a bench (a thin wrapper for a clear error message)."""
    m = read_manifest(data, data_root)
    if not m.rows:
        raise DataError(f"{data}: the manifest has no rows")
    return m


def command_line(argv: Sequence[str] | None = None) -> str:
    """``wildvision <argv>`` shell-quoted (``sys.argv[1:]`` by default)."""
    import shlex

    args = list(sys.argv[1:] if argv is None else argv)
    return "wildvision " + shlex.join(args)
