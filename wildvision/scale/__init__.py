"""Batch scoring of large image collections on Ray Data (``[scale]`` extra).

    from wildvision.scale import classify_dataset
    ds = classify_dataset("s3://bucket/photos/", model="wildvision-base", concurrency=32)
    ds.write_parquet("s3://bucket/scores/")

or ``wildvision classify --engine ray PHOTOS/ --output scores.parquet``.
Ray is imported only when :func:`classify_dataset` runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._ray import BatchClassifier, classify_dataset, expand_inputs, result_row, result_schema

__all__ = ["BatchClassifier", "classify_dataset", "expand_inputs", "result_row", "result_schema"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import _ray

        return getattr(_ray, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
