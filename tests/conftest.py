"""Shared test fixtures: no network, the tiny test model, the real photos (when present)."""

from __future__ import annotations

import io
import ipaddress
import os
import socket
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytest
from PIL import Image

from wildvision.errors import (
    ImageTooLargeError,
    InvalidImageError,
    UnsupportedFormatError,
    WildvisionError,
)

# huggingface_hub reads HF_HUB_OFFLINE once, when it is first imported (timm imports it too), so
# it is set here, before any test module is collected, as well as per test below.
os.environ["HF_HUB_OFFLINE"] = "1"

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
TINY_MODEL_DIR = TESTS_DIR / "data" / "tiny-model"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


class NetworkBlockedError(RuntimeError):
    """Raised when a test tries to reach a non-local address."""


def _is_local_host(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    host = host.strip("[]").lower()
    if host in _LOCAL_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def _check_address(family: int, address: Any) -> None:
    if family not in (socket.AF_INET, socket.AF_INET6):
        return  # AF_UNIX and friends stay local by nature
    host = address[0] if isinstance(address, tuple) and address else address
    if not _is_local_host(host):
        raise NetworkBlockedError(
            f"tests must not use the network: connection to {address!r} blocked "
            "(only 127.0.0.1/localhost and AF_UNIX sockets are allowed)"
        )


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Block outbound sockets except loopback and AF_UNIX; force Hugging Face Hub offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_sendto = socket.socket.sendto
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        _check_address(self.family, address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        _check_address(self.family, address)
        return real_connect_ex(self, address)

    def sendto(self: socket.socket, data: bytes, *args: Any) -> int:
        _check_address(self.family, args[-1])
        return real_sendto(self, data, *args)  # type: ignore[arg-type]

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and not _is_local_host(host):
            raise NetworkBlockedError(f"tests must not use the network: DNS lookup of {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket.socket, "sendto", sendto)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny test model package (``tests/data/tiny-model``): its outputs follow a colour rule
    (tests/make_tiny_model.py), so they differ between images."""
    assert (TINY_MODEL_DIR / "card.json").is_file(), (
        f"{TINY_MODEL_DIR} is missing; rebuild it with: python tests/make_tiny_model.py"
    )
    return TINY_MODEL_DIR


REQUIRE_DATA_ENV = "WILDVISION_REQUIRE_DATA"


def missing_data(reason: str) -> NoReturn:
    """Skip a test whose real photos are absent; fail it instead when
    ``$WILDVISION_REQUIRE_DATA`` is set (CI sets it: the data is always there, so its absence
    is a broken setup that must not pass as a skip)."""
    if os.environ.get(REQUIRE_DATA_ENV, "").strip() not in ("", "0"):
        pytest.fail(f"{reason} (${REQUIRE_DATA_ENV} is set: the real photos are required)",
                    pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real photos in ``../shared/data`` (next to the repository), or skip (fail under
    ``$WILDVISION_REQUIRE_DATA``)."""
    if not (SHARED_DATA.is_dir() and (SHARED_DATA / "manifest.csv").is_file()):
        missing_data(f"real photos not found at {SHARED_DATA}")
    return SHARED_DATA


# -- generated image fixtures ---------------------------------------------------------------


def photo_like(width: int, height: int, seed: int = 0, *, grey: bool = False) -> Image.Image:
    """A deterministic photo-like RGB image: smooth colour gradients around a base colour that
    differs between seeds (so the tiny model's colour rule gives different images different
    outputs), a few shapes, mild noise. ``grey``: gradients around mid grey, stronger (the
    images this function made before the base colour varied)."""
    rng = np.random.default_rng(seed)
    base = np.full(3, 127.0) if grey else np.random.default_rng([seed, 1]).uniform(20, 235, 3)
    amplitude = 90 if grey else 60
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 6.3)
        img[..., c] = float(base[c]) + amplitude * np.sin(
            fx * x / max(width, 1) * 6.3 + ph) * np.cos(fy * y / max(height, 1) * 6.3)
    for _ in range(3):  # a few flat rectangles: edges, like objects on a background
        x0, y0 = rng.integers(0, max(width, 2) - 1), rng.integers(0, max(height, 2) - 1)
        x1, y1 = x0 + rng.integers(1, max(width // 2, 2)), y0 + rng.integers(1, max(height // 2, 2))
        img[y0:y1, x0:x1] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 4, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    """Encode ``img`` in ``fmt`` to bytes."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with a valid CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose (valid, CRC-checked) IHDR claims ``width`` x ``height`` RGB pixels, with a
    tiny IDAT: a decompression bomb as far as the header goes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + png_chunk(b"IEND", b"")
    )


@dataclass(frozen=True)
class ZooItem:
    """A generated test file and its documented result.

    ``error`` is None when the file must load (as RGB, of ``size`` after EXIF rotation).
    """

    name: str
    path: Path
    error: type[WildvisionError] | None
    size: tuple[int, int] | None = None
    note: str = ""


def _make_zoo(root: Path) -> dict[str, ZooItem]:
    root.mkdir(parents=True, exist_ok=True)
    items: dict[str, ZooItem] = {}

    def add(name: str, data: bytes, error: type[WildvisionError] | None,
            size: tuple[int, int] | None = None, note: str = "") -> None:
        path = root / name
        path.write_bytes(data)
        items[name] = ZooItem(name, path, error, size, note)

    # CMYK JPEG, pure red in CMYK terms (C=0, M=Y=255, K=0).
    add("cmyk.jpg", encode(Image.new("CMYK", (48, 32), (0, 255, 255, 0)), "JPEG", quality=95),
        None, (48, 32), "CMYK -> RGB")
    # 16-bit greyscale PNG with a horizontal gradient over the full 0..65535 range.
    grad = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (16, 1))
    add("gray16.png", encode(Image.fromarray(grad), "PNG"), None, (64, 16),
        "I;16 rescaled to 8 bits (Pillow's own conversion would clip it to white)")
    # Palette PNG: index 0 transparent (black in the palette), index 1 red.
    pal = Image.new("P", (20, 10), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    pal.paste(1, (10, 0, 20, 10))
    add("palette_transparent.png", encode(pal, "PNG", transparency=0), None, (20, 10),
        "transparent pixels become white")
    # Animated GIF: red, green, blue frames.
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    add("animated.gif",
        encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
        None, (16, 16), "first frame")
    good_jpeg = encode(photo_like(200, 150, seed=1), "JPEG", quality=90)
    add("truncated.jpg", good_jpeg[: len(good_jpeg) // 2], InvalidImageError, note="truncated")
    add("empty.jpg", b"", InvalidImageError, note="0 bytes")
    add("page.jpg", b"<!DOCTYPE html>\n<html><head><title>404</title></head><body>Not found"
        b"</body></html>\n", InvalidImageError, note="HTML saved as .jpg")
    add("bomb.png", png_header_only(100_000, 100_000), ImageTooLargeError,
        note="header claims 100000x100000: refused before decoding")
    # EXIF orientation 6 (rotate 90 degrees clockwise to display): stored 40x20, left half red,
    # right half blue; displayed 20x40, top half red, bottom half blue.
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    add("exif_rot6.jpg", encode(stored, "JPEG", quality=95, exif=exif), None, (20, 40),
        "EXIF orientation applied")
    add("gray.jpg", encode(photo_like(30, 20, seed=2).convert("L"), "JPEG"), None, (30, 20),
        "greyscale -> RGB")
    rgba = Image.new("RGBA", (20, 10), (255, 0, 0, 255))
    rgba.paste((0, 0, 255, 0), (10, 0, 20, 10))
    add("rgba.png", encode(rgba, "PNG"), None, (20, 10), "alpha composited on white")
    add("photo.webp", encode(photo_like(40, 30, seed=3), "WEBP", quality=90), None, (40, 30))
    add("photo.bmp", encode(photo_like(40, 30, seed=4), "BMP"), None, (40, 30))
    add("one_pixel.png", encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"), None, (1, 1))
    add("wide.png", encode(photo_like(10_000, 10, seed=5), "PNG"), None, (10_000, 10),
        "extreme aspect ratio")
    add("icon.ico", encode(photo_like(32, 32, seed=6), "ICO"), UnsupportedFormatError,
        note="ICO is not a listing-photo format")
    add("image.tga", encode(photo_like(32, 32, seed=7), "TGA"), UnsupportedFormatError,
        note="TGA is not a listing-photo format")
    add("big.png", png_header_only(7_000, 7_000), ImageTooLargeError,
        note="49 Mpx, over the default 40 Mpx limit")
    add("garbage.png", np.random.default_rng(8).bytes(3000), InvalidImageError,
        note="random bytes")
    return items


@pytest.fixture(scope="session")
def image_zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ZooItem]:
    """Generated good and bad image files with their documented results."""
    return _make_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="session")
def photo_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """100 small generated photo-like files (JPEG, PNG, WebP), non-square, in sorted order."""
    root = tmp_path_factory.mktemp("photos")
    out = []
    for i in range(100):
        w, h = 60 + (i * 7) % 70, 50 + (i * 11) % 60
        fmt, ext = [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")][i % 3]
        path = root / f"p{i:03d}.{ext}"
        path.write_bytes(encode(photo_like(w, h, seed=100 + i), fmt))
        out.append(path)
    return out


BAD_ZOO = ["truncated.jpg", "empty.jpg", "page.jpg", "bomb.png", "icon.ico", "image.tga",
           "big.png", "garbage.png"]
GOOD_ZOO = ["cmyk.jpg", "gray16.png", "palette_transparent.png", "animated.gif",
            "exif_rot6.jpg", "gray.jpg", "rgba.png", "photo.webp", "photo.bmp", "one_pixel.png",
            "wide.png"]


def mixed_inputs(image_zoo: dict[str, ZooItem], photo_files: list[Path], tmp_dir: Path
                 ) -> tuple[list[str], dict[int, str]]:
    """100 inputs, 10 of them bad (at every 10th slot): returns the paths and
    ``{index: expected error type name}`` for the bad ones."""
    bad: list[tuple[str, str]] = []
    for n in BAD_ZOO:
        error = image_zoo[n].error
        assert error is not None, n
        bad.append((str(image_zoo[n].path), error.__name__))
    bad.append((str(tmp_dir / "does-not-exist.jpg"), "InvalidImageError"))
    bad.append(("https://example.com/listing.jpg", "InvalidImageError"))
    good = [str(image_zoo[n].path) for n in GOOD_ZOO]
    good += [str(p) for p in photo_files[: 90 - len(good)]]
    inputs: list[str] = []
    expected_bad: dict[int, str] = {}
    for i in range(100):
        if i % 10 == 7:
            path, err = bad[i // 10]
            expected_bad[i] = err
            inputs.append(path)
        else:
            inputs.append(good.pop(0))
    return inputs, expected_bad
