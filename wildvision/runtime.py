"""Inference backends behind one interface: ONNX Runtime (default, core install), OpenVINO
(``[openvino]`` extra) and torch (``[torch]`` extra). All take the float32 NCHW batch made by
:mod:`wildvision.preprocess` and return a dict of named float32 outputs (``logits``,
``embedding``, maybe ``features``).

The backend is always the one asked for: none of them falls back to another engine or another
precision when it cannot run what was asked (a typed error instead).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from .errors import ConfigError, MissingExtraError, ModelIntegrityError
from .head import LinearHead, package_head
from .modelpack import ModelPackage

__all__ = ["BACKENDS", "PRECISIONS", "Backend", "HeadBackend", "OnnxBackend", "create_backend"]

BACKENDS = ("onnx", "openvino", "torch")
PRECISIONS = ("fp32", "bf16", "int8")


class Backend(Protocol):
    """What every backend does."""

    name: str
    output_names: tuple[str, ...]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """float32 NxCxHxW -> named outputs, each with N rows."""
        ...


class OnnxBackend:
    """ONNX Runtime on CPU (or any execution provider given).

    Args:
        path: the ``.onnx`` file, or its bytes. Loaded from bytes, ONNX Runtime never reads
            external data from disk: only the files in ``external_data`` are available.
        external_data: ONNX external-data file name (as the model refers to it) -> its bytes.
        threads: intra-op threads (``None``: the runtime decides).
        providers: execution providers (default: CPU).
    """

    name = "onnx"

    def __init__(
        self,
        path: str | os.PathLike[str] | bytes,
        *,
        external_data: Mapping[str, bytes] | None = None,
        threads: int | None = None,
        providers: list[str] | None = None,
    ) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            if threads < 1:
                raise ConfigError(f"threads must be >= 1, got {threads}")
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        what = "<model bytes>" if isinstance(path, bytes) else os.fspath(path)
        # Kept alive with the session: ONNX Runtime reads these buffers in place.
        self._external = {n: np.frombuffer(d, np.uint8) for n, d in (external_data or {}).items()}
        if self._external:
            opts.add_external_initializers_from_files_in_memory(
                list(self._external), list(self._external.values()),
                [a.size for a in self._external.values()])
        try:
            self.session = ort.InferenceSession(
                path if isinstance(path, bytes) else what, sess_options=opts,
                providers=providers or ["CPUExecutionProvider"],
            )
        except Exception as e:  # onnxruntime raises its own untyped errors
            hint = ""
            if isinstance(path, bytes) and ("xternal" in str(e) or "model_path" in str(e)):
                hint = ("; the model keeps weights in external data that card.json does not "
                        "list: name it *.data and list it in card.json")
            raise ModelIntegrityError(
                f"{what}: ONNX Runtime cannot load the model ({e}){hint}") from e
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = tuple(o.name for o in self.session.get_outputs())

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, np.float32)})
        return {n: np.asarray(o) for n, o in zip(self.output_names, outs, strict=True)}


class HeadBackend:
    """A backend whose ``logits`` come from a numpy head on its ``embedding`` output (an
    extended package, :mod:`wildvision.head`); the other outputs pass through unchanged."""

    def __init__(self, inner: Backend, head: LinearHead) -> None:
        if "embedding" not in inner.output_names:
            raise ModelIntegrityError("the package has a head on the embedding, but its model "
                                      "has no 'embedding' output")
        self.inner = inner
        self.head = head
        self.name = inner.name
        self.output_names = tuple(dict.fromkeys(("logits", *inner.output_names)))

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        out = dict(self.inner.run(batch))
        out["logits"] = self.head.logits(out["embedding"])
        return out


def create_backend(
    package: ModelPackage,
    backend: str = "onnx",
    *,
    precision: str = "fp32",
    threads: int | None = None,
    streams: int = 1,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Backend:
    """Create the backend ``backend`` for ``package`` (with the package's numpy head applied
    to its ``logits`` when it has one: :class:`HeadBackend`).

    Args:
        package: the model package.
        backend: ``onnx`` (ONNX Runtime), ``openvino`` (``[openvino]`` extra) or ``torch``
            (``[torch]`` extra).
        precision: ``fp32``, ``int8`` (the package's ``model.int8.onnx``; onnx and openvino)
            or ``bf16`` (openvino, on CPUs with bfloat16 instructions).
        threads: inference threads of one run; ``None`` lets the runtime choose.
        streams: how many runs the caller makes at once (OpenVINO compiles that many streams;
            ONNX Runtime and torch serve concurrent runs from one session as they are).
        cache_dir: OpenVINO only: compiled-model cache folder.

    Raises:
        ConfigError: unknown backend or precision, a precision the backend does not run, a
            cache folder for a backend without one.
        ModelIntegrityError: a weight file changed since the package was loaded, or the model
            needs external data that the card does not list.
        MissingExtraError: openvino or torch backend without its extra.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if cache_dir is not None and backend != "openvino":
        raise ConfigError(f"cache_dir is an openvino option; backend {backend!r} has no cache")
    head = package_head(package)
    if backend == "openvino":
        try:
            from ._openvino import OpenVinoBackend
        except ImportError as e:
            raise MissingExtraError("openvino", "openvino", "the openvino backend") from e
        ov = OpenVinoBackend(
            package.onnx_file("int8" if precision == "int8" else "fp32"),
            input_size=package.card.preprocess.input_size, precision=precision,
            threads=threads, streams=streams, cache_dir=cache_dir,
        )
        return HeadBackend(ov, head) if head is not None else ov
    if precision == "bf16":
        raise ConfigError("precision 'bf16' runs on backend 'openvino' only (pip install "
                          "'wildvision[openvino]', backend='openvino')")
    if backend == "onnx":
        # The verified bytes themselves go to ONNX Runtime, with the card's external data:
        # nothing can change between the sha256 check and the load, and no unlisted file next
        # to model.onnx is ever read.
        onnx_name = package.onnx_file(precision).name
        onnx = OnnxBackend(package.read_verified(onnx_name),
                           external_data=package.external_data(), threads=threads)
        return HeadBackend(onnx, head) if head is not None else onnx
    if head is not None:
        raise ConfigError(f"model {package.card.name} is an extended package (a numpy head "
                          "on the base model); run it with backend='onnx' or 'openvino'")
    if precision != "fp32":
        raise ConfigError("the torch backend runs fp32 only; use backend='onnx' for int8")
    try:
        from .torch_backend import TorchBackend
    except ImportError as e:
        raise MissingExtraError("torch and timm", "torch", "the torch backend") from e
    return TorchBackend(package, threads=threads)
