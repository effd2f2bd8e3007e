"""``wildvision export familiarity``: add the open-set gate (:mod:`wildvision.openset`) to a
model package, from the package's own ONNX model (core install: no torch)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, DataError
from ..modelcard_md import write_card
from ..modelpack import load_package
from ..openset import FAMILIARITY_FILE, build_familiarity

if TYPE_CHECKING:
    from ..data.manifest import Manifest

__all__ = ["add_familiarity"]


def _embed(clf: Any, paths: Sequence[str], what: str, show: bool
           ) -> tuple[list[int], np.ndarray, list[tuple[str, ...]]]:
    """Indices of the images that worked, their embeddings, and the groups each is flagged
    for."""
    keep, embs, flagged = [], [], []
    failed = 0
    for i, (r, arrays) in enumerate(clf.iter_arrays(paths, batch_size=32)):
        if r.ok and arrays is not None:
            keep.append(i)
            embs.append(np.array(arrays["embedding"], dtype=np.float32))
            flagged.append(r.flagged_groups)
        else:
            failed += 1
        if show and (i + 1) % 1000 == 0:
            print(f"familiarity: {what} {i + 1}/{len(paths)}", file=sys.stderr)
    if failed:
        print(f"familiarity: {failed} {what} image(s) could not be read and were skipped",
              file=sys.stderr)
    if not embs:
        raise DataError(f"familiarity: no readable {what} image")
    return keep, np.stack(embs), flagged


def add_familiarity(package_dir: str | os.PathLike[str], manifest: str | os.PathLike[str], *,
                    train_split: str = "train", val_split: str = "val", dims: int = 256,
                    quantile: float = 0.01, data_root: str | os.PathLike[str] | None = None,
                    command: str = "", show: bool = True,
                    manifest_rows: Manifest | None = None) -> dict[str, Any]:
    """Write ``familiarity.npz`` into a package and record the gate in its card.

    The reference set is every readable ``train_split`` image of ``manifest`` (the images the
    model was trained on); the threshold is the ``quantile`` of the familiarity of the
    ``val_split`` images whose true group the model flags. Returns the card record.

    ``manifest_rows``: the manifest's rows as a trainer used them (``wildvision train``
    passes its own, whose splits it may have made itself when the manifest has none);
    default: read ``manifest``.
    """
    from ..data.manifest import read_manifest
    from ..predict import Classifier

    package_dir = Path(package_dir)
    pkg = load_package(package_dir)
    m = (manifest_rows if manifest_rows is not None
         else read_manifest(manifest, data_root=data_root))
    train = [r for r in m if r.split == train_split and r.readable]
    val = [r for r in m if r.split == val_split and r.readable]
    if not train or not val:
        raise ConfigError(f"familiarity: {manifest} has {len(train)} {train_split!r} and "
                          f"{len(val)} {val_split!r} rows; both are needed")
    if "embedding" not in pkg.card.outputs:
        raise ConfigError(f"familiarity: model {pkg.card.name} has no 'embedding' output")
    clf = Classifier(pkg, open_set=False)
    _k, x_train, _p = _embed(clf, [os.fspath(m.abs_path(r)) for r in train], train_split, show)
    keep, x_val, flagged = _embed(clf, [os.fspath(m.abs_path(r)) for r in val], val_split,
                                  show)
    # the true group: of the row's fine label in this model, else the manifest's group column
    truth = [pkg.card.label_groups.get(r.fine_label) or pkg.card.label_groups.get(r.label)
             or r.group for r in val]
    positives = {}
    for g in pkg.card.thresholds:
        rows = [j for j, (i, fl) in enumerate(zip(keep, flagged, strict=True))
                if truth[i] == g and g in fl]
        positives[g] = x_val[rows]
    gate, built = build_familiarity(x_train, positives, dims=dims, quantile=quantile)
    record: dict[str, Any] = dict(built)
    gate.save(package_dir / FAMILIARITY_FILE)
    scores = gate.score(x_val)
    benign = [j for j, i in enumerate(keep) if truth[i] == "benign"]
    low = min(gate.thresholds.values())
    record.update({
        "file": FAMILIARITY_FILE,
        "rule": "a group's flag on a photo whose familiarity is below that group's "
                "threshold becomes review",
        "score": "cosine similarity to the nearest training image (1-NN) in a "
                 f"{record['dims']}-d projection of the embedding",
        "manifest": os.fspath(manifest), "manifest_sha256": m.sha256,
        "train_split": train_split, "val_split": val_split,
        "validation_benign_below_lowest_threshold": round(float(np.mean(
            scores[benign] < low)), 6) if benign else None,
        "command": command,
    })
    extra = dict(pkg.card.extra)
    extra["familiarity"] = record
    write_card(package_dir, pkg.card.with_updates(extra=extra))
    load_package(package_dir)  # verify what we wrote
    return record
