"""The linear head of a model package, as numpy arrays: ``logits = embedding @ weight.T + bias``.

Explanations (:mod:`wildvision.explain`) need the head's weights, and ONNX Runtime does not
expose a graph's initializers. The core must not depend on the ``onnx`` package either, so this
module reads the few protobuf fields it needs straight from the ``.onnx`` file: the node that
makes the ``logits`` output (``Gemm``, or ``MatMul`` + ``Add``) and the tensors it reads
(initializers or ``Constant`` nodes, fp32/fp16/fp64, or int8/uint8 behind a
``DequantizeLinear``). The head must read the model's own ``embedding`` output, so the map
from ``embedding`` to ``logits`` is exactly the returned affine map.

An *extended* package (``wildvision extend``) keeps its base model's ONNX files unchanged and
adds ``head.npz``: its labels' logits are ``embedding @ weight.T + bias`` over the extended
label list (two plain arrays, ``weight`` (C x D) and ``bias`` (C), read with
``allow_pickle=False``). :func:`wildvision.runtime.create_backend` applies it, so every path
that runs a package (``Classifier`` and with it the CLI, the service, Ray and the benchmark;
fp32 and int8) gets the head's logits under ``logits``; the graph's own ``logits`` output (the
base model's labels) is not used.

:func:`head_weights` is the one place every caller gets a package's head from.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelIntegrityError
from .modelpack import ModelPackage

__all__ = ["HEAD_FILE", "LinearHead", "head_weights", "load_head", "package_head",
           "read_onnx_head"]

HEAD_FILE = "head.npz"


@dataclass(frozen=True)
class LinearHead:
    """``logits = embedding @ weight.T + bias``.

    Attributes:
        weight: float32 ``(labels, embedding_dim)``, rows in the order of the card's labels.
        bias: float32 ``(labels,)``.
    """

    weight: np.ndarray
    bias: np.ndarray

    def logits(self, embedding: np.ndarray) -> np.ndarray:
        """The head applied to ``(N, embedding_dim)`` embeddings."""
        out: np.ndarray = np.asarray(embedding, np.float32) @ self.weight.T + self.bias
        return out

    @property
    def width(self) -> int:
        """Width of the embedding the head reads."""
        return int(self.weight.shape[1])

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``head.npz`` (plain arrays)."""
        with open(path, "wb") as f:
            np.savez(f, weight=np.asarray(self.weight, np.float32),
                     bias=np.asarray(self.bias, np.float32))


def load_head(path: str | os.PathLike[str], n_labels: int | None = None) -> LinearHead:
    """Read ``head.npz`` (plain arrays only).

    Raises:
        ModelIntegrityError: not a head file, arrays that do not fit together or are not
            finite, or a label count other than ``n_labels``.
    """
    try:
        with np.load(path, allow_pickle=False) as d:
            weight = np.ascontiguousarray(d["weight"], np.float32)
            bias = np.ascontiguousarray(d["bias"], np.float32)
    except (OSError, KeyError, ValueError) as e:
        raise ModelIntegrityError(f"{path}: not a head file ({e})") from e
    if (weight.ndim != 2 or bias.shape != (weight.shape[0],)
            or not np.isfinite(weight).all() or not np.isfinite(bias).all()):
        raise ModelIntegrityError(f"{path}: weight {weight.shape} and bias {bias.shape} do not "
                                  "fit together (or are not finite)")
    if n_labels is not None and weight.shape[0] != n_labels:
        raise ModelIntegrityError(f"{path}: the head has {weight.shape[0]} labels, the card "
                                  f"{n_labels}")
    return LinearHead(weight=weight, bias=bias)


def package_head(package: ModelPackage) -> LinearHead | None:
    """The numpy head (``head.npz``) of an extended package; ``None`` when the ONNX graph's
    own ``logits`` are the model's."""
    if HEAD_FILE not in package.card.files:
        return None
    return load_head(package.file(HEAD_FILE), len(package.card.labels))


