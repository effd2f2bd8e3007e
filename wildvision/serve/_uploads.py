"""Reading images out of a request: multipart file parts or the raw body, with the client's
file name cleaned up to become the result's ``source``."""

from __future__ import annotations

import io
import re

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from ._errors import _ApiError
from ._service import _ServiceState

_FILENAME_BAD = re.compile(r"[\x00-\x1f\x7f]")


def _sanitize_filename(name: str | None) -> str:
    if not name:
        return "<upload>"
    name = _FILENAME_BAD.sub("", name.replace("\\", "/").rsplit("/", 1)[-1])
    return name[:255] or "<upload>"


async def read_uploads(service: _ServiceState, request: Request, deadline: float,
                       max_files: int) -> list[tuple[str, bytes]]:
    """The file parts of a multipart body, in order: ``(file name, bytes)``; 400 for a
    malformed body, 408 past ``deadline``."""
    try:
        form = await service.within(deadline, request.form(
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
