"""An INT8 copy of a package's ONNX model (``model.int8.onnx``), made with ONNX Runtime
quantization, calibrated on real images through the package's own preprocessing, checked
against the fp32 model on held-out images, and recorded in the card.

``Classifier(model, precision="int8")`` / ``wildvision classify --precision int8`` select it.

Static QDQ quantization with per-channel weights is the default: measured with
benchmarks/int8_variants.py (docs/performance.md) it is both faster and far closer to fp32 than
dynamic quantization (which quantizes the activations again at every convolution at run time,
slow for a convnet) and than per-tensor weights (depthwise convolutions need a scale per
channel). ``reduce_range`` (7-bit weights) guards against the int16 saturation of uint8 x int8
products on x86 CPUs without VNNI, as ONNX Runtime recommends.

Needs the ``onnx`` and ``sympy`` packages (``[export]`` extra) besides ONNX Runtime.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, MissingExtraError, WildvisionError
from ..head import package_head
from ..imaging import decode_image
from ..modelcard_md import write_card
from ..modelpack import ModelCard, ModelPackage, load_package
from ..preprocess import preprocess_image
from ..runtime import Backend, HeadBackend, OnnxBackend
from ..scores import group_matrix, softmax

__all__ = [
    "INT8_FILE",
    "METHODS",
    "calibration_images",
    "measure_agreement",
    "quantize_package",
]

INT8_FILE = "model.int8.onnx"
METHODS = ("static", "dynamic")
# Quantized by the static method. Not Pad: the explicit "same" padding of TF-ported nets
# (tf_efficientnet_lite*) lost 10 points of top-1 agreement when quantized.
STATIC_OP_TYPES = ("Conv", "MatMul", "Gemm", "Add", "Clip", "Relu", "GlobalAveragePool",
                   "Flatten")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")


def _quant_modules() -> Any:
    try:
        import onnx  # noqa: F401  (onnxruntime.quantization needs it)
        import sympy  # noqa: F401  (its pre-processing's symbolic shape inference needs it)
        from onnxruntime import quantization
    except ImportError as e:
        raise MissingExtraError("onnx and sympy", "export", "INT8 quantization") from e
    return quantization


def _evenly_spaced(items: Sequence[str], limit: int | None) -> list[str]:
    """``limit`` items spread over the whole list (a manifest is sorted by source and label,
    so its first rows would all be one class)."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    idx = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in idx]