_HEADS: dict[tuple[str, int, int, str], LinearHead] = {}
_HEADS_LOCK = threading.Lock()


def head_weights(package: ModelPackage, precision: str = "fp32") -> LinearHead:
    """The head of ``package`` (its ``precision`` file), one row per card label.

    Every path that needs a package's head weights (explanations today) calls this function:
    a package whose head lives elsewhere than in its ONNX graph is handled here.

    Raises:
        ModelIntegrityError: the graph has no linear head reading the ``embedding`` output, or
            its shape does not match the card's labels.
        ConfigError: an unknown precision.
    """
    path = package.onnx_file(precision)
    if HEAD_FILE in package.card.files:  # an extended package: the head is head.npz
        path = package.file(HEAD_FILE)
    st = path.stat()
    key = (os.fspath(path), st.st_mtime_ns, st.st_size, precision)
    with _HEADS_LOCK:
        head = _HEADS.get(key)
    if head is None:
        head = load_head(path) if path.name == HEAD_FILE else read_onnx_head(path)
        with _HEADS_LOCK:
            if len(_HEADS) >= 8:
                _HEADS.pop(next(iter(_HEADS)))
            _HEADS[key] = head
    n = len(package.card.labels)
    if head.weight.shape[0] != n:
        raise ModelIntegrityError(
            f"{path}: the head has {head.weight.shape[0]} outputs, the card lists {n} labels"
        )
    return head


# -- a minimal protobuf reader (wire format only) ----------------------------------------------
# ONNX field numbers (onnx/onnx.proto3).
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER = 1, 5
_NODE_INPUT, _NODE_OUTPUT, _NODE_OP, _NODE_ATTR = 1, 2, 4, 5
_ATTR_NAME, _ATTR_F, _ATTR_I, _ATTR_T = 1, 2, 3, 5
_T_DIMS, _T_TYPE, _T_FLOAT, _T_INT32, _T_INT64 = 1, 2, 4, 5, 7
_T_NAME, _T_RAW, _T_DOUBLE, _T_LOCATION = 8, 9, 10, 14
# TensorProto.DataType -> numpy dtype.
_DTYPES: dict[int, np.dtype[np.generic]] = {
    1: np.dtype("<f4"), 2: np.dtype("u1"), 3: np.dtype("i1"), 6: np.dtype("<i4"),
    7: np.dtype("<i8"), 10: np.dtype("<f2"), 11: np.dtype("<f8"),
}

_Field = tuple[int, int, "int | memoryview"]


class _ProtoError(ValueError):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise _ProtoError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _ProtoError("varint too long")


def _fields(buf: memoryview) -> Iterator[_Field]:
    """(field number, wire type, value) of each field of one message; length-delimited values
    are zero-copy views."""
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | memoryview
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise _ProtoError("truncated field")
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise _ProtoError(f"unsupported wire type {wire}")
        if pos > end:
            raise _ProtoError("truncated field")
        yield number, wire, value


def _str(value: int | memoryview) -> str:
    if not isinstance(value, memoryview):
        raise _ProtoError("expected a string field")
    return bytes(value).decode("utf-8")


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


@dataclass
class _Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    ints: dict[str, int]
    floats: dict[str, float]
    tensors: dict[str, memoryview]


