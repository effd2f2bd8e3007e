"""The HTTP service: a FastAPI app around one :class:`wildvision.predict.Classifier`.

Request path, cheapest checks first::

    declared Content-Length > max_body_bytes ........ 413, body never read
    API key (when configured) ....................... 401
    model not loaded yet ............................ 503 + Retry-After
    more than max_pending requests admitted ......... 503 + Retry-After, body never read
    body read, counted while it streams ............. 413 as soon as it passes the limit,
                                                      408 past the request deadline
    more than max_concurrency inferences running .... 503 + Retry-After, at once (no queue)
    inference in a thread pool of max_concurrency ... 504 past the request deadline
    bad image ....................................... 422 with the Failure record

Nothing here fetches URLs: images arrive in the request body only.

The pieces, one module each: ``_service`` (state and admission rules), ``_middleware``
(request id, body limit, access log), ``_routes`` (endpoints and error handlers),
``_uploads`` (reading images from a request), ``_errors``, ``_logging`` and ``_openapi``.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .._version import __version__
from ._config import ServeConfig, key_file_is_private
from ._logging import ACCESS_LOGGER, JsonLogFormatter, configure_logging, log
from ._middleware import _GateMiddleware
from ._routes import add_routes, install_error_handlers
from ._service import _ServiceState

__all__ = ["ACCESS_LOGGER", "JsonLogFormatter", "configure_logging", "create_app",
           "create_app_from_env"]


def create_app(config: ServeConfig | None = None) -> FastAPI:
    """Build the service app. The model loads in a background thread at startup;
    ``/readyz`` answers 200 once it is loaded.

    Args:
        config: the service configuration (defaults: ``ServeConfig()``).

    Returns:
        A FastAPI (ASGI) application; serve it with uvicorn or any ASGI server.

    Raises:
        ConfigError: an unreadable or empty API key file.

    Example:
        >>> app = create_app(ServeConfig(model="wildvision-base", max_concurrency=4))
        >>> # uvicorn.run(app, host="127.0.0.1", port=8080)
    """
    cfg = config or ServeConfig()
    keys = cfg.all_api_keys()
    if cfg.api_key_file and not key_file_is_private(cfg.api_key_file):
        log.warning("API key file is readable by other users; chmod 600 it",
                    extra={"fields": {"path": cfg.api_key_file}})
    service = _ServiceState(
        config=cfg,
        api_keys=tuple(k.encode() for k in keys),
        pool=ThreadPoolExecutor(cfg.max_concurrency, thread_name_prefix="wv-infer"),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = threading.Thread(target=service.load_model, name="wv-model-load", daemon=True)
        loader.start()
        try:
            yield
        finally:
            service.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="wildvision",
        version=__version__,
        summary="Find wildlife-trafficking products and live protected animals in photos.",
        description=(
            "Upload listing photos; get per-group probabilities and flag/review/pass "
            "decisions from the loaded wildvision model. Images are only accepted in the "
            "request body: the service never fetches URLs."
        ),
        lifespan=lifespan,
        # No /docs or /redoc: their pages load Swagger UI / ReDoc from a CDN (blank on an
        # offline network). The schema itself is served by the routes, behind the API key.
        docs_url=None, redoc_url=None, openapi_url=None,
    )
    app.state.wildvision = service
    app.add_middleware(_GateMiddleware, service=service)
    install_error_handlers(app)
    add_routes(app, service)
    return app


def create_app_from_env() -> FastAPI:
    """App factory for multi-worker uvicorn: reads the config from
    ``$WILDVISION_SERVE_CONFIG`` (set by ``wildvision serve``) and logs JSON lines to stderr,
    as the parent process does."""
    cfg = ServeConfig.from_env()
    configure_logging()
    return create_app(cfg)
