"""Write the fuzz seeds (tests/fuzz/seeds/): one small file per format and mode the loader
reads, a few hundred bytes each. The seeds are committed; rerun this only to change them::

    python tests/fuzz/make_seeds.py
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

SEEDS = Path(__file__).resolve().parent / "seeds"


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w * h * 3).reshape(h, w, 3)
    return Image.fromarray((base * 0.7 + rng.random((h, w, 3)) * 70).astype(np.uint8))


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def seeds() -> dict[str, bytes]:
    p = _photo(24, 16)
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [Image.new("RGB", (12, 12), c) for c in ((255, 0, 0), (0, 255, 0))]
    return {
        "baseline.jpg": _save(p, "JPEG", quality=80, exif=exif),
        "progressive.jpg": _save(p, "JPEG", quality=80, progressive=True),
        "cmyk.jpg": _save(p.convert("CMYK"), "JPEG", quality=80),
        "rgba.png": _save(p.convert("RGBA"), "PNG"),
        "gray16.png": _save(Image.fromarray((np.arange(96, dtype=np.uint16) * 600)
                                            .reshape(8, 12)), "PNG"),
        "palette.png": _save(p.convert("P"), "PNG", transparency=0),
        "anim.png": _save(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "anim.gif": _save(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "photo.webp": _save(p, "WEBP", quality=70),
        "photo.tif": _save(p, "TIFF", compression="tiff_deflate"),
        "float.tif": _save(Image.fromarray(np.linspace(0, 1, 96, dtype=np.float32)
                                           .reshape(8, 12), "F"), "TIFF"),
        "photo.bmp": _save(_photo(8, 6), "BMP"),
    }


if __name__ == "__main__":
    SEEDS.mkdir(exist_ok=True)
    for name, data in seeds().items():
        (SEEDS / name).write_bytes(data)
        print(f"{name}\t{len(data)} bytes")
