"""Progress on stderr for long runs: a plain line (no dependency), or tqdm when installed.

Used by the CLI and by the subpackages' commands alike.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["Progress", "ProgressBar"]


class Progress:
    """A minimal progress line on stderr (no dependency), shown for long runs on a terminal.

    Args:
        total: the number of items, or ``None`` when unknown.
        enabled: ``False`` prints nothing.
        stream: where to write (default: ``sys.stderr``).
    """

    def __init__(self, total: int | None, enabled: bool, stream: TextIO | None = None) -> None:
        self.total, self.enabled = total, enabled
        self.stream = stream or sys.stderr
        self.n = self.failed = 0
        self.t0 = time.perf_counter()
        self._last = 0.0

    def update(self, ok: bool) -> None:
        self.n += 1
        self.failed += 0 if ok else 1
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.5 or self.n == self.total):
            self._last = now
            rate = self.n / max(now - self.t0, 1e-9)
            total = f"/{self.total}" if self.total else ""
            self.stream.write(
                f"\r{self.n}{total} images, {self.failed} failed, {rate:.1f} img/s"
            )
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.n:
            self.stream.write("\n")
            self.stream.flush()


class ProgressBar:
    """tqdm when installed, else :class:`Progress`: ``update(ok)`` per item, ``close()`` at
    the end; silent when not enabled."""

    def __init__(self, total: int, enabled: bool, desc: str = "") -> None:
        self._failed = 0
        self._tqdm: Any = None
        self._plain: Progress | None = None
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            self._plain = Progress(total, True, sys.stderr)
        else:
            self._tqdm = tqdm(total=total, desc=desc or None, unit="img", file=sys.stderr,
                              dynamic_ncols=True, mininterval=0.5)

    def update(self, ok: bool = True) -> None:
        if self._tqdm is not None:
            if not ok:
                self._failed += 1
                self._tqdm.set_postfix(failed=self._failed, refresh=False)
            self._tqdm.update(1)
        elif self._plain is not None:
            self._plain.update(ok)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        elif self._plain is not None:
            self._plain.close()
