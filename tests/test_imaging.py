"""Safe image loading: every input kind, and the bad or unusual files sellers upload."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from wildvision.errors import (
    ImageTooLargeError,
    InvalidImageError,
    UnsupportedFormatError,
    WildvisionError,
)
from wildvision.imaging import decode_image, load_image, source_name

from conftest import ZooItem, encode, photo_like, png_header_only

# -- every input kind -------------------------------------------------------------------------


@pytest.fixture
def png_file(tmp_path: Path) -> Path:
    path = tmp_path / "listing photo.png"
    photo_like(37, 23, seed=11).save(path)
    return path


def test_every_input_kind_gives_the_same_pixels(png_file: Path) -> None:
    data = png_file.read_bytes()
    expected = np.asarray(Image.open(png_file).convert("RGB"))
    with open(png_file, "rb") as fobj:
        sources = {
            "path str": str(png_file),
            "PathLike": png_file,
            "bytes": data,
            "bytearray": bytearray(data),
            "memoryview": memoryview(data),
            "file object": fobj,
            "BytesIO": io.BytesIO(data),
            "PIL image": Image.open(png_file),
            "array": expected.copy(),
        }
        for kind, src in sources.items():
            img = load_image(src)
            assert isinstance(img, Image.Image), kind
            assert img.mode == "RGB", kind
            np.testing.assert_array_equal(np.asarray(img), expected, err_msg=kind)


def test_sha256_and_source_names(png_file: Path) -> None:
    data = png_file.read_bytes()
    file_hash = hashlib.sha256(data).hexdigest()
    for src in (str(png_file), png_file, data):
        assert decode_image(src).sha256 == file_hash
    with open(png_file, "rb") as f:
        dec = decode_image(f)
    assert dec.sha256 == file_hash
    assert dec.source == str(png_file)  # a file object is named after its file
    arr = np.asarray(Image.open(png_file).convert("RGB"))
    pixel_hash = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
    assert decode_image(arr).sha256 == pixel_hash
    assert decode_image(Image.fromarray(arr)).sha256 == pixel_hash
    assert source_name(str(png_file)) == str(png_file)
    assert source_name(png_file) == str(png_file)
    assert source_name(data) == "<bytes>"
    assert source_name(arr) == "<ndarray>"
    assert source_name(Image.fromarray(arr)) == "<PIL.Image>"
    assert source_name(io.BytesIO(data)) == "<BytesIO>"


def test_array_inputs() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    img = load_image(gray)
    assert img.size == (4, 3)
    np.testing.assert_array_equal(np.asarray(img)[..., 1], gray)
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent -> white
    np.testing.assert_array_equal(np.asarray(load_image(rgba)), np.full((2, 2, 3), 255))
    with pytest.raises(InvalidImageError, match="uint8"):
        load_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(InvalidImageError, match="HxWx3"):
        load_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(InvalidImageError, match="no pixels"):
        load_image(np.zeros((0, 4, 3), np.uint8))


def test_bad_input_types(png_file: Path) -> None:
    with pytest.raises(InvalidImageError, match="unsupported input type int"):
        load_image(42)  # type: ignore[arg-type]
    with open(png_file, encoding="latin-1") as text_file, pytest.raises(
        InvalidImageError, match="binary mode"
    ):
        load_image(text_file)  # type: ignore[arg-type]


# -- the zoo of bad and unusual files ----------------------------------------------------------


ZOO_NAMES = [
    "cmyk.jpg", "gray16.png", "palette_transparent.png", "animated.gif", "truncated.jpg",
    "empty.jpg", "page.jpg", "bomb.png", "exif_rot6.jpg", "gray.jpg", "rgba.png", "photo.webp",
    "photo.bmp", "one_pixel.png", "wide.png", "icon.ico", "image.tga", "big.png", "garbage.png",
]


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_file_has_its_documented_result(name: str, image_zoo: dict[str, ZooItem]) -> None:
    item = image_zoo[name]
    if item.error is None:
        img = load_image(item.path)
        assert img.mode == "RGB"
        assert img.size == item.size
    else:
        with pytest.raises(item.error) as info:
            load_image(item.path)
        assert type(info.value) is item.error
        assert str(item.path) in str(info.value), "the message must name the file"
        # the same bytes from memory give the same error type
        with pytest.raises(item.error):
            load_image(item.path.read_bytes())


def test_cmyk_jpeg_becomes_rgb_red(image_zoo: dict[str, ZooItem]) -> None:
    arr = np.asarray(load_image(image_zoo["cmyk.jpg"].path)).astype(int)
    assert (arr[..., 0] > 240).all() and (arr[..., 1:] < 15).all()


def test_16bit_png_keeps_its_content(image_zoo: dict[str, ZooItem]) -> None:
    path = image_zoo["gray16.png"].path
    assert Image.open(path).mode.startswith("I")  # really a 16-bit file
    arr = np.asarray(load_image(path)).astype(int)
    assert not (arr == 255).all(), "16-bit image turned white"
    row = arr[0, :, 0]
    assert row[0] == 0 and row[-1] == 255
    expected = np.round(np.linspace(0, 65535, 64) / 257)
    np.testing.assert_allclose(row, expected, atol=1)
    assert (np.diff(row) >= 0).all()  # the gradient survives
    np.testing.assert_array_equal(arr[..., 0], arr[..., 2])


def test_palette_transparency_becomes_white(image_zoo: dict[str, ZooItem]) -> None:
    arr = np.asarray(load_image(image_zoo["palette_transparent.png"].path))
    np.testing.assert_array_equal(arr[:, :10], 255)  # transparent (palette black) -> white
    np.testing.assert_array_equal(arr[:, 10:], np.broadcast_to([255, 0, 0], (10, 10, 3)))


def test_rgba_is_composited_on_white(image_zoo: dict[str, ZooItem]) -> None:
    arr = np.asarray(load_image(image_zoo["rgba.png"].path))
    np.testing.assert_array_equal(arr[:, :10], np.broadcast_to([255, 0, 0], (10, 10, 3)))
    np.testing.assert_array_equal(arr[:, 10:], 255)
    half = Image.new("RGBA", (2, 2), (255, 0, 0, 128))
    px = np.asarray(load_image(half)).astype(int)[0, 0]
    np.testing.assert_allclose(px, [255, 127, 127], atol=1)


def test_animated_gif_gives_first_frame(image_zoo: dict[str, ZooItem]) -> None:
    path = image_zoo["animated.gif"].path
    assert Image.open(path).n_frames == 3
    arr = np.asarray(load_image(path)).astype(int)
    assert (arr[..., 0] > 240).all() and (arr[..., 1:] < 15).all()
    gif = Image.open(path)
    gif.seek(2)  # a PIL image left on a later frame still gives frame 0
    assert (np.asarray(load_image(gif))[..., 0] > 240).all()


def test_exif_orientation_is_applied(image_zoo: dict[str, ZooItem]) -> None:
    path = image_zoo["exif_rot6.jpg"].path
    raw = Image.open(path)
    assert raw.size == (40, 20) and raw.getexif()[0x0112] == 6
    dec = decode_image(path)
    assert dec.image.size == (20, 40)  # width and height swapped
    assert dec.original_size == (40, 20)
    arr = np.asarray(dec.image).astype(int)
    top, bottom = arr[:15].reshape(-1, 3).mean(0), arr[-15:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 50, "the left (red) half must move to the top"
    assert bottom[2] > 200 and bottom[0] < 50, "the right (blue) half must move to the bottom"


def test_grayscale_webp_bmp_tiny_and_wide(image_zoo: dict[str, ZooItem]) -> None:
    arr = np.asarray(load_image(image_zoo["gray.jpg"].path))
    np.testing.assert_array_equal(arr[..., 0], arr[..., 1])
    for name, seed in (("photo.webp", 3), ("photo.bmp", 4)):
        got = np.asarray(load_image(image_zoo[name].path)).astype(int)
        ref = np.asarray(photo_like(40, 30, seed=seed)).astype(int)
        assert np.abs(got - ref).mean() < 8, name  # same picture (WebP is lossy)
    assert load_image(image_zoo["one_pixel.png"].path).getpixel((0, 0)) == (10, 200, 30)
    assert load_image(image_zoo["wide.png"].path).size == (10_000, 10)


def test_truncated_empty_html_messages(image_zoo: dict[str, ZooItem]) -> None:
    with pytest.raises(InvalidImageError, match="truncated"):
        load_image(image_zoo["truncated.jpg"].path)
    with pytest.raises(InvalidImageError, match="empty file"):
        load_image(image_zoo["empty.jpg"].path)
    with pytest.raises(InvalidImageError, match="HTML"):
        load_image(image_zoo["page.jpg"].path)


def test_pixel_limit_is_checked_on_the_header(image_zoo: dict[str, ZooItem]) -> None:
    with pytest.raises(ImageTooLargeError, match="refused before decoding"):
        load_image(image_zoo["bomb.png"].path)
    with pytest.raises(ImageTooLargeError, match="7000x7000"):
        load_image(image_zoo["big.png"].path)
    # with a higher limit the same header passes the check and the (fake) data fails to decode
    with pytest.raises(InvalidImageError) as info:
        load_image(image_zoo["big.png"].path, max_pixels=50_000_000)
    assert not isinstance(info.value, ImageTooLargeError)
    small = encode(photo_like(100, 100), "PNG")
    assert load_image(small, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ImageTooLargeError, match="10,000 pixels, over the limit of 9,999"):
        load_image(small, max_pixels=9_999)
    with pytest.raises(ImageTooLargeError):
        load_image(photo_like(100, 100), max_pixels=9_999)
    with pytest.raises(ImageTooLargeError):
        load_image(np.zeros((100, 100, 3), np.uint8), max_pixels=9_999)
    assert png_header_only(3, 3)[12:16] == b"IHDR"


def test_byte_limit(tmp_path: Path) -> None:
    data = encode(photo_like(64, 64), "PNG")
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    limit = len(data) - 1
    for src in (path, data, io.BytesIO(data)):
        with pytest.raises(ImageTooLargeError, match="over the limit"):
            load_image(src, max_bytes=limit)
    assert load_image(path, max_bytes=len(data)).size == (64, 64)


def test_url_directory_missing(tmp_path: Path) -> None:
    for url in ("https://example.com/a.jpg", "HTTP://example.com/a.jpg", "ftp://x/y.png"):
        with pytest.raises(InvalidImageError, match="URLs are never fetched") as info:
            load_image(url)
        assert url in str(info.value)
    with pytest.raises(InvalidImageError, match="is a directory"):
        load_image(tmp_path)
    missing = tmp_path / "nope.jpg"
    with pytest.raises(InvalidImageError, match="file not found") as info2:
        load_image(missing)
    assert str(missing) in str(info2.value)
    with pytest.raises(InvalidImageError, match="cannot read file"):
        load_image("bad\0name.jpg")


def test_unsupported_formats_are_refused(image_zoo: dict[str, ZooItem]) -> None:
    for name, fmt in (("icon.ico", "ICO"), ("image.tga", "TGA")):
        with pytest.raises(UnsupportedFormatError, match=f"unsupported image format {fmt}"):
            load_image(image_zoo[name].path)
    assert issubclass(UnsupportedFormatError, InvalidImageError)
    assert issubclass(InvalidImageError, ValueError)


def test_jpeg_draft_decoding(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    path.write_bytes(encode(photo_like(1600, 1200, seed=3), "JPEG", quality=90))
    full = decode_image(path)
    assert full.image.size == (1600, 1200)
    drafted = decode_image(path, draft_size=(200, 200))
    w, h = drafted.image.size
    assert (w, h) < (1600, 1200) and w >= 200 and h >= 200
    assert (w, h) == (400, 300)  # DCT scale 1/4: the largest keeping both sides >= 200
    assert drafted.original_size == (1600, 1200)
    assert drafted.sha256 == full.sha256
    # the drafted picture is the same picture
    ref = np.asarray(full.image.resize((w, h), Image.Resampling.BOX)).astype(int)
    assert np.abs(np.asarray(drafted.image).astype(int) - ref).mean() < 6
    # a request larger than the image decodes at full size; non-JPEG ignores the draft
    assert decode_image(path, draft_size=(1000, 1000)).image.size == (1600, 1200)
    png = tmp_path / "big.png"
    photo_like(400, 300).save(png)
    assert decode_image(png, draft_size=(50, 50)).image.size == (400, 300)


def test_decoder_exceptions_never_escape_untyped() -> None:
    rng = np.random.default_rng(0)
    jpeg = encode(photo_like(64, 48), "JPEG")
    png = encode(photo_like(64, 48), "PNG")
    for base in (jpeg, png):
        for _ in range(40):  # corrupt bytes after the signature
            data = bytearray(base)
            for pos in rng.integers(8, len(data), 12):
                data[pos] = rng.integers(0, 256)
            try:
                img = load_image(bytes(data))
            except WildvisionError:
                continue
            assert img.mode == "RGB"


def test_no_process_wide_pillow_settings_change(image_zoo: dict[str, ZooItem]) -> None:
    """Importing and using wildvision leaves Pillow's global limits alone (checked in a fresh
    interpreter, so that nothing imported by other tests can hide a change)."""
    paths = [str(item.path) for item in image_zoo.values()]
    code = textwrap.dedent(
        f"""
        from PIL import Image, ImageFile
        before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
        import wildvision
        from wildvision.imaging import load_image
        after_import = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
        for p in {paths!r}:
            try:
                load_image(p, draft_size=(32, 32))
            except wildvision.WildvisionError:
                pass
        after_use = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
        assert before == after_import == after_use, (before, after_import, after_use)
        assert before[1] is False
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# -- hostile files: bounded work before decoding --------------------------------------------