def calibration_images(spec: str | os.PathLike[str], *, split: str | None = "val",
                       limit: int | None = 256,
                       data_root: str | os.PathLike[str] | None = None) -> list[str]:
    """Image paths for calibration from a manifest CSV or a folder.

    Args:
        spec: a manifest (``.csv``; its ``split`` rows that were readable) or a folder
            (searched recursively for image files, sorted).
        split: the manifest split to use (``None``: all rows). Ignored for folders.
        limit: at most this many images, spread evenly over the list; ``None``: all.
        data_root: the manifest's data root (see :func:`wildvision.data.manifest.read_manifest`).

    Raises:
        ConfigError: ``spec`` is neither, or no image was found.
    """
    path = Path(spec)
    if path.is_dir():
        files = sorted(
            os.fspath(p) for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        where = f"folder {path}"
    elif path.is_file() and path.suffix.lower() == ".csv":
        from ..data.manifest import read_manifest

        manifest = read_manifest(path, data_root=data_root)
        if split:
            manifest = manifest.split(split)
        files = [os.fspath(manifest.abs_path(r)) for r in manifest if not r.error]
        where = f"manifest {path}" + (f" (split {split!r})" if split else "")
    else:
        raise ConfigError(f"{spec}: calibration images must be a manifest .csv or a folder")
    if not files:
        raise ConfigError(f"no calibration images in {where}")
    return _evenly_spaced(files, limit)


def _load_batches(card: ModelCard, images: Sequence[str], batch_size: int,
                  failures: list[str]) -> Iterator[np.ndarray]:
    """Preprocessed float32 batches, exactly as inference makes them (JPEG draft included).
    Unreadable images are skipped and their names appended to ``failures``."""
    cfg = card.preprocess
    rows: list[np.ndarray] = []
    for src in images:
        try:
            img = decode_image(src, draft_size=cfg.draft_size).image
        except WildvisionError:
            failures.append(os.fspath(src))
            continue
        rows.append(preprocess_image(img, cfg))
        if len(rows) == batch_size:
            yield np.stack(rows)
            rows = []
    if rows:
        yield np.stack(rows)


def _with_head(pkg: ModelPackage, backend: OnnxBackend) -> Backend:
    """The backend with the package's numpy head (an extended package) applied, as in
    inference, so the agreement is measured on the labels the package outputs."""
    head = package_head(pkg)
    return HeadBackend(backend, head) if head is not None else backend


def _agreement(card: ModelCard, fp32: Backend, int8: Backend, images: Sequence[str],
               batch_size: int) -> dict[str, Any]:
    failures: list[str] = []
    groups = card.groups
    gmat = group_matrix(card.labels, card.label_groups, groups)
    n = top1 = top_group = 0
    max_diff = sum_diff = max_gdiff = 0.0
    for batch in _load_batches(card, images, batch_size, failures):
        pa = softmax(fp32.run(batch)["logits"], card.temperature)
        pb = softmax(int8.run(batch)["logits"], card.temperature)
        ga, gb = pa @ gmat, pb @ gmat
        n += len(batch)
        top1 += int((pa.argmax(1) == pb.argmax(1)).sum())
        top_group += int((ga.argmax(1) == gb.argmax(1)).sum())
        diff = np.abs(pa - pb)
        max_diff = max(max_diff, float(diff.max()))
        sum_diff += float(diff.max(axis=1).sum())
        max_gdiff = max(max_gdiff, float(np.abs(ga - gb).max()))
    if n == 0:
        raise ConfigError("none of the agreement images could be read")
    return {
        "images": n,
        "unreadable": len(failures),
        "top1_agreement": round(top1 / n, 6),
        "top_group_agreement": round(top_group / n, 6),
        "max_prob_diff": round(max_diff, 6),
        "mean_max_prob_diff": round(sum_diff / n, 6),
        "max_group_prob_diff": round(max_gdiff, 6),
    }


def measure_agreement(package: str | os.PathLike[str] | ModelPackage,
                      images: Sequence[str | os.PathLike[str]], *,
                      batch_size: int = 32) -> dict[str, Any]:
    """Compare a package's INT8 model with its fp32 model on ``images``.

    Both models get the same preprocessed batches (the package's preprocessing, as in
    inference), so the numbers measure quantization alone.

    Args:
        package: a package folder (or loaded package) holding ``model.int8.onnx``.
        images: image paths (unreadable ones are skipped and counted).
        batch_size: images per run.

    Returns:
        ``images`` (compared), ``unreadable``, ``top1_agreement`` (same top fine label),
        ``top_group_agreement``, ``max_prob_diff`` (largest absolute difference of any
        calibrated label probability), ``mean_max_prob_diff`` (its mean over images) and
        ``max_group_prob_diff``.

    Raises:
        ModelIntegrityError: no ``model.int8.onnx`` in the package.
        ConfigError: no image could be read.

    Example:
        >>> measure_agreement("my-model", ["a.jpg", "b.jpg"])["top1_agreement"]  # doctest: +SKIP
        1.0
    """
    pkg = package if isinstance(package, ModelPackage) else load_package(Path(package))
    fp32 = _with_head(pkg, OnnxBackend(pkg.onnx_file("fp32")))
    int8 = _with_head(pkg, OnnxBackend(pkg.onnx_file("int8")))
    return _agreement(pkg.card, fp32, int8, [os.fspath(p) for p in images], batch_size)


def _split_holdout(images: list[str], holdout: float) -> tuple[list[str], list[str]]:
    """Every k-th image is held out for the agreement check, the rest calibrate."""
    if not 0.0 <= holdout < 1.0:
        raise ConfigError(f"holdout must be in [0, 1), got {holdout}")
    if holdout == 0.0 or len(images) < 4:
        return images, images
    step = max(2, round(1.0 / holdout))
    check = images[::step]
    calib = [im for i, im in enumerate(images) if i % step]
    return calib, check


class _Reader:
    """ONNX Runtime CalibrationDataReader over preprocessed image batches."""

    def __init__(self, card: ModelCard, input_name: str, images: Sequence[str],
                 batch_size: int) -> None:
        self.failures: list[str] = []
        self.count = 0
        self._batches = _load_batches(card, images, batch_size, self.failures)
        self._input = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        self.count += len(batch)
        return {self._input: batch}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:  # newer ORT iterates readers
        while (item := self.get_next()) is not None:
            yield item


def _float_nodes(model_path: Path, first_convs: int = 3) -> list[str]:
    """Nodes the static method leaves in float: the first ``first_convs`` convolutions (the
    stem and the first block, at full resolution, where 8-bit errors start and then grow
    through the network) and the classifier layer writing ``logits``. About 5% of
    EfficientNet-Lite0's compute; on ImageNet-1k they lift top-1 agreement with fp32 from
    0.80 to 0.87 (benchmarks/int8_variants.py, docs/performance.md)."""
    import onnx

    graph = onnx.load(os.fspath(model_path), load_external_data=False).graph
    keep = [n.name for n in graph.node if n.op_type == "Conv"][:first_convs]
    producers = {o: n for n in graph.node for o in n.output}
    node = producers.get("logits")
    while node is not None and node.op_type not in ("Gemm", "MatMul"):
        node = producers.get(node.input[0]) if node.input else None
    if node is not None:
        keep.append(node.name)
    return [k for k in keep if k]


def quantize_package(
    package_dir: str | os.PathLike[str],
    calib_images: Sequence[str | os.PathLike[str]],
    *,
    method: str = "static",
    per_channel: bool = True,
    reduce_range: bool = True,
    keep_ends_fp32: bool = True,
    holdout: float = 0.2,
    batch_size: int = 16,
    command: str | None = None,
) -> Path:
    """Write ``model.int8.onnx`` into a package and record it in ``card.json``.

    The images go through the package's own preprocessing (JPEG draft decoding included), as
    at inference. A fraction ``holdout`` of them is not used for calibration but to measure
    the INT8 model against fp32 (:func:`measure_agreement`); the card gets the file's sha256
    and ``extra["int8"]`` with the method, the calibration image count and that agreement.

    Args:
        package_dir: a model package folder (its hashes are verified first).
        calib_images: image paths, ideally validation images of the model's domain (100-500).
        method: ``static`` (QDQ, activations calibrated on the images; the default, faster
            and closer to fp32 for convnets) or ``dynamic`` (weights only, activation ranges
            computed at run time; needs no calibration but is slow for convolutions).
        per_channel: one weight scale per output channel (static): needed by depthwise convs.
        reduce_range: 7-bit weights, avoiding int16 saturation on x86 CPUs without VNNI.
        keep_ends_fp32: leave the first three convolutions and the classifier layer in float
            (static method): a few percent of the compute, several points of agreement.
        holdout: fraction of ``calib_images`` kept out of calibration for the agreement check.
        batch_size: images per calibration run.
        command: the command line that made it, stored in the record.

    Returns:
        The path of ``model.int8.onnx``.

    Raises:
        ConfigError: unknown method, no images, or no image readable.
        MissingExtraError: the ``onnx`` package is not installed.
        ModelIntegrityError: the package is not valid.

    Example:
        >>> quantize_package("my-model", calibration_images("data/manifest.csv"))  # doctest: +SKIP
        PosixPath('my-model/model.int8.onnx')
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
    images = [os.fspath(p) for p in calib_images]
    if not images:
        raise ConfigError("quantize_package needs at least one calibration image")
    q = _quant_modules()
    root = Path(package_dir)
    pkg = load_package(root)
    fp32_path = pkg.onnx_file("fp32")
    calib, check = _split_holdout(images, holdout)
    t0 = time.perf_counter()
    record: dict[str, Any] = {"method": method}
    with tempfile.TemporaryDirectory(prefix="wv-int8-") as tmp:
        pre = Path(tmp) / "model.pre.onnx"
        out = Path(tmp) / INT8_FILE
        # Shape inference + graph optimisation first, as ONNX Runtime recommends: folded
        # BatchNorms and fused Conv+Clip (ReLU6) quantize far better than the raw export.
        q.quant_pre_process(os.fspath(fp32_path), os.fspath(pre))
        if method == "static":
            input_name = OnnxBackend(pre).input_name
            reader = _Reader(pkg.card, input_name, calib, batch_size)
            keep_fp32 = _float_nodes(pre) if keep_ends_fp32 else []
            q.quantize_static(
                os.fspath(pre), os.fspath(out), reader,
                quant_format=q.QuantFormat.QDQ,
                op_types_to_quantize=list(STATIC_OP_TYPES),
                nodes_to_exclude=keep_fp32,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=q.QuantType.QUInt8,
                weight_type=q.QuantType.QInt8,
                calibrate_method=q.CalibrationMethod.MinMax,
                extra_options={"CalibMaxIntermediateOutputs": 4},
            )
            if reader.count == 0:
                raise ConfigError("none of the calibration images could be read")
            record.update({
                "format": "QDQ",
                "activations": "uint8 (asymmetric, calibrated min/max)",
                "weights": "int8" + (" per-channel" if per_channel else " per-tensor")
                + (", 7-bit range" if reduce_range else ""),
                "calibration_images": reader.count,
                "calibration_unreadable": len(reader.failures),
                "op_types": list(STATIC_OP_TYPES),
                "kept_fp32": keep_fp32,
            })
        else:
            q.quantize_dynamic(
                os.fspath(pre), os.fspath(out),
                per_channel=per_channel,
                reduce_range=reduce_range,
                weight_type=q.QuantType.QInt8,
            )
            record.update({
                "format": "dynamic (QOperator)",
                "activations": "uint8, range computed per run",
                "weights": "int8" + (" per-channel" if per_channel else " per-tensor"),
                "calibration_images": 0,
            })
        fp32_backend = _with_head(pkg, OnnxBackend(fp32_path))
        # fails here (ModelIntegrityError) if ORT cannot load it
        int8_backend = _with_head(pkg, OnnxBackend(out))
        agreement = _agreement(pkg.card, fp32_backend, int8_backend, check, batch_size)
        agreement["held_out"] = check is not calib
        staged = root / (INT8_FILE + ".partial")
        shutil.copyfile(out, staged)
        os.replace(staged, root / INT8_FILE)
    import onnxruntime

    record.update({
        "agreement_vs_fp32": agreement,
        "onnxruntime": onnxruntime.__version__,
        "seconds": round(time.perf_counter() - t0, 1),
    })
    if command:
        record["command"] = command
    extra = dict(pkg.card.extra)
    extra["int8"] = record
    write_card(root, pkg.card.with_updates(extra=extra))
    return root / INT8_FILE
