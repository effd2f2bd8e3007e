"""The wildvision HTTP service (``[serve]`` extra: FastAPI + uvicorn).

    wildvision serve --model wildvision-base --host 127.0.0.1 --port 8080

or, from Python::

    from wildvision.serve import ServeConfig, create_app
    app = create_app(ServeConfig(model="wildvision-base", max_concurrency=4))

This module imports FastAPI only when :func:`create_app` is first used, so that the CLI stays
cheap to start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._config import ServeConfig, load_api_keys

if TYPE_CHECKING:
    from ._app import JsonLogFormatter, create_app

__all__ = ["JsonLogFormatter", "ServeConfig", "create_app", "load_api_keys"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "JsonLogFormatter"):
        try:
            from . import _app
        except ImportError as e:
            from ..errors import MissingExtraError

            raise MissingExtraError("fastapi and uvicorn", "serve", "the HTTP service") from e
        return getattr(_app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
