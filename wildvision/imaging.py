"""Safe image decoding: size limits before decoding, EXIF orientation, mode conversion to RGB,
first frame of animations, and JPEG draft decoding.

Nothing here changes process-wide Pillow settings: limits are checked per call against the
image header, before any pixel is decoded.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from struct import error as struct_error  # raised by some Pillow plugins on garbage
from typing import IO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageTooLargeError, InvalidImageError, UnsupportedFormatError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "SUPPORTED_FORMATS",
    "DecodedImage",
    "ImageSource",
    "collect_inputs",
    "decode_image",
    "load_image",
    "source_name",
]

ImageSource = Union[str, os.PathLike[str], bytes, bytearray, memoryview, IO[bytes], Image.Image,
                    np.ndarray]

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
# Formats a seller's upload can reasonably be in. Anything else Pillow happens to read
# (ICO, PSD, EPS via ghostscript ...) is refused rather than guessed at.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF"})
# File name endings of those formats: what a folder given as input is expanded to.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".mpo"}
)
# What Pillow's decoders raise on corrupt data (plugins are not consistent about it). Anything
# else (MemoryError, KeyboardInterrupt ...) is not a property of the file and propagates.
_DECODER_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError,
    ZeroDivisionError, AttributeError, NotImplementedError, struct_error,
)


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image with where it came from.

    Attributes:
        image: the decoded RGB image, EXIF orientation applied (possibly draft-reduced).
        sha256: sha256 of the encoded bytes for file/bytes inputs; of the RGB pixel buffer
            (row-major, uint8) for PIL and array inputs.
        source: a printable name of the input (its path, or ``<bytes>`` ...).
        original_size: (width, height) of the stored image before draft reduction and before
            EXIF rotation.
    """

    image: Image.Image
    sha256: str
    source: str
    original_size: tuple[int, int]


