"""What ``/docs`` shows beyond the routes' signatures: request bodies, error answers and an
example prediction."""

from __future__ import annotations

from typing import Any

_IMAGE_BODY = {"type": "string", "format": "binary"}
_SINGLE_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One image: a multipart upload (field `file`) or the raw image bytes "
                       "as the body (any content type other than multipart/form-data).",
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": _IMAGE_BODY},
                           "required": ["file"]},
            },
            "application/octet-stream": {"schema": _IMAGE_BODY},
            "image/jpeg": {"schema": _IMAGE_BODY},
            "image/png": {"schema": _IMAGE_BODY},
            "image/webp": {"schema": _IMAGE_BODY},
        },
    },
}
_BATCH_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Several images as multipart file parts (field name `files`; every "
                       "file part is taken, in order).",
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object",
                           "properties": {"files": {"type": "array", "items": _IMAGE_BODY}},
                           "required": ["files"]},
            },
        },
    },
}
_ERROR_SCHEMA = {
    "content": {"application/json": {"example": {
        "error_type": "InvalidImageError", "message": "photo.jpg: truncated or corrupt image",
        "request_id": "3f2c9f0e8c8d4f57a0b1c2d3e4f5a6b7"}}},
}
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed multipart request", **_ERROR_SCHEMA},
    401: {"description": "Missing or wrong API key", **_ERROR_SCHEMA},
    408: {"description": "The body did not arrive within the request timeout", **_ERROR_SCHEMA},
    413: {"description": "Body over the size limit", **_ERROR_SCHEMA},
    503: {"description": "Model loading, or too many requests (see Retry-After)",
          **_ERROR_SCHEMA},
    504: {"description": "Inference did not finish within the request timeout",
          **_ERROR_SCHEMA},
}
_PREDICTION_EXAMPLE = {
    "source": "photo.jpg", "ok": True, "decision": "flag", "flagged_groups": ["ivory"],
    "top_group": "ivory",
    "groups": {"ivory": {"probability": 0.97, "decision": "flag", "flag_threshold": 0.8,
                         "review_threshold": 0.4}},
    "top_labels": [{"label": "ivory_carving", "group": "ivory", "probability": 0.95}],
    "model": "wildvision-base", "model_version": "1.0.0", "image_sha256": "9f86d0...",
    "width": 1024, "height": 768,
}


