"""Crafted hostile image files, each with the result wildvision documents for it.

The files are small on disk and cheap to make, but each one costs a naive decoder minutes of
CPU or gigabytes of memory: thousands of progressive-JPEG scans, a TIFF of 100,000 pages or a
million strips, 40-megapixel 16/32-bit and float images, an APNG declaring millions of frames,
a zTXt and an iCCP chunk that inflate to 64 MB each, a JPEG with a 16 MB ICC
profile. ``tests/test_crafted.py`` decodes each in a fresh process and bounds its time and peak
memory; ``docs/deployment.md`` (threat model) lists the same results.

Run it to write the files to a folder (for a fuzzer's seed corpus, or to try them on a running
service)::

    python tests/make_crafted.py OUT_DIR
"""

from __future__ import annotations

import io
import re
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Crafted:
    """A crafted file: its bytes and its documented result.

    ``error`` is the name of the :mod:`wildvision.errors` class ``load_image`` raises, or
    ``None`` when the file loads (as RGB of ``size``).
    """

    name: str
    make: Callable[[], bytes]
    error: str | None
    size: tuple[int, int] | None
    note: str


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def many_scans_jpeg(side: int = 2048, extra_scans: int = 400) -> bytes:
    """A progressive JPEG of a flat grey ``side`` x ``side`` image whose last (tiny) scan is
    repeated ``extra_scans`` times: every scan is a pass over the whole image."""
    data = _encode(Image.new("RGB", (side, side), (128, 128, 128)), "JPEG", progressive=True,
                   quality=90)
    last = [m.start() for m in re.finditer(rb"\xff\xda", data)][-1]
    eoi = data.rfind(b"\xff\xd9")
    return data[:eoi] + data[last:eoi] * extra_scans + data[eoi:]


def _tiff_ifd(entries: list[tuple[int, int, int, bytes | int]], next_ifd: int) -> bytes:
    """A little-endian IFD; ``entries`` are (tag, type, count, value-or-inline-int)."""
    out = struct.pack("<H", len(entries))
    for tag, typ, count, value in sorted(entries):
        raw = struct.pack("<I", value) if isinstance(value, int) else value.ljust(4, b"\0")
        out += struct.pack("<HHI", tag, typ, count) + raw
    return out + struct.pack("<I", next_ifd)


def _gray_tiff_entries(width: int, height: int, rows_per_strip: int, strips: int,
                       offsets: int | bytes, counts: int | bytes) -> list[tuple[int, int, int,
                                                                           bytes | int]]:
    short, long_ = 3, 4
    return [
        (256, long_, 1, width), (257, long_, 1, height), (258, short, 1, 8),
        (259, short, 1, 1), (262, short, 1, 1), (273, long_, strips, offsets),
        (277, short, 1, 1), (278, long_, 1, rows_per_strip), (279, long_, strips, counts),
    ]


def many_pages_tiff(pages: int = 100_000) -> bytes:
    """A TIFF of ``pages`` 8x8 greyscale pages sharing one pixel block."""
    pixels = bytes(range(64))
    header_len, ifd_len = 8, 2 + 9 * 12 + 4
    data_at = header_len + pages * ifd_len
    parts = [b"II*\0" + struct.pack("<I", header_len)]
    for i in range(pages):
        nxt = header_len + (i + 1) * ifd_len if i + 1 < pages else 0
        parts.append(_tiff_ifd(_gray_tiff_entries(8, 8, 8, 1, data_at, 64), nxt))
    return b"".join(parts) + pixels


def many_strips_tiff(strips: int = 1_000_000, width: int = 8) -> bytes:
    """A ``width`` x ``strips`` greyscale TIFF of one-row strips, all pointing at the same row."""
    header_len, ifd_len = 8, 2 + 9 * 12 + 4
    offsets_at = header_len + ifd_len
    counts_at = offsets_at + 4 * strips
    row_at = counts_at + 4 * strips
    ifd = _tiff_ifd(_gray_tiff_entries(width, strips, 1, strips, offsets_at, counts_at), 0)
    return (b"II*\0" + struct.pack("<I", header_len) + ifd
            + np.full(strips, row_at, "<u4").tobytes() + np.full(strips, width, "<u4").tobytes()
            + bytes(width))


def _ramp_row(width: int, dtype: str, top: float) -> np.ndarray:
    # A ramp repeating every 256 columns.
    return ((np.arange(width) % 256) * (top / 255)).astype(dtype)


