"""Exporting model packages to other forms: an INT8 ONNX model beside the fp32 one
(:mod:`wildvision.export.quantize`) and a Triton Inference Server model repository
(:mod:`wildvision.export.triton`).

Nothing heavy is imported here: ``onnx`` and ``onnxruntime.quantization`` load only when a
function that needs them runs. CLI: ``wildvision export int8 ...``, ``wildvision export triton``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["calibration_images", "measure_agreement", "quantize_package"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import quantize

        return getattr(quantize, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
