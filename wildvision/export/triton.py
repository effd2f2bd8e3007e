"""A Triton Inference Server model repository for a wildvision model (ONNX Runtime backend).

Layout written by :func:`export_triton`::

    <out>/<model_name>/config.pbtxt   platform onnxruntime_onnx, dynamic batching; tensor
                                      names, dims and data types read from the ONNX graph
    <out>/<model_name>/1/model.onnx   the package's model (fp32 or int8), unchanged
    <out>/<model_name>/labels.txt     fine labels in logit order (Triton's classification
                                      extension reports them with the top-k logits)
    <out>/<model_name>/card.json      the model card: preprocessing, temperature, groups,
                                      thresholds

Triton returns the raw ``logits``: preprocessing (``card.preprocess``), temperature scaling,
group sums and thresholds are the client's job; docs/deployment.md gives the formulas.

Needs the ``onnx`` package (``[export]`` extra) to read the graph.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MissingExtraError, ModelIntegrityError
from ..head import package_head
from ..modelpack import ModelPackage
from ..registry import load_model

__all__ = ["TensorSpec", "export_triton", "onnx_io", "render_config"]

# ONNX TensorProto element types -> Triton data types.
_ONNX_TO_TRITON = {
    1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
    6: "TYPE_INT32", 7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16",
    11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16",
}
_NAME_OK = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as Triton sees it.

    Attributes:
        name: the tensor name in the ONNX graph.
        data_type: Triton data type (``TYPE_FP32`` ...).
        dims: the shape without the batch dimension; ``-1`` for a variable size.
    """

    name: str
    data_type: str
    dims: tuple[int, ...]


def _tensor_spec(value_info: Any, where: str) -> TensorSpec:
    ttype = value_info.type.tensor_type
    elem = int(ttype.elem_type)
    if elem not in _ONNX_TO_TRITON:
        raise ModelIntegrityError(f"{where} {value_info.name!r}: ONNX element type {elem} has "
                                  "no Triton equivalent")
    dims = []
    for d in ttype.shape.dim:
        dims.append(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else -1)
    if not dims:
        raise ModelIntegrityError(f"{where} {value_info.name!r} has no shape in the ONNX graph")
    if dims[0] != -1:
        raise ModelIntegrityError(
            f"{where} {value_info.name!r} has a fixed batch dimension ({dims[0]}); Triton's "
            "dynamic batching needs a variable one (re-export with a dynamic batch axis)"
        )
    return TensorSpec(value_info.name, _ONNX_TO_TRITON[elem], tuple(dims[1:]))


