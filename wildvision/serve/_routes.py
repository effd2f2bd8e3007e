"""The service's endpoints and error handlers, on a :class:`~._service._ServiceState`:
``POST /v1/classify``, ``POST /v1/classify/batch``, ``GET /v1/models``, ``/healthz`` and
``/readyz``."""

from __future__ import annotations

import json
import time
from collections import Counter
from http import HTTPStatus
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import InvalidImageError
from ..predict import Failure
from ._errors import _ApiError, _error_body
from ._logging import log
from ._openapi import (
    _BATCH_OPENAPI,
    _ERROR_RESPONSES,
    _ERROR_SCHEMA,
    _PREDICTION_EXAMPLE,
    _SINGLE_OPENAPI,
)
from ._service import _ServiceState
from ._uploads import as_source, is_multipart, read_uploads

__all__ = ["add_routes", "install_error_handlers"]


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _log_fields(request: Request) -> dict[str, Any]:
    fields = getattr(request.state, "log_fields", None)
    return fields if isinstance(fields, dict) else {}


def _note(request: Request, clf: Any, **kw: Any) -> None:
    fields = _log_fields(request)
    fields["model"] = clf.card.name
    fields["model_version"] = clf.card.version
    fields.update(kw)


def install_error_handlers(app: FastAPI) -> None:
    """Every error answer as ``{"error_type", "message", "request_id"}``."""

    @app.exception_handler(_ApiError)
    async def api_error(request: Request, exc: _ApiError) -> JSONResponse:
        _log_fields(request).setdefault("error_type", exc.error_type)
        return JSONResponse(_error_body(exc.error_type, exc.message, _request_id(request)),
                            status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        try:
            etype = HTTPStatus(exc.status_code).phrase.replace(" ", "").replace("-", "")
        except ValueError:
            etype = "HTTPError"
        _log_fields(request).setdefault("error_type", etype)
        return JSONResponse(_error_body(etype, str(exc.detail), _request_id(request)),
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        body = _error_body("RequestValidationError", "invalid request parameters",
                           _request_id(request))
        body["detail"] = json.loads(json.dumps(exc.errors(), default=str))
        return JSONResponse(body, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Reached only if the gate middleware itself fails; never leaks the exception text.
        log.error("unhandled error", exc_info=exc)
        return JSONResponse(
            _error_body("InternalServerError", "internal server error", _request_id(request)),
            status_code=500,
        )


def add_routes(app: FastAPI, service: _ServiceState) -> None:
    """The endpoints, answering from ``service``."""
    cfg = service.config
    bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
    api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                                  description="X-API-Key: <API key>")

    async def require_key(
        creds: HTTPAuthorizationCredentials | None = Depends(bearer),
        header_key: str | None = Depends(api_key_header),
    ) -> None:
        service.check_key((creds.credentials if creds else None) or header_key or "")

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
        clf = service.ready_classifier()
        async with service.admitted():
            if is_multipart(request):
                uploads = await read_uploads(service, request, deadline, max_files=1)
                if not uploads:
                    raise _ApiError(400, "InvalidMultipart",
                                    "no file part in the multipart body (field 'file')")
                name, data = uploads[0]
            else:
                name, data = "<upload>", await service.within(deadline, request.body())
            src = as_source(name, data)

            def infer_one() -> Any:
                # In this thread: no decode pool per request. A bad image is the client's
                # problem (422); any other error is ours (500, logged).
                try:
                    return clf.classify(src)
                except InvalidImageError as e:
                    return Failure(name, type(e).__name__, str(e), clf.card.name,
                                   clf.card.version)

            result = await service.run_inference(infer_one, deadline)
        body = result.to_dict()
        if not result.ok:
            _note(request, clf, error_type=result.error_type)
            body["request_id"] = _request_id(request)
            return JSONResponse(body, status_code=422)
        _note(request, clf, decision=result.decision)
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
        clf = service.ready_classifier()
        if not is_multipart(request):
            raise _ApiError(415, "UnsupportedMediaType",
                            "send the images as multipart/form-data file parts")
        async with service.admitted():
            uploads = await read_uploads(service, request, deadline,
                                         max_files=cfg.max_batch_files)
            if not uploads:
                raise _ApiError(400, "InvalidMultipart", "no file parts in the multipart body")
            sources = [as_source(n, d) for n, d in uploads]
            results = await service.run_inference(
                lambda: clf.classify_many(sources), deadline)
        dicts = [r.to_dict() for r in results]
        tally = Counter(r.decision if r.ok else "failed" for r in results)
        _note(request, clf, decisions=dict(tally), n_images=len(results))
        return JSONResponse({
            "model": clf.card.name, "model_version": clf.card.version,
            "count": len(dicts), "failed": tally.get("failed", 0), "results": dicts,
        })

    @app.get("/v1/models", tags=["models"], dependencies=[Depends(require_key)])
    async def models() -> dict[str, Any]:
        """The loaded model: name, version, labels, groups and the thresholds in force."""
        clf = service.ready_classifier()
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

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_key)])
    async def openapi() -> JSONResponse:
        """The OpenAPI schema (behind the API key when keys are configured)."""
        return JSONResponse(app.openapi())

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, Any]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: {"description": "not ready"}})
    async def readyz() -> JSONResponse:
        """Readiness: 200 once the model is loaded; 503 while loading, after a failed load, or
        while every inference slot is held by work past its request's deadline."""
        clf = service.classifier
        load = {"running": service.running, "overrun": service.overrun,
                "max_concurrency": cfg.max_concurrency,
                "pending": service.pending, "max_pending": cfg.pending_limit}
        if clf is not None and service.overrun >= cfg.max_concurrency:
            # Every slot is held by work whose client already got its 504: nothing can be
            # served until one ends, so a load balancer should send traffic elsewhere.
            return JSONResponse({"status": "saturated", "model": clf.card.name,
                                 "model_version": clf.card.version, **load}, status_code=503,
                                headers={"Retry-After": str(cfg.retry_after_s)})
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
