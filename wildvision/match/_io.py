"""Small file helpers of :mod:`wildvision.match`: atomic writes and string arrays."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import numpy as np
from numpy.typing import NDArray

__all__ = ["atomic_write", "csv_safe", "str_array"]


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file in the same folder, then
    rename it over ``path``: an interrupted or failed write leaves the old file as it was."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def csv_safe(text: str) -> str:
    return text.replace(",", ";").replace("\n", " ")


def str_array(values: Sequence[str]) -> NDArray[np.str_]:
    return np.array(list(values), dtype=np.str_) if values else np.zeros(0, dtype="<U1")
