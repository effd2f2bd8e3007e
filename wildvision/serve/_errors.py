"""Error answers of the service: the typed exception, the JSON body every error has, and
sending a JSON answer straight from ASGI (before FastAPI is involved)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _ApiError(Exception):
    """An error answer with a typed body: ``{"error_type", "message", "request_id"}``."""

    def __init__(self, status: int, error_type: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message
        self.headers = headers or {}


class _BodyTooLarge(Exception):
    """Raised from ``receive`` once the streamed body passes the limit."""


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
