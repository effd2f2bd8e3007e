"""The ASGI middleware in front of every request: request id, body-size limit while the body
streams in, one JSON access-log line, and a last-resort 500."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from ._errors import ASGIApp, Message, Receive, Scope, Send, _BodyTooLarge, _error_body, _send_json
from ._logging import access_log, log
from ._service import _ServiceState

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


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
