"""Safe image decoding: size limits before decoding, EXIF orientation, mode conversion to RGB,
first frame of animations, and JPEG draft decoding.

Nothing here changes process-wide Pillow settings: limits are checked per call against the
image header, before any pixel is decoded.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from struct import error as struct_error  # raised by some Pillow plugins on garbage
from typing import IO, Union

import numpy as np
from PIL import (  # the plugins of SUPPORTED_FORMATS, registered in this order
    BmpImagePlugin,  # noqa: F401
    GifImagePlugin,  # noqa: F401
    Image,
    ImageOps,
    JpegImagePlugin,  # noqa: F401
    MpoImagePlugin,  # noqa: F401
    PngImagePlugin,  # noqa: F401
    TiffImagePlugin,  # noqa: F401
    UnidentifiedImageError,
    WebPImagePlugin,  # noqa: F401
)

from .errors import ImageTooLargeError, InvalidImageError, UnsupportedFormatError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_JPEG_SCANS",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_TIFF_BLOCKS",
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
# Decoding a progressive JPEG costs one pass over the whole image per scan (SOS marker), so a
# small file of thousands of tiny scans keeps a decoder busy for minutes. Encoders write about
# 10 scans (libjpeg's default progressive script), a few hundred at the most thorough
# settings; more is refused before decoding.
DEFAULT_MAX_JPEG_SCANS = 100
# Marker segments (APPn, DQT, DHT, SOS ...) read before giving up on a JPEG: real files have a
# few dozen (a large ICC profile split into 64 KB chunks: some hundreds).
_MAX_JPEG_SEGMENTS = 10_000
# TIFF strips or tiles of the first page: Pillow handles each one separately (14 s for two
# million). One strip per row of a 40-megapixel image with four planes stays under this.
DEFAULT_MAX_TIFF_BLOCKS = 200_000
# Formats a seller's upload can reasonably be in. Anything else Pillow happens to read
# (ICO, PSD, EPS via ghostscript ...) is refused rather than guessed at.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF"})
# File name endings of those formats: what a folder given as input is expanded to.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".mpo"}
)
# Pillow's registration order of the supported formats (JPEG's factory also returns MPO).
_OPEN_ORDER = tuple(f for f in Image.ID if f in SUPPORTED_FORMATS)
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


_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
# Rows of a high-bit-depth image converted at a time: the numpy temporaries stay a few MB
# whatever the image size (a whole 40-megapixel float64 copy is 320 MB, and there were four).
_BAND_PIXELS = 1 << 20


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit integer and float images to 8-bit greyscale, band by band.

    I;16 (and I with values outside 0..255) is rescaled from the 16-bit range, F from 0..1 when
    its values are within that range (else taken as 0..255): Pillow's own conversion clips at
    255, turning a 16-bit photo white. Same results as whole-image float64 arithmetic.
    """
    extrema = img.getextrema()  # in C, no copy; one (min, max) pair for one band
    lo, hi = (float(v) for v in extrema[:2])  # type: ignore[arg-type]
    mode = img.mode
    w, h = img.size
    out = np.empty((h, w), np.uint8)
    rows = max(1, _BAND_PIXELS // max(w, 1))
    as_is = mode == "I" and lo >= 0 and hi <= 255
    scale = 255.0 if mode == "F" and hi <= 1.0 else 1.0
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        band = np.asarray(img.crop((0, y0, w, y1)))
        if mode == "F":
            with np.errstate(invalid="ignore"):
                vals = np.rint(band.astype(np.float64) * scale)
                vals = np.nan_to_num(vals, nan=0.0)
                out[y0:y1] = np.clip(vals, 0, 255)
        elif as_is:
            out[y0:y1] = band
        else:
            # rint(x / 257) for integers, without floats: (x + 128) // 257.
            out[y0:y1] = np.clip((band.astype(np.int64) + 128) // 257, 0, 255)
    return Image.fromarray(out, "L")


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
    if mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_l(img).convert("RGB")
    if mode in ("L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return img.convert("RGB")
    raise UnsupportedFormatError(f"unsupported image mode {mode!r}")


def _jpeg_structure(data: bytes, max_scans: int) -> tuple[int, int]:
    """(scans, marker segments) of the first image of a JPEG stream, counted on the markers
    alone; counting stops past ``max_scans`` scans or ``_MAX_JPEG_SEGMENTS`` segments.

    Marker segments are skipped by their length; inside entropy-coded data a marker is 0xFF
    followed by anything but 0x00 (a stuffed 0xFF byte), 0xD0-0xD7 (restart) or 0xFF (fill).
    """
    n = len(data)
    pos, scans, segments = 2, 0, 0
    while scans <= max_scans and segments <= _MAX_JPEG_SEGMENTS:
        m = _JPEG_MARKER.search(data, pos)
        if m is None:
            break
        code = m.group(1)[0]
        pos = m.end()
        if code == 0xD9:  # EOI: the end of the first image (an MPO's others are not read)
            break
        if code in (0x01, 0xD8):  # standalone markers
            continue
        if pos + 2 > n:
            break
        segments += 1
        scans += code == 0xDA
        pos += int.from_bytes(data[pos:pos + 2], "big")
    return scans, segments


_JPEG_MARKER = re.compile(rb"\xff+([^\x00\xd0-\xd7\xff])")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _tiff_blocks(data: bytes) -> int:
    """Strips or tiles of a TIFF's first page, read from its header: Pillow would build a
    Python list of them before any check could run."""
    bo = "<" if data[:2] == b"II" else ">"
    try:
        if data[2:4] in (b"*\x00", b"\x00*"):  # classic TIFF
            off = struct.unpack_from(bo + "I", data, 4)[0]
            count = struct.unpack_from(bo + "H", data, off)[0]
            first, size, fmt = off + 2, 12, bo + "HHI"
        else:  # BigTIFF
            off = struct.unpack_from(bo + "Q", data, 8)[0]
            count = struct.unpack_from(bo + "Q", data, off)[0]
            first, size, fmt = off + 8, 20, bo + "HHQ"
        blocks = 0
        for i in range(min(count, 4096)):  # real pages have a few dozen tags
            tag, _type, n = struct.unpack_from(fmt, data, first + i * size)
            if tag in (273, 324):  # StripOffsets, TileOffsets
                blocks = max(blocks, n)
        return blocks
    except struct_error:
        return 0  # a cut header: Pillow reports it


def _check_structure(data: bytes, name: str) -> None:
    """Refuse, before decoding, files whose decoding cost is not bounded by their pixels."""
    if data[:2] == b"\xff\xd8":
        scans, segments = _jpeg_structure(data, DEFAULT_MAX_JPEG_SCANS)
        if scans > DEFAULT_MAX_JPEG_SCANS:
            raise ImageTooLargeError(
                f"{name}: JPEG with over {DEFAULT_MAX_JPEG_SCANS} scans (each one a pass over "
                "the whole image), refused before decoding"
            )
        if segments > _MAX_JPEG_SEGMENTS:
            raise ImageTooLargeError(
                f"{name}: JPEG with over {_MAX_JPEG_SEGMENTS:,} marker segments, refused "
                "before decoding"
            )
    elif data[:4] in _TIFF_MAGIC:
        blocks = _tiff_blocks(data)
        if blocks > DEFAULT_MAX_TIFF_BLOCKS:
            raise ImageTooLargeError(
                f"{name}: TIFF with {blocks:,} strips or tiles, over the limit of "
                f"{DEFAULT_MAX_TIFF_BLOCKS:,} (refused before decoding)"
            )


def _open(data: bytes) -> Image.Image:
    """``Image.open`` without its decompression-bomb warning.

    The plugins of the supported formats are tried directly, in Pillow's order: the caller
    checks the pixel limit on the header. ``Image.open`` warns above Pillow's own limit, and
    silencing that takes ``warnings.catch_warnings``, which swaps the process-wide filter list
    and is not thread-safe (decoding runs in threads). Other formats go through
    ``Image.open`` to be named, then refused.
    """
    fp = io.BytesIO(data)
    prefix = data[:16]
    for fmt in _OPEN_ORDER:
        factory, accept = Image.OPEN[fmt]
        verdict = accept(prefix) if accept else True
        if verdict is True or (verdict and not isinstance(verdict, str)):
            fp.seek(0)
            try:
                return factory(fp, "")
            except (SyntaxError, IndexError, TypeError, struct_error):
                continue  # as Image.open does: not this format after all
    fp.seek(0)
    return Image.open(fp)


_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that displays the image upright (as ImageOps.exif_transpose).
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}


def _reduce_for_draft(img: Image.Image, draft_size: tuple[int, int]) -> Image.Image:
    """Shrink an image by the integer factor (box filter) that keeps both sides at or above
    ``draft_size``, as JPEG draft decoding does at a DCT scale."""
    factor = min(img.width // max(draft_size[0], 1), img.height // max(draft_size[1], 1))
    return img.reduce(factor) if factor >= 2 else img


def _decode_bytes(
    data: bytes, name: str, max_pixels: int, draft_size: tuple[int, int] | None
) -> tuple[Image.Image, tuple[int, int]]:
    if not data:
        raise InvalidImageError(f"{name}: empty file (0 bytes)")
    _check_structure(data, name)
    try:
        img = _open(data)
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
        # Image.open leaves an animation (GIF, WebP, APNG) or a multi-page TIFF at its first
        # frame; asking for n_frames would count every page (quadratic in Pillow's TIFF).
        if draft_size is not None and fmt in ("JPEG", "MPO"):
            # Decode at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides at or
            # above draft_size: as good as a full decode for a model that resizes down anyway,
            # and several times cheaper on listing-size photos.
            img.draft(None, draft_size)
        img.load()
        if img.mode in _HIGH_DEPTH_MODES:
            # To 8 bits band by band, then (draft) shrunk: no full-size float or RGB copy.
            turn = _EXIF_TRANSPOSE.get(img.getexif().get(_ORIENTATION_TAG, 1))
            img = _high_depth_to_l(img)  # a new image: the EXIF stays behind
            if draft_size is not None:
                img = _reduce_for_draft(img, draft_size)
            if turn is not None:
                img = img.transpose(turn)
        else:
            # in place: the decoded image is ours, and the default would copy it when (as for
            # most photos) there is nothing to rotate
            ImageOps.exif_transpose(img, in_place=True)
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
            if img.tell() != 0:
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
