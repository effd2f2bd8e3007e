"""The OpenVINO runtime backend (``[openvino]`` extra), imported lazily by
:func:`wildvision.runtime.create_backend`: the package's own ``model.onnx`` /
``model.int8.onnx``, compiled by OpenVINO for the CPU.

Precisions:

- ``fp32``: ``model.onnx``, every operator in float32 (OpenVINO's inference precision set to
  ``f32`` explicitly: on CPUs with bfloat16 units its default would be ``bf16``).
- ``bf16``: ``model.onnx`` with OpenVINO's inference precision ``bf16`` (weights and
  activations rounded to bfloat16 inside the engine). Only on CPUs that OpenVINO reports as
  bfloat16-capable (AVX512-BF16 or AMX); anywhere else a :class:`~wildvision.errors.ConfigError`,
  never a silent fallback to another precision.
- ``int8``: ``model.int8.onnx`` (the QDQ model ONNX Runtime runs), the non-quantized rest in
  ``f32``.

Before compiling, the spatial input size is fixed to the card's ``input_size`` (the batch axis
stays dynamic) and OpenVINO's constant folding turns the graph's "same"-padding arithmetic
(``Shape`` -> ... -> ``Pad``) into constants. That matters for the int8 file: its quantizer put
Q/DQ pairs on that arithmetic, and OpenVINO's int8 CPU kernels compute it differently from
ONNX Runtime (a different padding of the stem convolution, a smaller feature map); folded, the
padding is the one ONNX Runtime computes. A graph that still computes shapes at run time after
folding is refused for int8.
"""

from __future__ import annotations

import os
import queue
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
from openvino import passes

from .errors import ConfigError, ModelIntegrityError

__all__ = ["PRECISIONS", "OpenVinoBackend", "bf16_supported", "openvino_version"]

# precision -> OpenVINO inference precision hint (the file is chosen by the caller)
PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}

_CORE: ov.Core | None = None


def _core() -> ov.Core:
    global _CORE  # one Core per process: it holds the plugins, loaded once
    if _CORE is None:
        _CORE = ov.Core()
    return _CORE


def openvino_version() -> str:
    """The OpenVINO runtime version string."""
    return str(ov.get_version())


def bf16_supported(device: str = "CPU") -> bool:
    """Whether OpenVINO runs bfloat16 natively on ``device`` (AVX512-BF16 or AMX on x86)."""
    caps = _core().get_property(device, "OPTIMIZATION_CAPABILITIES")
    return "BF16" in [str(c) for c in caps]


def _device_name(device: str) -> str:
    try:
        return str(_core().get_property(device, "FULL_DEVICE_NAME"))
    except RuntimeError:
        return device


class OpenVinoBackend:
    """OpenVINO on the CPU, same interface as :class:`wildvision.runtime.OnnxBackend`.

    Args:
        path: the ONNX file (``model.onnx`` for fp32/bf16, ``model.int8.onnx`` for int8).
        input_size: the side of the square model input (the card's ``preprocess.input_size``).
        precision: ``fp32``, ``bf16`` or ``int8`` (see the module docstring).
        threads: inference threads of each stream; ``None`` lets OpenVINO use every core.
        streams: how many runs the caller makes at once (OpenVINO ``NUM_STREAMS``); each
            concurrent :meth:`run` gets its own infer request.
        cache_dir: OpenVINO's compiled-model cache folder (``CACHE_DIR``): a later process
            loads the compiled model from there instead of compiling it again.

    Raises:
        ConfigError: unknown precision, ``bf16`` on a CPU without bfloat16 support, bad
            ``threads`` / ``streams``.
        ModelIntegrityError: OpenVINO cannot read or compile the file.
    """

    name = "openvino"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        input_size: int,
        precision: str = "fp32",
        threads: int | None = None,
        streams: int = 1,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(
                f"precision must be one of {tuple(PRECISIONS)} for the openvino backend, "
                f"got {precision!r}"
            )
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        if streams < 1:
            raise ConfigError(f"streams must be >= 1, got {streams}")
        device = "CPU"
        core = _core()
        if precision == "bf16" and not bf16_supported(device):
            raise ConfigError(
                f"precision 'bf16' needs a CPU with bfloat16 instructions (AVX512-BF16 or AMX); "
                f"OpenVINO reports none on this one ({_device_name(device)}). Use precision "
                "'fp32' or 'int8'."
            )
        self.precision = precision
        self.path = Path(path)
        try:
            model = core.read_model(os.fspath(path))
        except Exception as e:  # OpenVINO raises RuntimeError with its own text
            raise ModelIntegrityError(f"{path}: OpenVINO cannot read the model ({e})") from e
        if len(model.inputs) != 1:
            raise ModelIntegrityError(
                f"{path}: expected one input, the model has {len(model.inputs)}"
            )
        try:
            model.reshape({model.inputs[0]: ov.PartialShape([-1, 3, input_size, input_size])})
        except Exception as e:
            raise ModelIntegrityError(
                f"{path}: the model does not take 3x{input_size}x{input_size} inputs ({e})"
            ) from e
        manager = passes.Manager()
        manager.register_pass(passes.ConstantFolding())
        manager.run_passes(model)
        if precision == "int8" and any(op.get_type_name() == "ShapeOf" for op in model.get_ops()):
            raise ModelIntegrityError(
                f"{path}: this int8 model still computes shapes at run time after constant "
                "folding; OpenVINO's int8 kernels may pad it differently from ONNX Runtime. "
                "Use backend 'onnx' for it."
            )
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": PRECISIONS[precision],
            "NUM_STREAMS": streams,
        }
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads * streams
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = os.fspath(cache_dir)
        try:
            self.compiled = core.compile_model(model, device, config)
        except Exception as e:
            raise ModelIntegrityError(f"{path}: OpenVINO cannot compile the model ({e})") from e
        self.output_names = tuple(o.get_any_name() for o in self.compiled.outputs)
        self.streams = streams
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        # Infer requests are not thread-safe; each concurrent run() takes its own from here.
        self._requests: queue.SimpleQueue[ov.InferRequest] = queue.SimpleQueue()
        # One run before any concurrent use: the first infer() of a process initialises
        # OpenVINO's Python data dispatcher, and two threads doing that at once were seen to
        # deadlock (every thread waiting, no CPU used) in a classify_images run.
        self.run(np.zeros((1, 3, input_size, input_size), np.float32))

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(batch, np.float32)
        try:
            req = self._requests.get_nowait()
        except queue.Empty:
            req = self.compiled.create_infer_request()
        try:
            # infer() releases the GIL; its outputs are copies (the request's buffers are
            # reused by the next run).
            out = req.infer({0: x}, share_inputs=True, share_outputs=False)
            return {n: np.asarray(out[i]) for i, n in enumerate(self.output_names)}
        finally:
            self._requests.put(req)