def _parse_node(buf: memoryview) -> _Node:
    node = _Node("", [], [], {}, {}, {})
    for number, _, value in _fields(buf):
        if number == _NODE_INPUT:
            node.inputs.append(_str(value))
        elif number == _NODE_OUTPUT:
            node.outputs.append(_str(value))
        elif number == _NODE_OP:
            node.op = _str(value)
        elif number == _NODE_ATTR and isinstance(value, memoryview):
            name = ""
            attr: dict[int, int | memoryview] = {}
            for an, _, av in _fields(value):
                if an == _ATTR_NAME:
                    name = _str(av)
                elif an in (_ATTR_F, _ATTR_I, _ATTR_T):
                    attr[an] = av
            if _ATTR_I in attr and isinstance(attr[_ATTR_I], int):
                node.ints[name] = _signed(attr[_ATTR_I])  # type: ignore[arg-type]
            if _ATTR_F in attr and isinstance(attr[_ATTR_F], int):
                node.floats[name] = float(
                    np.frombuffer(attr[_ATTR_F].to_bytes(4, "little"), "<f4")[0]  # type: ignore[union-attr]
                )
            if _ATTR_T in attr and isinstance(attr[_ATTR_T], memoryview):
                node.tensors[name] = attr[_ATTR_T]  # type: ignore[assignment]
    return node


def _tensor_name(buf: memoryview) -> str:
    for number, _, value in _fields(buf):
        if number == _T_NAME:
            return _str(value)
    return ""


def _parse_tensor(buf: memoryview) -> np.ndarray:
    dims: list[int] = []
    dtype_code = 0
    raw: memoryview | None = None
    packed: dict[int, list[memoryview]] = {}
    for number, wire, value in _fields(buf):
        if number == _T_DIMS:
            if isinstance(value, memoryview):  # packed
                pos = 0
                while pos < len(value):
                    d, pos = _varint(value, pos)
                    dims.append(_signed(d))
            else:
                dims.append(_signed(value))
        elif number == _T_TYPE and isinstance(value, int):
            dtype_code = value
        elif number == _T_RAW and isinstance(value, memoryview):
            raw = value
        elif number == _T_LOCATION and value == 1:
            raise _ProtoError("weights stored outside the .onnx file are not supported")
        elif number in (_T_FLOAT, _T_INT32, _T_INT64, _T_DOUBLE):
            if not isinstance(value, memoryview):
                # An unpacked repeated field: one value per field.
                size = 4 if wire == 5 else 8
                value = memoryview(value.to_bytes(size, "little"))
            packed.setdefault(number, []).append(value)
    if dtype_code not in _DTYPES:
        raise _ProtoError(f"unsupported tensor data type {dtype_code}")
    dtype = _DTYPES[dtype_code]
    if raw is not None:
        arr = np.frombuffer(bytes(raw), dtype=dtype)
    elif _T_FLOAT in packed and dtype_code in (1, 10):
        arr = np.frombuffer(b"".join(bytes(v) for v in packed[_T_FLOAT]), "<f4").astype(dtype)
    elif _T_DOUBLE in packed:
        arr = np.frombuffer(b"".join(bytes(v) for v in packed[_T_DOUBLE]), "<f8")
    elif _T_INT32 in packed or _T_INT64 in packed:
        vals: list[int] = []
        for v in packed.get(_T_INT32, []) + packed.get(_T_INT64, []):
            pos = 0
            while pos < len(v):
                x, pos = _varint(v, pos)
                vals.append(_signed(x))
        arr = np.asarray(vals, dtype=np.int64).astype(dtype)
    else:
        arr = np.zeros(0, dtype=dtype)
    count = int(np.prod(dims)) if dims else 1
    if arr.size != count:
        raise _ProtoError(f"tensor holds {arr.size} values for shape {dims}")
    return arr.reshape(dims)


def read_onnx_head(path: str | os.PathLike[str]) -> LinearHead:
    """Read the linear head (the node making ``logits`` from ``embedding``) of an ONNX file.

    Raises:
        ModelIntegrityError: unreadable file, or no such head.
    """
    path = Path(path)
    try:
        data = memoryview(path.read_bytes())
    except OSError as e:
        raise ModelIntegrityError(f"{path}: cannot read ({e})") from e
    try:
        return _read_head(data)
    except _ProtoError as e:
        raise ModelIntegrityError(f"{path}: cannot read the model's head ({e})") from e
    except ModelIntegrityError as e:
        raise ModelIntegrityError(f"{path}: {e}") from e


