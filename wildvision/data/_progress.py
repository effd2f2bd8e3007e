"""The progress bar of the ``data`` commands: :class:`wildvision.progress.ProgressBar`."""

from __future__ import annotations

from ..progress import ProgressBar as ProgressBar

__all__ = ["ProgressBar"]
