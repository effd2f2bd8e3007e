"""The service's logs: one JSON object per line (the access log and everything else)."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

__all__ = ["ACCESS_LOGGER", "JsonLogFormatter", "access_log", "configure_logging", "log"]

ACCESS_LOGGER = "wildvision.serve.access"
log = logging.getLogger("wildvision.serve")
access_log = logging.getLogger(ACCESS_LOGGER)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message`` plus the fields
    passed as ``extra={"fields": {...}}`` (the access log) and ``exc`` for tracebacks."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            out.update(extra)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    """Send every log line of the process as a JSON line to stderr (``wildvision serve``):
    the service's and uvicorn's at ``level``, any other library's (python-multipart ...)
    through the root logger, which would otherwise print plain text."""
    for name in ("", "wildvision.serve", "uvicorn.error"):
        logger = logging.getLogger(name)
        if any(getattr(h, "_wildvision", False) for h in logger.handlers):
            continue
        handler = logging.StreamHandler()
        handler.setFormatter(JsonLogFormatter())
        handler._wildvision = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        if not name:  # the root logger: other libraries keep their own levels
            continue
        logger.setLevel(logging.DEBUG if os.environ.get("WILDVISION_SERVE_DEBUG") else level)
        logger.propagate = False
