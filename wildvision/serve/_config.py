"""Service configuration (stdlib only, so the CLI can build it without the ``[serve]`` extra)."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["CONFIG_ENV", "ServeConfig", "load_api_keys"]

# How `wildvision serve --workers N` hands the configuration to each worker process.
CONFIG_ENV = "WILDVISION_SERVE_CONFIG"
# wildvision.imaging.DEFAULT_MAX_PIXELS, repeated so that this module stays stdlib-only.
DEFAULT_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class ServeConfig:
    """Everything the HTTP service needs; build it once and pass it to ``create_app``.

    Attributes:
        model: model name, package folder or ``hf://org/name``; ``None`` = the default model.
        backend: ``onnx`` (default) or ``torch``.
        precision: ``fp32`` or ``int8``.
        threads: inference threads per model session (``None``: the runtime decides).
        decode_workers: image-decoding threads per request (``None``: one per image, up to 4).
        thresholds: per-group threshold overrides, as for :class:`wildvision.Classifier`.
        top_k: fine labels per prediction.
        open_set: apply the model's open-set gate (default ``True``).
        max_body_bytes: largest request body accepted, enforced while it streams in (413).
        max_pixels: largest image accepted, checked on the header before decoding (422).
        max_batch_files: most files in one ``/v1/classify/batch`` request (400 beyond).
        batch_size: images per model run inside a batch request.
        max_concurrency: inferences running at once; one more gets 503 + ``Retry-After``.
        max_pending: requests admitted at once (reading their body or running), bounding the
            memory held by request bodies; one more gets 503 before its body is read.
            ``None`` = ``4 * max_concurrency``.
        request_timeout_s: the longest a request may take: reading its body (408) and then
            running the model (504).
        retry_after_s: the ``Retry-After`` value sent with 503 answers.
        api_keys: accepted API keys; empty = no authentication.
        api_key_file: a file of API keys, one per line (``#`` comments), added to ``api_keys``.
        log_requests: write one JSON log line per request to the ``wildvision.serve`` logger.
        keep_alive_s: idle time after which uvicorn closes a kept-alive connection.
        max_connections: open connections (and requests) uvicorn accepts at once; one more
            gets 503 from uvicorn itself. ``None`` = ``4 * max_pending + 16``.
        max_header_bytes: the most of an unfinished request head uvicorn buffers.
        match_index: a known-photo index file (``wildvision match build``, ``[match]``
            extra): every result lists its ``matches`` and a photo with one is flagged.
    """

    model: str | None = None
    backend: str = "onnx"
    precision: str = "fp32"
    threads: int | None = None
    decode_workers: int | None = None
    thresholds: dict[str, Any] | None = None
    top_k: int = 3
    open_set: bool = True
    max_body_bytes: int = 16 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_batch_files: int = 32
    batch_size: int = 16
    max_concurrency: int = 2
    max_pending: int | None = None
    request_timeout_s: float = 30.0
    retry_after_s: int = 1
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api_key_file: str | None = None
    log_requests: bool = True
    keep_alive_s: float = 5.0
    max_connections: int | None = None
    max_header_bytes: int = 16 * 1024
    match_index: str | None = None

    def __post_init__(self) -> None:
        positive = ("top_k", "max_body_bytes", "max_pixels", "max_batch_files", "batch_size",
                    "max_concurrency", "retry_after_s")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"ServeConfig.{name} must be a positive integer, got {value!r}")
        if self.max_pending is not None and self.max_pending < self.max_concurrency:
            raise ConfigError(
                f"ServeConfig.max_pending ({self.max_pending}) must be >= max_concurrency "
                f"({self.max_concurrency})"
            )
        if self.max_connections is not None and self.max_connections < self.pending_limit:
            raise ConfigError(
                f"ServeConfig.max_connections ({self.max_connections}) must be >= max_pending "
                f"({self.pending_limit})"
            )
        if not self.keep_alive_s > 0 or not self.max_header_bytes >= 1024:
            raise ConfigError("ServeConfig.keep_alive_s must be > 0 and max_header_bytes "
                              ">= 1024")
        if not self.request_timeout_s > 0:
            raise ConfigError(
                f"ServeConfig.request_timeout_s must be > 0, got {self.request_timeout_s!r}"
            )
        if any(not isinstance(k, str) or not k for k in self.api_keys):
            raise ConfigError("ServeConfig.api_keys must be non-empty strings")

    def classifier_options(self, **changes: Any) -> Any:
        """The :class:`~wildvision.ClassifierOptions` of the service's classifier: every
        field this config shares with it by name, ``max_bytes`` = ``max_body_bytes``, then
        ``changes`` (the loaded ``match_index``: this config holds its path).

        Raises:
            ConfigError: an option value the classifier refuses.
        """
        from ..options import ClassifierOptions

        names = set(ClassifierOptions.__dataclass_fields__) - {"match_index"}
        shared = {f.name: getattr(self, f.name) for f in fields(self) if f.name in names}
        return ClassifierOptions(**shared, max_bytes=self.max_body_bytes).replace(**changes)

    @property
    def pending_limit(self) -> int:
        """The effective ``max_pending``."""
        return self.max_pending if self.max_pending is not None else 4 * self.max_concurrency

    def uvicorn_options(self) -> dict[str, Any]:
        """The connection limits to pass to uvicorn (``uvicorn.run(app, **options)``)."""
        return {
            "timeout_keep_alive": self.keep_alive_s,
            "limit_concurrency": (self.max_connections if self.max_connections is not None
                                  else 4 * self.pending_limit + 16),
            "h11_max_incomplete_event_size": self.max_header_bytes,
        }

    def all_api_keys(self) -> tuple[str, ...]:
        """``api_keys`` plus the keys read from ``api_key_file``.

        Raises:
            ConfigError: the key file is missing, unreadable or holds no key.
        """
        keys = list(self.api_keys)
        if self.api_key_file:
            keys += load_api_keys(self.api_key_file)
        return tuple(dict.fromkeys(keys))

    def to_json(self) -> str:
        """The configuration as JSON (API keys included: keep it out of logs)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown ServeConfig fields: {sorted(unknown)}")
        if "api_keys" in data:
            data["api_keys"] = tuple(data["api_keys"])
        return cls(**data)

    @classmethod
    def from_env(cls) -> ServeConfig:
        """The configuration stored in ``$WILDVISION_SERVE_CONFIG`` (defaults if unset)."""
        text = os.environ.get(CONFIG_ENV)
        return cls.from_json(text) if text else cls()


def load_api_keys(path: str | os.PathLike[str]) -> list[str]:
    """Read API keys from a file: one key per line; blank lines and ``#`` comments ignored.

    Args:
        path: the key file. It should be readable by the service user only.

    Returns:
        The keys, in file order.

    Raises:
        ConfigError: the file cannot be read or holds no key.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"--api-key-file {p}: cannot read ({e.strerror or e})") from e
    keys = [line.strip() for line in text.splitlines()]
    keys = [k for k in keys if k and not k.startswith("#")]
    if not keys:
        raise ConfigError(f"--api-key-file {p}: no API key in the file")
    if any(len(k) < 16 for k in keys):
        raise ConfigError(f"--api-key-file {p}: API keys must be at least 16 characters long")
    return keys


def key_file_is_private(path: str | os.PathLike[str]) -> bool:
    """False when the key file is readable by group or others (POSIX), worth a warning."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return True
    return not mode & (stat.S_IRGRP | stat.S_IROTH)