def source_name(source: object) -> str:
    """A printable, stable name of an input, used in results and error messages."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(source, Image.Image):
        name = getattr(source, "filename", "")
        return str(name) if name else "<PIL.Image>"
    if isinstance(source, np.ndarray):
        return "<ndarray>"
    name = getattr(source, "name", None)
    if isinstance(name, str):
        return name
    return f"<{type(source).__name__}>"


def _read_source_bytes(source: object, name: str, max_bytes: int) -> bytes:
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if isinstance(source, str) and text.lower().startswith(("http://", "https://", "ftp://")):
            raise InvalidImageError(
                f"{name}: URLs are never fetched by wildvision (download the image yourself)"
            )
        path = Path(text)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise InvalidImageError(f"{name}: file not found") from None
        except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
            reason = getattr(e, "strerror", None) or e
            raise InvalidImageError(f"{name}: cannot read file ({reason})") from e
        if path.is_dir():
            raise InvalidImageError(f"{name}: is a directory, not an image file")
        if size > max_bytes:
            raise ImageTooLargeError(
                f"{name}: file is {size:,} bytes, over the limit of {max_bytes:,} bytes"
            )
        try:
            # Bounded read: a device or a file growing meanwhile cannot exhaust memory.
            with open(path, "rb") as f:
                data = f.read(max_bytes + 1)
        except OSError as e:
            raise InvalidImageError(f"{name}: cannot read file ({e.strerror or e})") from e
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "read"):
        try:
            data = source.read(max_bytes + 1)
        except OSError as e:
            raise InvalidImageError(f"{name}: cannot read file object ({e})") from e
        if not isinstance(data, bytes):
            raise InvalidImageError(f"{name}: file object must be opened in binary mode")
    else:
        raise InvalidImageError(
            f"{name}: unsupported input type {type(source).__name__}; expected a path, bytes, "
            "a binary file object, a PIL image or an HxWx3 uint8 array"
        )
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"{name}: data is over the limit of {max_bytes:,} bytes")
    return data


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode we accept to RGB. Transparent pixels are composited on white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow's own I->RGB conversion clips at 255 (a 16-bit photo turns white);
        # rescale the 16-bit range instead.
        arr = np.asarray(img, dtype=np.float64)
        if mode == "I" and arr.max(initial=0) <= 255 and arr.min(initial=0) >= 0:
            arr8 = arr.astype(np.uint8)
        else:
            arr8 = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([arr8] * 3, axis=-1), "RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        arr8 = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([arr8] * 3, axis=-1), "RGB")
    if mode in ("L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return img.convert("RGB")
    raise UnsupportedFormatError(f"unsupported image mode {mode!r}")


def _decode_bytes(
    data: bytes, name: str, max_pixels: int, draft_size: tuple[int, int] | None
) -> tuple[Image.Image, tuple[int, int]]:
    if not data:
        raise InvalidImageError(f"{name}: empty file (0 bytes)")
    try:
        # Pillow's own bomb check (at 2x its MAX_IMAGE_PIXELS) may fire inside open().
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(
            f"{name}: image dimensions exceed the pixel limit, refused before decoding ({e})"
        ) from e
    except UnidentifiedImageError as e:
        head = data[:64].lstrip().lower()
        hint = ""
        if head.startswith((b"<!doctype", b"<html", b"<?xml", b"{", b"<svg")):
            hint = " (looks like HTML/XML/JSON text, not an image)"
        raise InvalidImageError(f"{name}: not a recognised image format{hint}") from e
    except _DECODER_ERRORS as e:
        raise InvalidImageError(f"{name}: corrupt image header ({e})") from e
    fmt = img.format or "unknown"
    if fmt not in SUPPORTED_FORMATS:
        raise UnsupportedFormatError(
            f"{name}: unsupported image format {fmt}; supported: "
            f"{', '.join(sorted(SUPPORTED_FORMATS))}"
        )
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"{name}: image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name}: {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (refused before decoding)"
        )
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # animated GIF/WebP/APNG: the first frame
        if draft_size is not None and fmt in ("JPEG", "MPO"):
            # Decode at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides at or
            # above draft_size: as good as a full decode for a model that resizes down anyway,
            # and several times cheaper on listing-size photos.
            img.draft(None, draft_size)
        img.load()
        img = ImageOps.exif_transpose(img) or img
        rgb = _to_rgb(img)
        rgb.load()
    except (ImageTooLargeError, UnsupportedFormatError) as e:
        raise type(e)(f"{name}: {e}") from e
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{name}: image exceeds the pixel limit ({e})") from e
    except _DECODER_ERRORS as e:
        raise InvalidImageError(f"{name}: truncated or corrupt image data ({e})") from e
    return rgb, (width, height)


def decode_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    draft_size: tuple[int, int] | None = None,
) -> DecodedImage:
    """Decode any supported input to RGB and keep its provenance (see :class:`DecodedImage`).

    Args:
        source: a path, bytes, a binary file object, a PIL image or an HxWx3 (or HxW) uint8
            array.
        max_pixels: refuse images with more pixels than this, before decoding them.
        max_bytes: refuse files or byte strings larger than this.
        draft_size: for JPEG inputs, decode at a reduced DCT scale whose result is still at
            least this (width, height); ``None`` decodes at full size.

    Raises:
        InvalidImageError: unreadable input (missing, empty, truncated, corrupt, not an image).
        UnsupportedFormatError: an image format or mode wildvision does not read.
        ImageTooLargeError: over ``max_pixels`` or ``max_bytes``.
    """
    name = source_name(source)
    if isinstance(source, Image.Image):
        w, h = source.size
        if w * h > max_pixels:
            raise ImageTooLargeError(f"{name}: {w}x{h} pixels, over the limit of {max_pixels:,}")
        if w == 0 or h == 0:
            raise InvalidImageError(f"{name}: image has no pixels ({w}x{h})")
        img = source
        try:
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            rgb = _to_rgb(ImageOps.exif_transpose(img) or img)
        except UnsupportedFormatError as e:
            raise UnsupportedFormatError(f"{name}: {e}") from e
        except _DECODER_ERRORS as e:
            raise InvalidImageError(f"{name}: cannot read PIL image ({e})") from e
        digest = hashlib.sha256(np.ascontiguousarray(np.asarray(rgb)).tobytes()).hexdigest()
        return DecodedImage(rgb, digest, name, (w, h))
    if isinstance(source, np.ndarray):
        arr = source
        if arr.dtype != np.uint8:
            raise InvalidImageError(f"{name}: array dtype must be uint8, got {arr.dtype}")
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise InvalidImageError(
                f"{name}: array must be HxWx3 (RGB) uint8, got shape {tuple(source.shape)}"
            )
        h, w = arr.shape[:2]
        if h == 0 or w == 0:
            raise InvalidImageError(f"{name}: image has no pixels ({w}x{h})")
        if w * h > max_pixels:
            raise ImageTooLargeError(f"{name}: {w}x{h} pixels, over the limit of {max_pixels:,}")
        rgb = _to_rgb(Image.fromarray(np.ascontiguousarray(arr)))
        digest = hashlib.sha256(np.ascontiguousarray(np.asarray(rgb)).tobytes()).hexdigest()
        return DecodedImage(rgb, digest, name, (w, h))
    data = _read_source_bytes(source, name, max_bytes)
    img, size = _decode_bytes(data, name, max_pixels, draft_size)
    return DecodedImage(img, hashlib.sha256(data).hexdigest(), name, size)


def load_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Load any supported input as an RGB PIL image, safely.

    EXIF orientation is applied; CMYK, L, LA, P (with transparency), RGBA (composited on
    white), I;16 and 16-bit PNGs become RGB; animated GIF/WebP give their first frame.

    Args:
        source: a path, bytes, a binary file object, a PIL image or an HxWx3 uint8 array.
        max_pixels: refuse images with more pixels (checked on the header, before decoding).
        max_bytes: refuse files larger than this many bytes.
        draft_size: JPEG only: decode at the cheapest DCT scale giving at least this size.

    Returns:
        An RGB ``PIL.Image.Image``.

    Raises:
        InvalidImageError: missing, empty, truncated, corrupt or non-image input (the message
            names the file and the reason).
        UnsupportedFormatError: a format or mode wildvision does not read.
        ImageTooLargeError: over the pixel or byte limit.

    Example:
        >>> img = load_image("listing.jpg")  # doctest: +SKIP
        >>> img.mode
        'RGB'
    """
    return decode_image(
        source, max_pixels=max_pixels, max_bytes=max_bytes, draft_size=draft_size
    ).image


def collect_inputs(paths: Sequence[str | os.PathLike[str]], recursive: bool = False
                   ) -> list[str]:
    """Expand folders into their image files (:data:`IMAGE_EXTENSIONS`, sorted, hidden files
    and folders skipped); files are kept as given, even when missing, so that every input the
    user named gets a result.

    Args:
        paths: image files and folders.
        recursive: descend into sub-folders.

    Returns:
        The inputs, each folder replaced by its image files.
    """
    out: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            it: Iterable[Path] = path.rglob("*") if recursive else path.iterdir()
            files = sorted(
                str(f) for f in it
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in f.relative_to(path).parts)
            )
            out.extend(files)
        else:
            out.append(os.fspath(p))
    return out