def _read_head(data: memoryview) -> LinearHead:
    graph = next((v for n, _, v in _fields(data) if n == _MODEL_GRAPH), None)
    if not isinstance(graph, memoryview):
        raise _ProtoError("no graph")
    nodes: list[_Node] = []
    init_bufs: dict[str, memoryview] = {}
    for number, _, value in _fields(graph):
        if number == _GRAPH_NODE and isinstance(value, memoryview):
            nodes.append(_parse_node(value))
        elif number == _GRAPH_INITIALIZER and isinstance(value, memoryview):
            init_bufs[_tensor_name(value)] = value
    producer = {out: node for node in nodes for out in node.outputs}

    def const(name: str, depth: int = 0) -> np.ndarray:
        """A constant tensor: an initializer, a Constant node or a dequantized constant."""
        if name in init_bufs:
            return _parse_tensor(init_bufs[name])
        node = producer.get(name)
        if node is not None and depth < 4:
            if node.op == "Constant" and "value" in node.tensors:
                return _parse_tensor(node.tensors["value"])
            if node.op in ("Identity", "Cast") and node.inputs:
                return const(node.inputs[0], depth + 1).astype(np.float32)
            if node.op == "DequantizeLinear":
                q = const(node.inputs[0], depth + 1).astype(np.float32)
                scale = const(node.inputs[1], depth + 1).astype(np.float32)
                zero = (const(node.inputs[2], depth + 1).astype(np.float32)
                        if len(node.inputs) > 2 and node.inputs[2] else np.zeros_like(scale))
                if scale.ndim == 1 and scale.size > 1:  # per-axis
                    shape = [1] * q.ndim
                    axis = node.ints.get("axis", 1) % q.ndim
                    shape[axis] = scale.size
                    scale, zero = scale.reshape(shape), zero.reshape(shape)
                return (q - zero) * scale
        raise ModelIntegrityError(f"the head reads {name!r}, which is not a constant tensor")

    node = producer.get("logits")
    if node is None:
        raise ModelIntegrityError("no node makes the 'logits' output")
    bias: np.ndarray | None = None
    if node.op == "Add":  # MatMul + Add
        mm = next((producer.get(i) for i in node.inputs
                   if producer.get(i) is not None and producer[i].op == "MatMul"), None)
        if mm is None:
            raise ModelIntegrityError("'logits' is an Add without a MatMul input")
        other = next(i for i in node.inputs if producer.get(i) is not mm)
        bias = const(other)
        node = mm
        a_name, weight = node.inputs[0], const(node.inputs[1]).T
    elif node.op == "MatMul":
        a_name, weight = node.inputs[0], const(node.inputs[1]).T
    elif node.op == "Gemm":
        if node.ints.get("transA", 0):
            raise ModelIntegrityError("the head Gemm transposes its input")
        b = const(node.inputs[1])
        weight = (b if node.ints.get("transB", 0) else b.T) * node.floats.get("alpha", 1.0)
        a_name = node.inputs[0]
        if len(node.inputs) > 2 and node.inputs[2]:
            bias = const(node.inputs[2]) * node.floats.get("beta", 1.0)
    else:
        raise ModelIntegrityError(f"'logits' is made by a {node.op} node, not a linear head")
    if a_name != "embedding":
        raise ModelIntegrityError(
            f"the head reads {a_name!r}, not the 'embedding' output: cannot explain this model"
        )
    weight = np.ascontiguousarray(weight, np.float32)
    if weight.ndim != 2:
        raise ModelIntegrityError(f"the head weight has shape {weight.shape}, expected 2-D")
    b_arr = (np.zeros(weight.shape[0], np.float32) if bias is None
             else np.broadcast_to(np.asarray(bias, np.float32).reshape(-1), (weight.shape[0],)))
    return LinearHead(weight=weight, bias=np.ascontiguousarray(b_arr, np.float32))
