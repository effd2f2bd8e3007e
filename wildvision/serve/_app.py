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
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import logging
import os
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from ..errors import InvalidImageError
from ..predict import Failure
from ._config import ServeConfig, key_file_is_private

__all__ = ["JsonLogFormatter", "create_app", "create_app_from_env"]

ACCESS_LOGGER = "wildvision.serve.access"
log = logging.getLogger("wildvision.serve")
access_log = logging.getLogger(ACCESS_LOGGER)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
T = TypeVar("T")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_FILENAME_BAD = re.compile(r"[\x00-\x1f\x7f]")


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


class _ApiError(Exception):
    """An error answer with a typed body: ``{"error_type", "message", "request_id"}``."""

    def __init__(self, status: int, error_type: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message
        self.headers = headers or {}


class _BodyTooLarge(Exception):
    """Raised from ``receive`` once the streamed body passes the limit."""


@dataclass
class _ServiceState:
    config: ServeConfig
    api_keys: tuple[bytes, ...]
    pool: ThreadPoolExecutor
    classifier: Any = None  # wildvision.predict.Classifier once loaded
    load_error: BaseException | None = None
    loaded_at: float | None = None
    running: int = 0  # inferences in the thread pool (only touched on the event loop)
    pending: int = 0  # admitted classify requests (idem)
    counts: Counter[int] = field(default_factory=Counter)

    def load_model(self) -> None:
        from ..predict import Classifier

        cfg = self.config
        t0 = time.perf_counter()
        try:
            index = None
            if cfg.match_index:
                from ..match import load_index

                index = load_index(cfg.match_index)
            clf = Classifier(cfg.model, cfg.classifier_options(match_index=index))
        except Exception as e:  # reported by /readyz; the process stays up for probes
            self.load_error = e
            log.error("model load failed", exc_info=True,
                      extra={"fields": {"error_type": type(e).__name__}})
            return
        self.classifier = clf
        self.loaded_at = time.time()
        log.info("model loaded", extra={"fields": {
            "model": clf.card.name, "model_version": clf.card.version,
            "load_s": round(time.perf_counter() - t0, 3),
        }})


def _error_body(error_type: str, message: str, request_id: str | None) -> dict[str, Any]:
    return {"error_type": error_type, "message": message, "request_id": request_id}


def _send_json(send: Send, status: int, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> Awaitable[None]:
    async def go() -> None:
        data = json.dumps(body).encode()
        raw = [(b"content-type", b"application/json"),
               (b"content-length", str(len(data)).encode())]
        raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": data})
    return go()


class _GateMiddleware:
    """Request id, body-size limit while streaming, one JSON access-log line per request, and
    a last-resort 500 that never shows a traceback to the client."""

    def __init__(self, app: ASGIApp, service: _ServiceState) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        cfg = self.service.config
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        given = headers.get(b"x-request-id", b"").decode("latin-1").strip()
        request_id = given if _REQUEST_ID_RE.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        fields: dict[str, Any] = {}
        state["log_fields"] = fields
        status_box = [0]
        started = [False]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
                status_box[0] = int(message["status"])
                hdrs = list(message.get("headers", []))
                hdrs.append((b"x-request-id", request_id.encode()))
                message = dict(message, headers=hdrs)
            await send(message)

        limit = cfg.max_body_bytes
        received = [0]

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > limit:
                    raise _BodyTooLarge
            return message

        too_large = _error_body(
            "PayloadTooLarge", f"request body is over the limit of {limit:,} bytes", request_id
        )
        try:
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                # Answer before reading; the server discards what the client still sends.
                await _send_json(send_wrapper, 413, too_large)
            else:
                await self.app(scope, limited_receive, send_wrapper)
        except _BodyTooLarge:
            if not started[0]:
                await _send_json(send_wrapper, 413, too_large)
        except Exception as e:
            log.error("unhandled error", exc_info=True, extra={"fields": {
                "request_id": request_id, "path": scope.get("path"),
                "error_type": type(e).__name__,
            }})
            if not started[0]:
                fields.setdefault("error_type", "InternalServerError")
                await _send_json(send_wrapper, 500, _error_body(
                    "InternalServerError", "internal server error", request_id))
        finally:
            status = status_box[0] or 500
            self.service.counts[status] += 1
            clf = self.service.classifier
            if clf is not None:
                fields.setdefault("model", clf.card.name)
                fields.setdefault("model_version", clf.card.version)
            if cfg.log_requests:
                access_log.info("request", extra={"fields": {
                    "request_id": request_id,
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "status": status,
                    "latency_ms": round((time.perf_counter() - t0) * 1000, 2),
                    "bytes_in": received[0],
                    **fields,
                }})


def _sanitize_filename(name: str | None) -> str:
    if not name:
        return "<upload>"
    name = _FILENAME_BAD.sub("", name.replace("\\", "/").rsplit("/", 1)[-1])
    return name[:255] or "<upload>"


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
    )
    app.state.wildvision = service
    app.add_middleware(_GateMiddleware, service=service)

    bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
    api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                                  description="X-API-Key: <API key>")

    async def require_key(
        creds: HTTPAuthorizationCredentials | None = Depends(bearer),
        header_key: str | None = Depends(api_key_header),
    ) -> None:
        if not service.api_keys:
            return
        given = (creds.credentials if creds else None) or header_key or ""
        given_b = given.encode()
        match = False
        for key in service.api_keys:  # every key compared, in constant time each
            match |= hmac.compare_digest(given_b, key)
        if not match:
            raise _ApiError(401, "Unauthorized",
                            "missing or invalid API key (Authorization: Bearer <key> or "
                            "X-API-Key: <key>)", {"WWW-Authenticate": "Bearer"})

    def request_id(request: Request) -> str | None:
        return getattr(request.state, "request_id", None)

    def log_fields(request: Request) -> dict[str, Any]:
        fields = getattr(request.state, "log_fields", None)
        return fields if isinstance(fields, dict) else {}

    @app.exception_handler(_ApiError)
    async def api_error(request: Request, exc: _ApiError) -> JSONResponse:
        log_fields(request).setdefault("error_type", exc.error_type)
        return JSONResponse(_error_body(exc.error_type, exc.message, request_id(request)),
                            status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        try:
            etype = HTTPStatus(exc.status_code).phrase.replace(" ", "").replace("-", "")
        except ValueError:
            etype = "HTTPError"
        log_fields(request).setdefault("error_type", etype)
        return JSONResponse(_error_body(etype, str(exc.detail), request_id(request)),
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        body = _error_body("RequestValidationError", "invalid request parameters",
                           request_id(request))
        body["detail"] = json.loads(json.dumps(exc.errors(), default=str))
        return JSONResponse(body, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Reached only if the gate middleware itself fails; never leaks the exception text.
        log.error("unhandled error", exc_info=exc)
        return JSONResponse(
            _error_body("InternalServerError", "internal server error", request_id(request)),
            status_code=500,
        )

    def busy(message: str) -> _ApiError:
        return _ApiError(503, "ServiceUnavailable", message,
                         {"Retry-After": str(cfg.retry_after_s)})

    def classifier() -> Any:
        clf = service.classifier
        if clf is None:
            if service.load_error is not None:
                raise _ApiError(503, "ModelLoadError", "the model failed to load; see the "
                                "server log", {"Retry-After": str(cfg.retry_after_s * 30)})
            raise busy("the model is still loading")
        return clf

    @asynccontextmanager
    async def admitted() -> AsyncIterator[None]:
        if service.pending >= cfg.pending_limit:
            raise busy(f"server busy: {service.pending} requests in progress")
        service.pending += 1
        try:
            yield
        finally:
            service.pending -= 1

    async def within(deadline: float, what: Awaitable[T]) -> T:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            return await asyncio.wait_for(what, remaining)
        except asyncio.TimeoutError:
            if asyncio.iscoroutine(what):
                what.close()
            raise _ApiError(408, "RequestTimeout", "the request body did not arrive within "
                            f"{cfg.request_timeout_s:g} s") from None

    async def run_inference(fn: Callable[[], T], deadline: float) -> T:
        # A bound, not a queue: no free slot -> 503 at once. The slot is released when the
        # thread finishes, not when the client gives up, so timed-out work still counts.
        if service.running >= cfg.max_concurrency:
            raise busy(f"server busy: {service.running} inferences running "
                       f"(limit {cfg.max_concurrency})")
        service.running += 1
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(service.pool, fn)

        def release(f: asyncio.Future[T]) -> None:
            service.running -= 1
            if not f.cancelled():
                f.exception()  # mark retrieved even when nobody awaits it any more

        fut.add_done_callback(release)
        remaining = deadline - time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), max(remaining, 0.0))
        except asyncio.TimeoutError:
            raise _ApiError(504, "Timeout", "inference did not finish within "
                            f"{cfg.request_timeout_s:g} s") from None

    async def read_uploads(request: Request, deadline: float, max_files: int
                           ) -> list[tuple[str, bytes]]:
        try:
            form = await within(deadline, request.form(
                max_files=max_files, max_fields=max_files + 16))
        except StarletteHTTPException as e:
            raise _ApiError(400, "InvalidMultipart", str(e.detail)) from None
        try:
            out = []
            for _key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    data = await value.read()
                    out.append((_sanitize_filename(value.filename), data))
            return out
        finally:
            await form.close()

    def is_multipart(request: Request) -> bool:
        ctype = request.headers.get("content-type", "")
        return ctype.split(";", 1)[0].strip().lower() == "multipart/form-data"

    def as_source(name: str, data: bytes) -> io.BytesIO:
        bio = io.BytesIO(data)
        bio.name = name  # the result's `source`
        return bio

    def note(request: Request, clf: Any, **kw: Any) -> None:
        fields = log_fields(request)
        fields["model"] = clf.card.name
        fields["model_version"] = clf.card.version
        fields.update(kw)

    @app.post("/v1/classify", tags=["classify"], dependencies=[Depends(require_key)],
              openapi_extra=_SINGLE_OPENAPI,
              responses={200: {"description": "The prediction (Prediction.to_dict())",
                               "content": {"application/json": {
                                   "example": _PREDICTION_EXAMPLE}}},
                         422: {"description": "Not a readable image: the Failure record "
                               "(error_type, message)", **_ERROR_SCHEMA},
                         **_ERROR_RESPONSES})
    async def classify(request: Request) -> JSONResponse:
        """Classify one image: a multipart upload (field ``file``) or the raw image bytes."""
        deadline = time.monotonic() + cfg.request_timeout_s
        clf = classifier()
        async with admitted():
            if is_multipart(request):
                uploads = await read_uploads(request, deadline, max_files=1)
                if not uploads:
                    raise _ApiError(400, "InvalidMultipart",
                                    "no file part in the multipart body (field 'file')")
                name, data = uploads[0]
            else:
                name, data = "<upload>", await within(deadline, request.body())
            src = as_source(name, data)

            def infer_one() -> Any:
                # In this thread: no decode pool per request. A bad image is the client's
                # problem (422); any other error is ours (500, logged).
                try:
                    return clf.classify(src)
                except InvalidImageError as e:
                    return Failure(name, type(e).__name__, str(e), clf.card.name,
                                   clf.card.version)

            result = await run_inference(infer_one, deadline)
        body = result.to_dict()
        if not result.ok:
            note(request, clf, error_type=result.error_type)
            body["request_id"] = request_id(request)
            return JSONResponse(body, status_code=422)
        note(request, clf, decision=result.decision)
        return JSONResponse(body)

    @app.post("/v1/classify/batch", tags=["classify"], dependencies=[Depends(require_key)],
              openapi_extra=_BATCH_OPENAPI,
              responses={200: {"description": "One result per file, in order; failed files "
                               "are Failure records (ok=false, error_type, message)"},
                         415: {"description": "Not a multipart body", **_ERROR_SCHEMA},
                         **_ERROR_RESPONSES})
    async def classify_batch(request: Request) -> JSONResponse:
        """Classify several uploaded images; one result per file, in upload order."""
        deadline = time.monotonic() + cfg.request_timeout_s
        clf = classifier()
        if not is_multipart(request):
            raise _ApiError(415, "UnsupportedMediaType",
                            "send the images as multipart/form-data file parts")
        async with admitted():
            uploads = await read_uploads(request, deadline, max_files=cfg.max_batch_files)
            if not uploads:
                raise _ApiError(400, "InvalidMultipart", "no file parts in the multipart body")
            sources = [as_source(n, d) for n, d in uploads]
            results = await run_inference(
                lambda: clf.classify_many(sources), deadline)
        dicts = [r.to_dict() for r in results]
        tally = Counter(r.decision if r.ok else "failed" for r in results)
        note(request, clf, decisions=dict(tally), n_images=len(results))
        return JSONResponse({
            "model": clf.card.name, "model_version": clf.card.version,
            "count": len(dicts), "failed": tally.get("failed", 0), "results": dicts,
        })

    @app.get("/v1/models", tags=["models"], dependencies=[Depends(require_key)])
    async def models() -> dict[str, Any]:
        """The loaded model: name, version, labels, groups and the thresholds in force."""
        clf = classifier()
        card = clf.card
        return {"models": [{
            "name": card.name,
            "version": card.version,
            "arch": card.arch,
            "description": card.description,
            "license": card.license,
            "labels": list(card.labels),
            "label_groups": dict(card.label_groups),
            "groups": list(card.groups),
            "thresholds": {g: th.to_dict() for g, th in clf.thresholds.items()},
            "temperature": card.temperature,
            "input_size": card.preprocess.input_size,
            "backend": cfg.backend,
            "precision": cfg.precision,
            "default": True,
        }]}

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, Any]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: {"description": "not ready"}})
    async def readyz() -> JSONResponse:
        """Readiness: 200 once the model is loaded, 503 while loading or after a failed load."""
        clf = service.classifier
        load = {"running": service.running, "max_concurrency": cfg.max_concurrency,
                "pending": service.pending, "max_pending": cfg.pending_limit}
        if clf is not None:
            return JSONResponse({"status": "ready", "model": clf.card.name,
                                 "model_version": clf.card.version, **load})
        if service.load_error is not None:
            return JSONResponse({"status": "error",
                                 "error_type": type(service.load_error).__name__,
                                 "message": "the model failed to load; see the server log"},
                                status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503,
                            headers={"Retry-After": str(cfg.retry_after_s)})

    return app


def create_app_from_env() -> FastAPI:
    """App factory for multi-worker uvicorn: reads the config from
    ``$WILDVISION_SERVE_CONFIG`` (set by ``wildvision serve``) and logs JSON lines to stderr,
    as the parent process does."""
    cfg = ServeConfig.from_env()
    configure_logging()
    return create_app(cfg)


def configure_logging(level: int = logging.INFO) -> None:
    """Send the service's and uvicorn's logs as JSON lines to stderr (``wildvision serve``)."""
    for name in ("wildvision.serve", "uvicorn.error"):
        logger = logging.getLogger(name)
        if any(getattr(h, "_wildvision", False) for h in logger.handlers):
            continue
        handler = logging.StreamHandler()
        handler.setFormatter(JsonLogFormatter())
        handler._wildvision = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if os.environ.get("WILDVISION_SERVE_DEBUG") else level)
        logger.propagate = False