def gray16_png(side: int = 6324) -> bytes:
    """A ``side`` x ``side`` 16-bit greyscale PNG, every row the same ramps over 0..65535
    (rows after the first use PNG's "up" filter: all zeros, written in a blink)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    first = b"\0" + _ramp_row(side, ">u2", 65535).tobytes()
    rest = b"\2" + bytes(2 * side)
    z = zlib.compressobj(9)
    idat = z.compress(first) + b"".join(z.compress(rest) for _ in range(side - 1)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def _one_row_tiff(side: int, row: bytes, sample_format: int) -> bytes:
    """A ``side`` x ``side`` uncompressed one-sample 32-bit TIFF whose one-row strips all point
    at the same ``row``: 40 megapixels to decode from a 76 KB file."""
    header_len, n_entries = 8, 10
    ifd_len = 2 + n_entries * 12 + 4
    offsets_at = header_len + ifd_len
    counts_at = offsets_at + 4 * side
    row_at = counts_at + 4 * side
    short, long_ = 3, 4
    entries: list[tuple[int, int, int, bytes | int]] = [
        (256, long_, 1, side), (257, long_, 1, side), (258, short, 1, 32), (259, short, 1, 1),
        (262, short, 1, 1), (273, long_, side, offsets_at), (277, short, 1, 1),
        (278, long_, 1, 1), (279, long_, side, counts_at), (339, short, 1, sample_format),
    ]
    return (b"II*\0" + struct.pack("<I", header_len) + _tiff_ifd(entries, 0)
            + np.full(side, row_at, "<u4").tobytes() + np.full(side, len(row), "<u4").tobytes()
            + row)


def int32_tiff(side: int = 6324) -> bytes:
    """A ``side`` x ``side`` 32-bit integer (mode I) TIFF, values 0..65535."""
    return _one_row_tiff(side, _ramp_row(side, "<i4", 65535).tobytes(), 2)


def float32_tiff(side: int = 6324) -> bytes:
    """A ``side`` x ``side`` 32-bit float (mode F) TIFF, values 0..1."""
    return _one_row_tiff(side, _ramp_row(side, "<f4", 1.0).tobytes(), 3)


def apng_frame_bomb(side: int = 1024, frames: int = 20, declared: int = 2**31 - 1) -> bytes:
    """An APNG of ``frames`` flat ``side`` x ``side`` frames whose acTL chunk declares
    ``declared`` frames."""
    imgs = [Image.new("RGB", (side, side), (i * 10 % 256, 80, 160)) for i in range(frames)]
    data = _encode(imgs[0], "PNG", save_all=True, append_images=imgs[1:], duration=10)
    at = data.index(b"acTL") - 4
    actl = _png_chunk(b"acTL", struct.pack(">II", declared, 0))
    return data[:at] + actl + data[at + 4 + 4 + 8 + 4:]


def _png_with_chunk(chunk: bytes) -> bytes:
    png = _encode(Image.new("RGB", (32, 24), (10, 120, 200)), "PNG")
    return png[:33] + chunk + png[33:]  # right after IHDR


def ztxt_bomb_png(inflated: int = 64 * 1024 * 1024) -> bytes:
    """A small PNG with a zTXt chunk that inflates to ``inflated`` bytes."""
    return _png_with_chunk(_png_chunk(
        b"zTXt", b"Comment\0\0" + zlib.compress(bytes(inflated), 9)))


def iccp_bomb_png(inflated: int = 64 * 1024 * 1024) -> bytes:
    """A small PNG with an iCCP chunk that inflates to ``inflated`` bytes."""
    return _png_with_chunk(_png_chunk(
        b"iCCP", b"bomb\0\0" + zlib.compress(bytes(inflated), 9)))


def huge_icc_jpeg(icc_bytes: int = 16 * 1024 * 1024) -> bytes:
    """A small JPEG carrying a ``icc_bytes`` ICC profile (garbage) in 64 KB APP2 chunks."""
    icc = np.random.default_rng(7).bytes(icc_bytes)
    return _encode(Image.new("RGB", (64, 48), (200, 30, 30)), "JPEG", icc_profile=icc)


CRAFTED: tuple[Crafted, ...] = (
    Crafted("many_scans.jpg", many_scans_jpeg, "ImageTooLargeError", None,
            "progressive JPEG, 2048x2048, 410 scans: refused before decoding (scan limit)"),
    Crafted("many_pages.tif", many_pages_tiff, None, (8, 8),
            "100,000 pages: the first page is read, the pages are never counted"),
    Crafted("many_strips.tif", many_strips_tiff, "ImageTooLargeError", None,
            "one million strips: refused before decoding (strip/tile limit)"),
    Crafted("gray16.png", gray16_png, None, (6324, 6324),
            "16-bit greyscale, 40 megapixels: converted without float temporaries"),
    Crafted("int32.tif", int32_tiff, None, (6324, 6324), "32-bit integer, 40 megapixels"),
    Crafted("float32.tif", float32_tiff, None, (6324, 6324), "32-bit float, 40 megapixels"),
    Crafted("apng_bomb.png", apng_frame_bomb, None, (1024, 1024),
            "APNG declaring 2^31-1 frames: the first frame is read"),
    Crafted("ztxt_bomb.png", ztxt_bomb_png, "InvalidImageError", None,
            "zTXt chunk inflating to 64 MB: Pillow stops at 1 MB of text"),
    Crafted("iccp_bomb.png", iccp_bomb_png, "InvalidImageError", None,
            "iCCP chunk inflating to 64 MB: Pillow stops at 1 MB"),
    Crafted("huge_icc.jpg", huge_icc_jpeg, None, (64, 48),
            "16 MB ICC profile in 257 APP2 segments: loaded, profile ignored"),
)


def write_all(out_dir: str | Path) -> list[Path]:
    """Write every crafted file into ``out_dir``; returns their paths."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for c in CRAFTED:
        path = root / c.name
        path.write_bytes(c.make())
        paths.append(path)
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/make_crafted.py OUT_DIR")
    for p in write_all(sys.argv[1]):
        print(f"{p}\t{p.stat().st_size:,} bytes")