def test_jpeg_with_many_scans_is_refused_before_decoding() -> None:
    """A small progressive JPEG repeating a tiny scan hundreds of times (each scan is a pass
    over the whole image) is refused on its markers, like the pixel limit."""
    from make_crafted import many_scans_jpeg

    with pytest.raises(ImageTooLargeError, match="scans"):
        load_image(many_scans_jpeg(side=1024, extra_scans=200), draft_size=(256, 256))


def test_jpeg_scan_count_of_real_encodings() -> None:
    from wildvision.imaging import DEFAULT_MAX_JPEG_SCANS, _jpeg_structure

    photo = photo_like(300, 200, seed=4)
    baseline = encode(photo, "JPEG", quality=90)
    progressive = encode(photo, "JPEG", quality=90, progressive=True)
    assert _jpeg_structure(baseline, DEFAULT_MAX_JPEG_SCANS)[0] == 1
    assert _jpeg_structure(progressive, DEFAULT_MAX_JPEG_SCANS)[0] == 10  # libjpeg's script
    # Restart markers and stuffed 0xFF bytes inside the entropy data are not scans, and an
    # EXIF thumbnail (a JPEG inside APP1) is skipped with its segment.
    exif = Image.Exif()
    exif[0x0112] = 1
    with_rst = encode(photo, "JPEG", quality=100, progressive=True, restart_marker_blocks=1,
                      exif=exif)
    assert b"\xff\xd0" in with_rst
    assert _jpeg_structure(with_rst, DEFAULT_MAX_JPEG_SCANS)[0] == 10
    assert load_image(with_rst).size == (300, 200)