def onnx_io(onnx_path: str | os.PathLike[str]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The inputs and outputs of an ONNX graph, batch dimension removed.

    Args:
        onnx_path: the ``.onnx`` file.

    Returns:
        ``(inputs, outputs)``; inputs exclude initializers (weights).

    Raises:
        MissingExtraError: the ``onnx`` package is not installed.
        ModelIntegrityError: unreadable graph, or a tensor without a dynamic batch axis.
    """
    try:
        import onnx
    except ImportError as e:
        raise MissingExtraError("onnx", "export", "the Triton export") from e
    try:
        model = onnx.load(os.fspath(onnx_path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError & co.
        raise ModelIntegrityError(f"{onnx_path}: not a readable ONNX model ({e})") from e
    weights = {init.name for init in model.graph.initializer}
    inputs = [_tensor_spec(v, "input") for v in model.graph.input if v.name not in weights]
    outputs = [_tensor_spec(v, "output") for v in model.graph.output]
    if len(inputs) != 1:
        raise ModelIntegrityError(f"{onnx_path}: expected one image input, found "
                                  f"{[t.name for t in inputs]}")
    return inputs, outputs


def _tensor_block(spec: TensorSpec, extra: str = "") -> str:
    dims = ", ".join(str(d) for d in spec.dims)
    return (f"  {{\n    name: \"{spec.name}\"\n    data_type: {spec.data_type}\n"
            f"    dims: [ {dims} ]\n{extra}  }}")


def render_config(name: str, inputs: list[TensorSpec], outputs: list[TensorSpec], *,
                  max_batch_size: int, instance_count: int, labels_output: str | None = None,
                  queue_delay_us: int = 2000) -> str:
    """The ``config.pbtxt`` text (protobuf text format of Triton's ModelConfig).

    Args:
        name: the Triton model name (its folder name).
        inputs, outputs: from :func:`onnx_io`.
        max_batch_size: the largest batch Triton forms.
        instance_count: model instances (kind left to Triton: GPU if present, else CPU).
        labels_output: the output that ``labels.txt`` labels (the logits).
        queue_delay_us: how long dynamic batching waits to fill a batch.
    """
    ins = ",\n".join(
        _tensor_block(t, "    format: FORMAT_NCHW\n" if len(t.dims) == 3 else "")
        for t in inputs)
    outs = ",\n".join(
        _tensor_block(t, '    label_filename: "labels.txt"\n' if t.name == labels_output else "")
        for t in outputs)
    return (
        "# Generated by `wildvision export triton` from the ONNX graph; see card.json for the\n"
        "# preprocessing, temperature and thresholds that must be applied client-side.\n"
        f"name: \"{name}\"\n"
        "platform: \"onnxruntime_onnx\"\n"
        f"max_batch_size: {max_batch_size}\n"
        f"input [\n{ins}\n]\n"
        f"output [\n{outs}\n]\n"
        "dynamic_batching {\n"
        f"  max_queue_delay_microseconds: {queue_delay_us}\n"
        "}\n"
        "instance_group [\n"
        "  {\n"
        f"    count: {instance_count}\n"
        "  }\n"
        "]\n"
    )


def export_triton(
    model_spec: str | os.PathLike[str] | ModelPackage | None,
    out_dir: str | os.PathLike[str],
    *,
    max_batch_size: int = 32,
    precision: str = "fp32",
    instance_count: int = 1,
) -> Path:
    """Write a Triton model repository entry for a wildvision model.

    Args:
        model_spec: model name, package folder, ``hf://org/name`` or package (``None``: the
            default model).
        out_dir: the model repository folder (created if needed); the model goes into
            ``out_dir/<model name>/``, replacing an earlier export there.
        max_batch_size: largest batch for Triton's dynamic batcher (>= 1).
        precision: ``fp32`` or ``int8`` (the package's ``model.int8.onnx``).
        instance_count: model instances Triton runs.

    Returns:
        The model folder ``out_dir/<model name>``.

    Raises:
        ConfigError: bad options.
        UnknownModelError, ModelIntegrityError: the model cannot be resolved, verified or read.
        MissingExtraError: the ``onnx`` package is missing.

    Example:
        >>> export_triton("wildvision-base", "model_repository")  # doctest: +SKIP
        PosixPath('model_repository/wildvision-base')
    """
    if max_batch_size < 1:
        raise ConfigError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if instance_count < 1:
        raise ConfigError(f"instance_count must be >= 1, got {instance_count}")
    package = load_model(model_spec)
    card = package.card
    if package_head(package) is not None:
        raise ConfigError(
            f"model {card.name} is an extended package: its labels come from a numpy head "
            "(head.npz) on the ONNX model's embedding, which Triton does not run; serve it "
            "with `wildvision serve` (or apply head.npz to Triton's 'embedding' output)")
    if not _NAME_OK.match(card.name):
        raise ConfigError(f"model name {card.name!r} is not usable as a Triton model name")
    onnx_path = package.onnx_file(precision)
    inputs, outputs = onnx_io(onnx_path)
    names = {t.name for t in outputs}
    if "logits" not in names:
        raise ModelIntegrityError(f"{onnx_path}: the graph has no 'logits' output "
                                  f"(outputs: {sorted(names)})")
    logits = next(t for t in outputs if t.name == "logits")
    if logits.dims != (len(card.labels),):
        raise ModelIntegrityError(
            f"{onnx_path}: logits have dims {list(logits.dims)} but the card lists "
            f"{len(card.labels)} labels"
        )

    model_dir = Path(out_dir) / card.name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    (model_dir / "1").mkdir(parents=True)
    shutil.copyfile(onnx_path, model_dir / "1" / "model.onnx")
    (model_dir / "labels.txt").write_text("\n".join(card.labels) + "\n", encoding="utf-8")
    card_file = package.path / "card.json"
    if card_file.is_file():
        shutil.copyfile(card_file, model_dir / "card.json")
    else:  # a package built in memory
        (model_dir / "card.json").write_text(json.dumps(card.to_dict(), indent=2) + "\n",
                                             encoding="utf-8")
    (model_dir / "config.pbtxt").write_text(
        render_config(card.name, inputs, outputs, max_batch_size=max_batch_size,
                      instance_count=instance_count, labels_output="logits"),
        encoding="utf-8",
    )
    return model_dir
