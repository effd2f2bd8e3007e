"""Measure how robust the perceptual hash is to everyday edits, on the reference photos.

For a seeded sample of readable images of the manifest, make edited copies (re-encode,
resize, grey, slight re-crops, a caption band), hash each copy exactly as
`wildvision data index` would (encode to bytes, decode with the core loader in draft mode),
and record the share of copies within each Hamming distance of the original's manifest hash.
Writes phash_eval.json next to this script (read by `wildvision data card`).

Run from the repository root:  python datasets/wildvision-ref/measure_phash.py [--images 400]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

from wildvision.data.manifest import read_manifest
from wildvision.data.phash import PHASH_DRAFT_SIZE, hamming, phash_hex
from wildvision.imaging import decode_image

HERE = Path(__file__).resolve().parent
THRESHOLDS = [2, 4, 6, 8, 10, 12]


def _encode(img: Image.Image, fmt: str = "JPEG", quality: int = 75) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=quality)
    else:
        img.save(buf, fmt)
    return buf.getvalue()


def _crop(img: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = img.size
    return img.crop((int(w * left), int(h * top), w - int(w * right), h - int(h * bottom)))


def edits(img: Image.Image) -> dict[str, bytes]:
    w, h = img.size
    band = img.copy()
    ImageDraw.Draw(band).rectangle((0, int(h * 0.9), w, h), fill=(255, 255, 255))
    return {
        "re-encode JPEG q50": _encode(img, quality=50),
        "resize to 50% + JPEG q70": _encode(img.resize((max(1, w // 2), max(1, h // 2))),
                                            quality=70),
        "greyscale PNG": _encode(img.convert("L"), "PNG"),
        "crop 1% per side": _encode(_crop(img, .01, .01, .01, .01), quality=90),
        "crop 2% per side": _encode(_crop(img, .02, .02, .02, .02), quality=90),
        "crop 3% per side": _encode(_crop(img, .03, .03, .03, .03), quality=90),
        "crop 2% per side + 50% + q60": _encode(
            _crop(img, .02, .02, .02, .02).resize((max(1, w // 2), max(1, h // 2))), quality=60),
        "crop 5% per side": _encode(_crop(img, .05, .05, .05, .05), quality=90),
        "white band over bottom 10%": _encode(band, quality=90),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", default=str(HERE / "manifest.csv"))
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "phash_eval.json"))
    a = ap.parse_args()
    m = read_manifest(a.manifest)
    rows = sorted((r for r in m if r.readable), key=lambda r: r.path)
    sample = random.Random(a.seed).sample(rows, min(a.images, len(rows)))
    dist: dict[str, list[int]] = {}
    t0 = time.perf_counter()
    for r in sample:
        img = decode_image(m.abs_path(r)).image
        for name, data in edits(img).items():
            copy = decode_image(data, draft_size=PHASH_DRAFT_SIZE).image
            dist.setdefault(name, []).append(hamming(phash_hex(copy), r.phash))
    recall = {name: {str(t): round(sum(d <= t for d in ds) / len(ds), 4) for t in THRESHOLDS}
              for name, ds in dist.items()}
    out = {
        "command": "python datasets/wildvision-ref/measure_phash.py"
                   + (f" --images {a.images}" if a.images != 400 else ""),
        "images": len(sample), "seed": a.seed, "thresholds": THRESHOLDS, "recall": recall,
        "seconds": round(time.perf_counter() - t0, 1),
        "note": "Distances between two hashes are even (each hash has 32 bits set). Mirrored "
                "copies and crops of more than a few percent are not detected by a global "
                "perceptual hash.",
    }
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    for name, rec in recall.items():
        print(f"{name:32s} " + "  ".join(f"<={t}: {100 * rec[str(t)]:5.1f}%" for t in THRESHOLDS))
    print(f"wrote {a.out} ({out['seconds']} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
