"""The service's state (its model, thread pool and load counters) and the admission rules
every classify request goes through: API key, model ready, pending and running limits, and
the request deadline."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ._config import ServeConfig
from ._errors import _ApiError
from ._logging import log

T = TypeVar("T")


@dataclass
class _ServiceState:
    config: ServeConfig
    api_keys: tuple[bytes, ...]
    pool: ThreadPoolExecutor
    classifier: Any = None  # wildvision.predict.Classifier once loaded
    load_error: BaseException | None = None
    loaded_at: float | None = None
    running: int = 0  # inferences in the thread pool (only touched on the event loop)
    overrun: int = 0  # of those, the ones whose request already timed out (idem)
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

    def check_key(self, given: str) -> None:
        """Raise 401 unless ``given`` is one of the API keys (when keys are configured)."""
        if not self.api_keys:
            return
        given_b = given.encode()
        match = False
        for key in self.api_keys:  # every key compared, in constant time each
            match |= hmac.compare_digest(given_b, key)
        if not match:
            raise _ApiError(401, "Unauthorized",
                            "missing or invalid API key (Authorization: Bearer <key> or "
                            "X-API-Key: <key>)", {"WWW-Authenticate": "Bearer"})

    def busy(self, message: str) -> _ApiError:
        return _ApiError(503, "ServiceUnavailable", message,
                         {"Retry-After": str(self.config.retry_after_s)})

    def ready_classifier(self) -> Any:
        """The loaded classifier, or 503 while it loads (or after its load failed)."""
        clf = self.classifier
        if clf is None:
            if self.load_error is not None:
                raise _ApiError(503, "ModelLoadError", "the model failed to load; see the "
                                "server log",
                                {"Retry-After": str(self.config.retry_after_s * 30)})
            raise self.busy("the model is still loading")
        return clf

    @asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """Count a request as pending while it runs; 503 past ``max_pending``."""
        if self.pending >= self.config.pending_limit:
            raise self.busy(f"server busy: {self.pending} requests in progress")
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    async def within(self, deadline: float, what: Awaitable[T]) -> T:
        """Await ``what`` (reading the body) until ``deadline``; 408 after it."""
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            return await asyncio.wait_for(what, remaining)
        except asyncio.TimeoutError:
            if asyncio.iscoroutine(what):
                what.close()
            raise _ApiError(408, "RequestTimeout", "the request body did not arrive within "
                            f"{self.config.request_timeout_s:g} s") from None

    async def run_inference(self, fn: Callable[[], T], deadline: float) -> T:
        """Run ``fn`` in the inference pool; 503 when every slot is taken, 504 past
        ``deadline``."""
        cfg = self.config
        # A bound, not a queue: no free slot -> 503 at once. The slot is released when the
        # thread finishes, not when the client gives up, so timed-out work still counts.
        if self.running >= cfg.max_concurrency:
            raise self.busy(f"server busy: {self.running} inferences running "
                            f"(limit {cfg.max_concurrency})")
        self.running += 1
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.pool, fn)

        def release(f: asyncio.Future[T]) -> None:
            self.running -= 1
            if not f.cancelled():
                f.exception()  # mark retrieved even when nobody awaits it any more

        fut.add_done_callback(release)
        remaining = deadline - time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), max(remaining, 0.0))
        except asyncio.TimeoutError:
            if not fut.done():  # counted as overrun until it ends (see /readyz)
                self.overrun += 1

                def end_overrun(_: asyncio.Future[T]) -> None:
                    self.overrun -= 1

                fut.add_done_callback(end_overrun)
            raise _ApiError(504, "Timeout", "inference did not finish within "
                            f"{cfg.request_timeout_s:g} s") from None
