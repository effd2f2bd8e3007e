"""Typed errors. Every error wildvision raises on purpose derives from :class:`WildvisionError`."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "HubError",
    "ImageTooLargeError",
    "IndexModelMismatchError",
    "InvalidImageError",
    "MatchIndexError",
    "MissingExtraError",
    "ModelIntegrityError",
    "ModelNotInstalledError",
    "RetentionError",
    "UnknownModelError",
    "UnsupportedFormatError",
    "WildvisionError",
]


class WildvisionError(Exception):
    """Base class of all wildvision errors."""


class InvalidImageError(WildvisionError, ValueError):
    """The input is not a decodable image (empty, truncated, corrupt, not an image)."""


class UnsupportedFormatError(InvalidImageError):
    """The input is an image format or mode wildvision does not read."""


class ImageTooLargeError(InvalidImageError):
    """The image exceeds the pixel limit or the file-size limit (refused before decoding)."""


class UnknownModelError(WildvisionError, LookupError):
    """No model of that name is known. The message lists the valid names."""


class ModelIntegrityError(WildvisionError):
    """A model package is malformed or a weight file does not match its sha256."""


class ModelNotInstalledError(WildvisionError, LookupError):
    """No model was given and no default model is installed."""


class HubError(WildvisionError, ConnectionError):
    """A Hugging Face Hub operation failed: offline, unreachable, or refused (no access)."""


class MissingExtraError(WildvisionError, ImportError):
    """An optional dependency is missing; the message says which extra to install."""

    def __init__(self, package: str, extra: str, purpose: str = "") -> None:
        what = f" for {purpose}" if purpose else ""
        super().__init__(
            f"{package} is required{what}; install it with: pip install 'wildvision[{extra}]'"
        )
        self.package = package
        self.extra = extra


class ConfigError(WildvisionError, ValueError):
    """An invalid configuration (recipe, thresholds, preprocessing, CLI options)."""


class DataError(WildvisionError, ValueError):
    """An invalid dataset or manifest (missing files, unknown labels, empty classes)."""


class MatchIndexError(WildvisionError, ValueError):
    """A known-photo index (:mod:`wildvision.match`) is unreadable, corrupt or inconsistent
    (a truncated file, a duplicate reference, arrays of different lengths)."""


class IndexModelMismatchError(MatchIndexError):
    """A known-photo index was made with another model than the one asked to use it: its
    embeddings are not comparable. The message names both models."""


class RetentionError(WildvisionError):
    """Extending a model would cost one of its base groups more than the allowed F1 drop on
    the base model's validation bank; nothing was written (``force`` writes it anyway)."""
