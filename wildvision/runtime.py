"""Inference backends behind one interface: ONNX Runtime (default, core install) and torch
(``[torch]`` extra). Both take the float32 NCHW batch made by :mod:`wildvision.preprocess`
and return a dict of named float32 outputs (``logits``, ``embedding``, maybe ``features``).
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np

from .errors import ConfigError, MissingExtraError, ModelIntegrityError
from .head import LinearHead, package_head
from .modelpack import ModelPackage

__all__ = ["BACKENDS", "Backend", "HeadBackend", "OnnxBackend", "create_backend"]

BACKENDS = ("onnx", "torch")


class Backend(Protocol):
    """What every backend does."""

    name: str
    output_names: tuple[str, ...]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """float32 NxCxHxW -> named outputs, each with N rows."""
        ...


class OnnxBackend:
    """ONNX Runtime on CPU (or any execution provider given)."""

    name = "onnx"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
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
        try:
            self.session = ort.InferenceSession(
                os.fspath(path), sess_options=opts,
                providers=providers or ["CPUExecutionProvider"],
            )
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise ModelIntegrityError(f"{path}: ONNX Runtime cannot load the model ({e})") from e
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
) -> Backend:
    """Create the backend ``backend`` for ``package`` (with the package's numpy head applied
    to its ``logits`` when it has one: :class:`HeadBackend`).

    Raises:
        ConfigError: unknown backend or precision.
        MissingExtraError: torch backend without the ``[torch]`` extra.
    """
    head = package_head(package)
    if backend == "onnx":
        onnx = OnnxBackend(package.onnx_file(precision), threads=threads)
        return HeadBackend(onnx, head) if head is not None else onnx
    if backend == "torch":
        if head is not None:
            raise ConfigError(f"model {package.card.name} is an extended package (a numpy head "
                              "on the base model); run it with backend='onnx'")
        if precision != "fp32":
            raise ConfigError("the torch backend runs fp32 only; use backend='onnx' for int8")
        try:
            from .torch_backend import TorchBackend
        except ImportError as e:
            raise MissingExtraError("torch and timm", "torch", "the torch backend") from e
        return TorchBackend(package, threads=threads)
    raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
