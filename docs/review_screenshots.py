"""Make the review-page screenshots in docs/img/ from real reference test photos.

    python docs/review_screenshots.py --out docs/img

Classifies a few flagged (and one passed) test photos of the reference split with
``explain=True``, writes their review page, opens it in Chromium (Playwright, Debian's
``/usr/bin/chromium``), makes a few keyboard decisions and saves two screenshots (heatmaps on,
and the relabel box), as small palette PNGs.
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

from PIL import Image

from wildvision.data.manifest import read_manifest
from wildvision.predict import Classifier
from wildvision.review import build_review_page

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]


def _small_png(png: bytes, dest: Path) -> None:
    img = Image.open(io.BytesIO(png)).convert("RGB")
    img.quantize(colors=192, method=Image.Quantize.MEDIANCUT).save(dest, optimize=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="datasets/wildvision-ref/manifest.csv")
    ap.add_argument("--out", default="docs/img")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    a = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    m = read_manifest(a.data)
    test = [r for r in m if r.split == "test" and r.readable]
    pick = ([r for r in test if r.fine_label == "ivory_carving"][:4]
            + [r for r in test if r.fine_label == "live_tiger"][:2]
            + [r for r in test if r.fine_label == "live_primate"][:1]
            + [r for r in test if r.fine_label == "ceramics"][:2]
            + [r for r in test if r.fine_label == "bone_horn_craft"][:1])
    work = Path(tempfile.mkdtemp(prefix="wildvision-shots-"))
    results = work / "results.jsonl"
    clf = Classifier(explain=True)
    with open(results, "w", encoding="utf-8") as f:
        for r in clf.classify_many([m.abs_path(r) for r in pick]):
            f.write(r.to_json() + "\n")
    page = build_review_page(results, work / "review.html",
                             decisions=("flag", "review", "pass"), thumb_size=256,
                             title="wildvision review: reference test photos")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=a.chromium, args=ARGS)
        tab = browser.new_page(viewport={"width": 1180, "height": 760})
        tab.goto(page.path.resolve().as_uri())
        tab.wait_for_selector("body[data-ready='1']")
        tab.select_option("#groupby", "decision")
        tab.keyboard.press("j")
        tab.keyboard.press("c")
        tab.keyboard.press("c")
        tab.keyboard.press("c")
        _small_png(tab.screenshot(), out / "review-page.png")
        tab.keyboard.press("r")
        tab.keyboard.type("live_ti")
        _small_png(tab.screenshot(), out / "review-relabel.png")
        browser.close()
    for name in ("review-page.png", "review-relabel.png"):
        print(out / name, f"{(out / name).stat().st_size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
