"""A progress bar on stderr: tqdm when installed, else wildvision's plain progress line."""

from __future__ import annotations

import sys
from typing import Any


class ProgressBar:
    """``update(ok)`` per item, ``close()`` at the end; silent when not enabled."""

    def __init__(self, total: int, enabled: bool, desc: str = "") -> None:
        self._failed = 0
        self._tqdm: Any = None
        self._plain: Any = None
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            from ..cli import Progress

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
