"""``wildvision export bank``: add the extension bank (:mod:`wildvision.bank`) to a model
package, from the package's own ONNX model (core install: no torch)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..bank import BANK_FILE, Bank, build_bank, embed_images
from ..errors import ConfigError, DataError, ModelIntegrityError
from ..head import HEAD_FILE, head_weights
from ..modelcard_md import write_card
from ..modelpack import ModelPackage, load_package, sha256_file
from ..openset import FAMILIARITY_FILE, load_familiarity

__all__ = ["DEFAULT_MAX_BYTES", "add_bank", "bank_from_embeddings", "write_bank"]

DEFAULT_MAX_BYTES = 10_000_000


def bank_from_embeddings(pkg: ModelPackage, embeddings: NDArray[np.floating],
                         logits: NDArray[np.floating], labels: Sequence[str],
                         splits: Sequence[str], *, dims: int = 256,
                         max_bytes: int = DEFAULT_MAX_BYTES, seed: int = 0
                         ) -> tuple[Bank, dict[str, Any]]:
    """The bank of ``pkg`` from its outputs on labelled training/validation images.

    Rows whose label the model does not have are left out (counted in the record). The head
    is the package's own (:func:`wildvision.head.head_weights`), checked against ``logits``.
    """
    keep_rows = [i for i, lab in enumerate(labels) if lab in pkg.card.label_groups]
    dropped = len(labels) - len(keep_rows)
    if not keep_rows:
        raise DataError(f"bank: none of the images has a label of {pkg.card.name}")
    e = np.asarray(embeddings, dtype=np.float32)[keep_rows]
    head = head_weights(pkg)  # read from the ONNX graph, or the package's head.npz
    w, b = head.weight, head.bias
    resid = float(np.abs(e @ w.T + b - np.asarray(logits, np.float32)[keep_rows]).max())
    if resid > 1e-2 * max(1.0, float(np.abs(np.asarray(logits)).max())):
        raise ModelIntegrityError(f"bank: the package's head does not reproduce its logits "
                                  f"(largest difference {resid:.3g})")
    keep = None
    if FAMILIARITY_FILE in pkg.card.files:
        keep = load_familiarity(pkg.file(FAMILIARITY_FILE), {}).projection
    bank, record = build_bank(e, [labels[i] for i in keep_rows], [splits[i] for i in keep_rows],
                              pkg.card.labels, (w, b), keep=keep, dims=dims,
                              max_bytes=max_bytes, seed=seed)
    record.update({"head_source": "head.npz" if HEAD_FILE in pkg.card.files else "model.onnx",
                   "left_out_unknown_labels": dropped})
    return bank, record


def write_bank(package_dir: str | os.PathLike[str], bank: Bank, record: dict[str, Any]
               ) -> dict[str, Any]:
    """Write ``bank.npz`` into a package (temp file + rename), record it in the card and
    verify the package."""
    root = Path(package_dir)
    pkg = load_package(root)
    tmp = root / f".{BANK_FILE}.tmp"
    try:
        bank.save(tmp)
        os.replace(tmp, root / BANK_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    rec = {**record, "file_bytes": (root / BANK_FILE).stat().st_size}
    if rec["file_bytes"] > rec.get("max_bytes", DEFAULT_MAX_BYTES):
        print(f"bank: {BANK_FILE} is {rec['file_bytes']:,} bytes, over the budget",
              file=sys.stderr)
    extra = dict(pkg.card.extra)
    extra["bank"] = rec
    write_card(root, pkg.card.with_updates(extra=extra))
    load_package(root)
    return rec


def add_bank(package_dir: str | os.PathLike[str], manifest: str | os.PathLike[str], *,
             train_split: str = "train", val_split: str = "val", dims: int = 256,
             max_bytes: int = DEFAULT_MAX_BYTES, data_root: str | os.PathLike[str] | None = None,
             threads: int | None = None, command: str = "", show: bool = True
             ) -> dict[str, Any]:
    """Embed the training and validation rows of ``manifest`` (the data the model was trained
    on) with the package's own model and write ``bank.npz`` into the package.

    Unreadable images are left out and counted. Returns the card record.
    """
    from ..data.manifest import read_manifest
    from ..predict import Classifier

    pkg = load_package(os.fspath(package_dir))
    m = read_manifest(manifest, data_root=data_root)
    rows = [r for r in m if r.split in (train_split, val_split) and r.readable]
    n_tr = sum(r.split == train_split for r in rows)
    if not n_tr or n_tr == len(rows):
        raise ConfigError(f"bank: {manifest} has {n_tr} {train_split!r} and "
                          f"{len(rows) - n_tr} {val_split!r} rows; both are needed")
    clf = Classifier(pkg, open_set=False, threads=threads)

    def progress(i: int, n: int) -> None:
        if show and (i % 1024 < 16 or i == n):
            print(f"bank: {i}/{n}", file=sys.stderr)

    emb = embed_images(clf, [os.fspath(m.abs_path(r)) for r in rows], progress=progress)
    if emb.failures:
        print(f"bank: {len(emb.failures)} image(s) could not be read and were left out",
              file=sys.stderr)
    used = [rows[int(i)] for i in emb.index]
    bank, record = bank_from_embeddings(
        pkg, emb.embeddings, emb.logits, [r.fine_label or r.label for r in used],
        ["train" if r.split == train_split else "val" for r in used], dims=dims,
        max_bytes=max_bytes)
    record.update({"manifest": os.fspath(manifest), "manifest_sha256": m.sha256,
                   "train_split": train_split, "val_split": val_split,
                   "unreadable": len(emb.failures), "command": command,
                   "model_sha256": sha256_file(pkg.onnx_file())})
    return write_bank(package_dir, bank, record)