def test_tiff_with_many_strips_is_refused_before_decoding() -> None:
    from make_crafted import many_strips_tiff

    with pytest.raises(ImageTooLargeError, match="strips"):
        load_image(many_strips_tiff(strips=300_000))
    assert load_image(many_strips_tiff(strips=500)).size == (8, 500)  # a normal strip count


def test_multipage_tiff_gives_its_first_page() -> None:
    from make_crafted import many_pages_tiff

    img = load_image(many_pages_tiff(pages=50))
    assert img.size == (8, 8)
    np.testing.assert_array_equal(np.asarray(img)[:, :, 0], np.arange(64).reshape(8, 8))


def _reference_high_depth(arr: np.ndarray, mode: str) -> np.ndarray:
    """The documented 8-bit conversion, in whole-image float64 (the former implementation)."""
    a = arr.astype(np.float64)
    if mode == "F":
        scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0
        return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    if mode == "I" and a.max(initial=0) <= 255 and a.min(initial=0) >= 0:
        return a.astype(np.uint8)
    return np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("mode", ["I;16", "I", "I8", "F", "F255"])
def test_high_depth_conversion_is_exact_band_by_band(
        mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import wildvision.imaging as imaging

    monkeypatch.setattr(imaging, "_BAND_PIXELS", 97 * 5)  # several bands, a partial last one
    rng = np.random.default_rng(3)
    arr: np.ndarray
    if mode == "I;16":
        arr = rng.integers(0, 65536, (61, 97)).astype(np.uint16)
    elif mode == "I":
        arr = rng.integers(-70000, 140000, (61, 97)).astype(np.int32)
    elif mode == "I8":
        arr = rng.integers(0, 256, (61, 97)).astype(np.int32)
    elif mode == "F":
        arr = rng.random((61, 97)).astype(np.float32)
    else:
        arr = (rng.random((61, 97)) * 300 - 20).astype(np.float32)
    pil_mode = {"I8": "I", "F255": "F"}.get(mode, mode)
    img = Image.fromarray(arr, pil_mode) if pil_mode != "I;16" else Image.fromarray(arr)
    assert img.mode == pil_mode
    got = np.asarray(load_image(img))
    expected = _reference_high_depth(arr, pil_mode)
    np.testing.assert_array_equal(got, np.stack([expected] * 3, axis=-1))


def test_high_depth_draft_reduces_and_keeps_orientation(tmp_path: Path) -> None:
    """With a draft size a 16-bit image is shrunk (box filter) like a drafted JPEG, after its
    8-bit conversion; its EXIF orientation still applies."""
    arr = np.zeros((400, 800), np.uint16)
    arr[:, 400:] = 65535  # left half black, right half white
    path = tmp_path / "rot16.png"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(arr).save(path, exif=exif)
    assert Image.open(path).mode == "I;16"
    full = load_image(path)
    drafted = decode_image(path, draft_size=(100, 100))
    assert full.size == (400, 800)
    assert drafted.image.size == (100, 200)  # factor 4 = min(800 // 100, 400 // 100)
    assert drafted.original_size == (800, 400)
    top, bottom = np.asarray(drafted.image)[:90], np.asarray(drafted.image)[110:]
    assert (top == 0).all() and (bottom == 255).all()  # the right half is now the bottom
    assert (np.asarray(full)[:390] == 0).all() and (np.asarray(full)[410:] == 255).all()


def test_decoding_in_threads_leaves_the_warning_filters_alone() -> None:
    """Silencing Pillow's DecompressionBombWarning with warnings.catch_warnings in decode
    threads raced on the process-wide filter list and left an 'ignore' filter installed
    for the caller's own code. Nothing in decoding may change warnings.filters."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    # 10000 x 10000: above Pillow's warning threshold, refused by wildvision's pixel limit.
    bomb = png_header_only(10_000, 10_000)
    # Text chunks make Pillow's open() slow enough for threads to interleave inside it.
    info = PngImagePlugin.PngInfo()
    for i in range(300):
        info.add_text(f"k{i}", "v" * 50)
    small = encode(photo_like(40, 30, seed=1), "PNG", pnginfo=info)
    before = list(warnings.filters)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)

    def work(i: int) -> str:
        try:
            load_image(bomb if i % 2 else small)
        except ImageTooLargeError:
            return "refused"
        return "ok"

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            inside = list(warnings.filters)
            for _ in range(5):
                with ThreadPoolExecutor(8) as pool:
                    results = list(pool.map(work, range(100)))
                assert results.count("refused") == 50
                assert warnings.filters == inside
    finally:
        sys.setswitchinterval(interval)
    assert warnings.filters == before
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
