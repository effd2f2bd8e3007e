"""The predictions cache, ``predictions.jsonl``: everything a report is computed from.

One JSON object per line, told apart by ``record``:

``run``     (first line) provenance of the run: manifest path and sha256, data root, split,
            suite, command line, git commit, wildvision version, machine, creation time.
``model``   one per model, before its images: ``model_key`` (``name@version``), the card's
            name, version, labels, label groups, thresholds, temperature, file sha256s, the
            sha256 of ``card.json``, the package path, backend, precision, batch size, threads.
``image``   one per image and model: ``model_key``, ``path`` (as in the manifest), ``sha256``
            (of the file bytes), ``source``, ground truth ``fine_label`` and ``group``,
            ``split``, ``ok``; when ``ok``: ``probabilities`` (every label of the model,
            calibrated), ``top_label``, ``top_group``, ``decision`` (overall) and ``decisions``
            (per group, the model's own thresholds); when not: ``error_type`` and ``message``.
``timing``  one per model, after its images: the speed of the measured run.

A report (``metrics.json``, ``report.md``, plots) is a pure function of this file, so
``wildvision bench render predictions.jsonl`` reproduces it without running a model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..errors import DataError

__all__ = [
    "PREDICTIONS_FORMAT",
    "ModelRun",
    "PredictionSet",
    "PredictionWriter",
    "read_predictions",
]

PREDICTIONS_FORMAT = 1


@dataclass
class ModelRun:
    """One model's part of a predictions file."""

    key: str
    info: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    speed: dict[str, Any] | None = None

    @property
    def labels(self) -> list[str]:
        return list(self.info["labels"])

    @property
    def label_groups(self) -> dict[str, str]:
        return dict(self.info["label_groups"])


@dataclass
class PredictionSet:
    """A parsed predictions file."""

    path: Path | None
    run: dict[str, Any]
    models: list[ModelRun]
    skipped_lines: int = 0


class PredictionWriter:
    """Writes ``predictions.jsonl`` line by line (flushed per model, so a crash keeps the
    finished part)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f: TextIO = open(self.path, "w", encoding="utf-8")  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if line:
                yield lineno, line


def read_predictions(path: str | os.PathLike[str]) -> PredictionSet:
    """Read a ``predictions.jsonl`` file.

    A line cut short by an interrupted run is skipped (and counted in ``skipped_lines``).

    Raises:
        DataError: the file is missing, has no ``run`` record, a newer format, or an image
            of a model it never declared.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: predictions file not found")
    run: dict[str, Any] | None = None
    models: dict[str, ModelRun] = {}
    skipped = 0
    for lineno, line in _iter_lines(p):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if not isinstance(rec, dict):
            raise DataError(f"{p}:{lineno}: expected a JSON object")
        kind = rec.get("record")
        if kind == "run":
            fmt = int(rec.get("predictions_format", PREDICTIONS_FORMAT))
            if fmt > PREDICTIONS_FORMAT:
                raise DataError(f"{p}: predictions format {fmt} is newer than this wildvision "
                                f"reads ({PREDICTIONS_FORMAT}); upgrade wildvision")
            run = rec
        elif kind == "model":
            key = str(rec.get("model_key", ""))
            for k in ("labels", "label_groups", "name", "version"):
                if k not in rec:
                    raise DataError(f"{p}:{lineno}: model record without {k!r}")
            models[key] = ModelRun(key, rec)
        elif kind == "image":
            key = str(rec.get("model_key", ""))
            if key not in models:
                raise DataError(f"{p}:{lineno}: image of undeclared model {key!r}")
            models[key].records.append(rec)
        elif kind == "timing":
            key = str(rec.get("model_key", ""))
            if key in models:
                models[key].speed = rec.get("speed")
        else:
            raise DataError(f"{p}:{lineno}: unknown record type {kind!r}")
    if run is None:
        raise DataError(f"{p}: not a wildvision predictions file (no 'run' record)")
    if not models:
        raise DataError(f"{p}: no model records")
    return PredictionSet(p, run, list(models.values()), skipped)
