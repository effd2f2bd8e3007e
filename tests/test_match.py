"""Known-photo matching (wildvision.match): PDQ against the reference implementation, the index
file, editing, sharing, and matches in classification results with real edited photos."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont, ImageOps

pytest.importorskip("faiss", reason="needs the [match] extra (faiss-cpu)")
pytest.importorskip("pdqhash", reason="needs the [match] extra (pdqhash)")

import wildvision as wv
from wildvision.errors import IndexModelMismatchError, MatchIndexError
from wildvision.match import (
    KnownPhoto,
    MatchIndex,
    add_photos,
    build_index,
    load_index,
    photos_from_manifest,
    read_pdq_list,
)
from wildvision.match import local as lf
from wildvision.match.pdq import from_hex, hamming, pdq_hash, pdq_hash_array, to_hex

REFERENCE = json.loads((Path(__file__).parent / "data" / "pdq_reference.json").read_text())
# Bits the pdqhash build may differ from the reference binary by (float rounding on another CPU
# can move a coefficient across the median); on the machine that made the vectors it was 0.
PDQ_TOLERANCE = 4


def synthetic(kind: int, w: int, h: int) -> np.ndarray:
    """Integer-only test images (the same pixels on every platform); see pdq_reference.json."""
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    if kind == 0:  # diagonal ramps and a checkerboard
        r = (x * 255) // (w - 1)
        g = (y * 255) // (h - 1)
        b = ((x // 24 + y // 24) % 2) * 200 + 20
    elif kind == 1:  # parabolic ramps and a product of steps
        r = (x * x // 97 + 3 * y) % 256
        g = ((x // 20) * (y // 20) * 37) % 256
        b = (255 * y) // (h - 1)
    else:  # stripes plus a bright rectangle
        r = ((x + 2 * y) // 10 % 2) * 180 + 30
        g = r.copy()
        b = (x * 255) // (w - 1)
        for c, v in ((r, 250), (g, 240), (b, 10)):
            c[h // 4: h // 2, w // 2: w * 3 // 4] = v
    return np.stack([r, g, b], -1).astype(np.uint8)


def _dist(a: bytes, b: bytes) -> int:
    return int(hamming(np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)))


# -- PDQ against the reference implementation ----------------------------------------------


@pytest.mark.parametrize("vec", REFERENCE["synthetic"], ids=lambda v: f"synthetic{v['kind']}")
def test_pdq_matches_reference_on_synthetic_images(vec: dict) -> None:
    a = synthetic(vec["kind"], vec["width"], vec["height"])
    assert hashlib.sha256(a.tobytes()).hexdigest() == vec["pixels_sha256"]
    h, q = pdq_hash_array(a)
    assert _dist(h, from_hex(vec["pdq"])) <= PDQ_TOLERANCE
    assert q == vec["quality"]


def test_pdq_matches_reference_on_real_photos(shared_data: Path) -> None:
    for vec in REFERENCE["real"]:
        path = shared_data / vec["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == vec["file_sha256"]
        h, q = pdq_hash_array(np.asarray(Image.open(path).convert("RGB")))
        assert _dist(h, from_hex(vec["pdq"])) <= PDQ_TOLERANCE, vec["path"]
        assert q == vec["quality"]


def test_pdq_hex_form_and_errors() -> None:
    h, _ = pdq_hash_array(synthetic(1, 301, 257))
    assert to_hex(h) == h.hex() and from_hex(to_hex(h).upper()) == h
    with pytest.raises(MatchIndexError):
        from_hex("abc")
    with pytest.raises(MatchIndexError):
        from_hex("zz" * 32)
    with pytest.raises(wv.InvalidImageError):
        pdq_hash_array(np.zeros((1, 5, 3), np.uint8))
    # the mirror hash is the hash of the mirrored pixels
    img = Image.fromarray(synthetic(2, 123, 333))
    assert pdq_hash(img, mirror=True) == pdq_hash(ImageOps.mirror(img))


# -- an index of real photos with the default model ---------------------------------------

INDEXED = [  # (path under ../shared/data, reference, label)
    ("bigcats/live_tiger", "case-tiger", "live_tiger"),
    ("met_ivory/ivory_artifact", "case-ivory", "ivory_carving"),
    ("clothing/clothing", "case-shirt", "clothing"),
    ("bone_horn_maker/bone_comb", "case-comb", "bone_horn_craft"),
]


def _first(folder: Path, n: int = 0) -> Path:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[n]


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def edits(img: Image.Image) -> dict[str, Image.Image]:
    """Edited copies, as re-posted listings show them."""
    w, h = img.size
    text = img.copy()
    ImageDraw.Draw(text).text((w // 10, h // 2), "WhatsApp +00 123 456 789", fill=(255, 0, 0))
    ImageDraw.Draw(text).rectangle((0, h - h // 8, w, h), fill=(255, 255, 255))
    border = Image.new("RGB", (w + 60, h + 140), (245, 245, 245))
    border.paste(img, (30, 70))
    return {
        "mirror": ImageOps.mirror(img),
        "half": img.resize((w // 2, h // 2), Image.Resampling.BILINEAR),
        "double": img.resize((w * 2, h * 2), Image.Resampling.BICUBIC),
        "jpeg30": _jpeg(img, 30),
        "crop80": img.crop((int(w * 0.06), int(h * 0.05), int(w * 0.95), int(h * 0.94))),
        "text": text,
        "rotate3": img.rotate(3, resample=Image.Resampling.BILINEAR, expand=False),
        "border": border,
    }


@pytest.fixture(scope="module")
def real_index(shared_data: Path) -> tuple[MatchIndex, list[Path]]:
    photos = [KnownPhoto(str(_first(shared_data / d)), ref, label) for d, ref, label in INDEXED]
    index, failed = build_index(photos)
    assert failed == []
    return index, [Path(p.path) for p in photos]


def test_build_records_model_and_groups(real_index: tuple[MatchIndex, list[Path]]) -> None:
    index, _ = real_index
    card = wv.load_model().card
    assert len(index) == 4 and index.embedding_dim > 0
    assert index.header["model"] == card.name and index.header["model_version"] == card.version
    assert index.header["embedding_sha256"] == card.files["model.onnx"]
    assert index.groups == ["live_protected_animal", "ivory", "benign", "benign"]
    assert np.allclose(np.linalg.norm(index.embeddings.astype(np.float32), axis=1), 1, atol=1e-2)
    assert (index.quality >= 50).all()


def test_edited_copies_match_their_original(real_index: tuple[MatchIndex, list[Path]]) -> None:
    index, paths = real_index
    shirt = Image.open(paths[2]).convert("RGB")
    tiger = Image.open(paths[0]).convert("RGB")
    copies = {**{f"shirt/{k}": v for k, v in edits(shirt).items()},
              **{f"tiger/{k}": v for k, v in edits(tiger).items()}}
    results = wv.classify_images(list(copies.values()), match_index=index)
    plain = wv.classify_images(list(copies.values()))
    for (name, _), r, p in zip(copies.items(), results, plain, strict=True):
        assert isinstance(r, wv.Prediction) and isinstance(p, wv.Prediction)
        assert r.matches, name
        assert r.matches[0].reference == ("case-shirt" if name.startswith("shirt") else
                                          "case-tiger"), (name, r.matches)
        assert r.known_image and r.decision == "flag"
        assert p.matches is None and not p.known_image
        d = r.to_dict()
        assert d["known_image"] is True and d["matches"][0]["reference"] == r.matches[0].reference
    # the shirt is benign for the model: only the index flags its copies
    assert all(p.decision != "flag" for n, p in zip(copies, plain, strict=True)
               if n.startswith("shirt"))


def test_other_photos_do_not_match(real_index: tuple[MatchIndex, list[Path]],
                                   shared_data: Path) -> None:
    index, _ = real_index
    others = [_first(shared_data / d, 1) for d, _, _ in INDEXED]  # same folders, other photos
    for r in wv.classify_images(others, match_index=index):
        assert isinstance(r, wv.Prediction)
        assert r.matches == () and not r.known_image, (r.source, r.matches)


def test_review_policy_and_hash_only_mode(real_index: tuple[MatchIndex, list[Path]]) -> None:
    index, paths = real_index
    review = index.copy()
    review.decision = "review"
    shirt = Image.open(paths[2]).convert("RGB")
    r = wv.classify_image(ImageOps.mirror(shirt), match_index=review)
    assert r.known_image and r.decision == "review"
    hash_only = index.copy()
    hash_only.mode = "hash"
    crop = edits(shirt)["crop80"]  # PDQ does not survive this crop; the embedding does
    assert wv.classify_image(crop, match_index=hash_only).matches == ()
    assert wv.classify_image(crop, match_index=index).matches[0].by == "embedding"


def _screenshot(img: Image.Image, canvas: tuple[int, int, int] = (248, 248, 248)
                ) -> tuple[Image.Image, tuple[int, int]]:
    """``img`` in a phone-screenshot frame: a dark status bar, a plain margin and a price
    under the photo; returns the copy and where the photo sits in it."""
    w, h = img.size
    top, side = h // 6, w // 20
    out = Image.new("RGB", (w + 2 * side, h + top + h // 3), canvas)
    out.paste(img, (side, top))
    d = ImageDraw.Draw(out)
    d.rectangle((0, 0, out.width, top // 3), fill=(15, 15, 15))
    d.text((side, top + h + 8), "Rare carved piece - DM", fill=(0, 0, 0))
    d.text((side, top + h + 24), "$ 900, ships today", fill=(200, 0, 0))
    return _jpeg(out, 85), (side, top)


def test_trim_borders_on_real_framed_copies(shared_data: Path) -> None:
    from wildvision.match.views import index_views, query_views, trim_borders, trim_box

    tiger = Image.open(_first(shared_data / INDEXED[0][0])).convert("RGB")
    assert trim_box(tiger) is None and query_views(tiger) == []  # a photo without a frame
    w, h = tiger.size
    letterbox = Image.new("RGB", (w, h + h // 2), (0, 0, 0))
    letterbox.paste(tiger, (0, h // 4))
    canvas = Image.new("RGB", (w * 2, h * 2), (255, 255, 255))
    canvas.paste(tiger, (w // 3, h // 5))
    framed, at = _screenshot(tiger)
    for name, copy, (x, y) in (("screenshot", framed, at), ("letterbox", letterbox, (0, h // 4)),
                               ("white canvas", canvas, (w // 3, h // 5))):
        box = trim_box(_jpeg(copy, 80))
        assert box is not None, name
        tol = 0.03 * max(w, h) + 2
        assert np.abs(np.array(box) - (x, y, x + w, y + h)).max() <= tol, (name, box)
        (view,) = query_views(copy)
        assert abs(view.width - w) <= tol and abs(view.height - h) <= tol
    # a photo on its own plain (shaded) background in a frame: the frame and its text go
    # (how far into the shaded background the cut goes varies; the index compares the
    # photo, its trimmed view and its crops with both views of the query)
    ivory = Image.open(_first(shared_data / INDEXED[1][0])).convert("RGB")
    own = trim_box(ivory)
    assert own is not None
    copy, (x, y) = _screenshot(ivory, canvas=(235, 235, 250))
    box = trim_box(copy)
    assert box is not None
    tol = 0.03 * max(ivory.size) + 2
    assert box[0] >= x - tol and box[1] >= y - tol, box
    assert box[2] <= x + ivory.width + tol and box[3] <= y + ivory.height + tol, box
    # the index stores the trimmed photo (when it differs) and five crops of 70 % of it
    views = index_views(copy)
    assert len(views) == 6 and views[0].size == trim_borders(copy).size
    assert all(abs(v.width * v.height / (views[0].width * views[0].height) - 0.7) < 0.02
               for v in views[1:])
    assert len(index_views(tiger)) == 5 and len(index_views(tiger, crops=False)) == 0


def test_framed_and_cropped_copies_match_through_views(
        real_index: tuple[MatchIndex, list[Path]]) -> None:
    index, paths = real_index
    assert index.header["views"] == "crops" and index.view_count >= 5 * len(index)
    assert set(index.view_owner.tolist()) == set(range(len(index)))
    tiger = Image.open(paths[0]).convert("RGB")
    w, h = tiger.size
    ivory = Image.open(paths[1]).convert("RGB")
    copies = {
        "screenshot": _screenshot(tiger)[0],
        "ivory screenshot": _screenshot(ivory, canvas=(235, 235, 250))[0],
        "corner crop 62 %": tiger.crop((0, int(h * 0.21), int(w * 0.79), h)),
        "off-centre crop 64 %": tiger.crop((int(w * 0.2), 0, w, int(h * 0.8))),
    }
    loose = index.copy()  # the views at work, below the default threshold too
    loose.similarity_threshold = 0.85
    clf = wv.Classifier(None, match_index=loose, open_set=False)
    clf_emb = wv.Classifier(None, return_embedding=True, open_set=False)
    for name, copy in copies.items():
        ref = "case-ivory" if name.startswith("ivory") else "case-tiger"
        with_views = clf.classify(copy).matches
        assert with_views and with_views[0].reference == ref, (name, with_views)
        # the photo alone against the indexed photo alone (no views on either side)
        emb = np.array(clf_emb.classify(copy).embedding, np.float32)
        sim_plain = float(index.embeddings[index.references.index(ref)].astype(np.float32)
                          @ (emb / np.linalg.norm(emb)))
        assert with_views[0].similarity is not None
        assert with_views[0].similarity > sim_plain + 0.01, (name, with_views[0], sim_plain)
    # with the default thresholds, the tiger's copies match
    default = wv.Classifier(None, match_index=index, open_set=False)
    for name in ("screenshot", "corner crop 62 %", "off-centre crop 64 %"):
        got = default.classify(copies[name]).matches
        assert got and got[0].reference == "case-tiger", (name, got)
    # the screenshot's trimmed view also gives back the PDQ match the frame broke
    shot = default.classify(copies["screenshot"]).matches
    assert shot is not None and shot[0].hash_distance is not None
    assert shot[0].hash_distance <= 31


def test_views_follow_their_entries(real_index: tuple[MatchIndex, list[Path]],
                                    tmp_path: Path) -> None:
    index, _ = real_index
    back = load_index(index.save(tmp_path / "v.npz"))
    for k, v in index.views().items():
        assert np.array_equal(back.views()[k], v), k
    edited = index.copy()
    owners = [index.references[i] for i in index.view_owner]
    edited.remove(["case-ivory"])
    assert [edited.references[i] for i in edited.view_owner] == [
        o for o in owners if o != "case-ivory"]
    kept = np.array([o != "case-ivory" for o in owners])
    assert np.array_equal(edited.view_embeddings, index.view_embeddings[kept])
    shared = index.for_sharing(embeddings=False)
    assert shared.view_count == index.view_count and shared.view_embeddings.shape[1] == 0
    merged = edited.merge(index.for_sharing())
    assert merged.view_count == edited.view_count + index.view_count
    assert [merged.references[i] for i in merged.view_owner[edited.view_count:]] == \
        [index.entry_ids()[i] for i in index.view_owner]
    with np.load(tmp_path / "v.npz") as z:  # a view of no entry
        arrays = {k: z[k] for k in z.files}
    arrays["view_owner"] = arrays["view_owner"] + len(index)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(MatchIndexError, match="no entry"):
        load_index(tmp_path / "bad.npz")
    del arrays["view_hashes"]
    np.savez(tmp_path / "bad2.npz", **arrays)
    with pytest.raises(MatchIndexError, match="incomplete view arrays"):
        load_index(tmp_path / "bad2.npz")


def _local_copies(img: Image.Image) -> dict[str, Image.Image]:
    """Copies whose embedding moves most: rotated, cropped off-centre, written on (as
    benchmarks/match_robustness.py makes them)."""
    w, h = img.size
    text = img.copy()
    d = ImageDraw.Draw(text)
    size = max(10, h // 12)
    d.text((w // 20, h // 3), "WhatsApp +00 123 456", fill=(255, 255, 255),
           font=ImageFont.load_default(size=size), stroke_width=2, stroke_fill=(0, 0, 0))
    d.text((w // 20, h // 3 + size + 4), "DM for price", fill=(255, 40, 40),
           font=ImageFont.load_default(size=size))
    return {
        "rotate5": img.rotate(5, resample=Image.Resampling.BILINEAR, expand=True,
                              fillcolor=(255, 255, 255)),
        "crop62": img.crop((int(w * 0.2), int(h * 0.18), w, h)),
        "text": text,
    }


def test_local_check_finds_copies_the_embedding_misses(
        real_index: tuple[MatchIndex, list[Path]], shared_data: Path) -> None:
    index, paths = real_index
    assert index.local_keypoints == lf.INDEX_KEYPOINTS and (index.local_count >= 100).all()
    strict = index.copy()  # thresholds no edited copy reaches: only the local check matches
    strict.similarity_threshold, strict.hash_threshold = 0.999, 0
    off = strict.copy()
    off.verify = False
    for n in (0, 1):  # the tiger and the ivory carving
        img = Image.open(paths[n]).convert("RGB")
        copies = _local_copies(img)
        found = wv.classify_images(list(copies.values()), match_index=strict)
        for name, r in zip(copies, found, strict=True):
            assert isinstance(r, wv.Prediction) and r.matches, (n, name)
            m = r.matches[0]
            assert m.reference == index.references[n] and m.by == "local", (n, name, m)
            assert m.inliers is not None and m.inliers >= strict.min_inliers
            assert r.to_dict()["matches"][0]["inliers"] == m.inliers and r.known_image
        assert all(r.matches == () for r in  # type: ignore[union-attr]
                   wv.classify_images(list(copies.values()), match_index=off))
        hash_mode = strict.copy()
        hash_mode.mode = "hash"  # the check stands in for the embedding, never for the hash
        assert wv.classify_image(copies["rotate5"], match_index=hash_mode).matches == ()
    # other photos of the same folders (look-alikes) fail the check itself
    for d, _, _ in INDEXED:
        for k in range(1, 6):
            other = lf.local_features(Image.open(_first(shared_data / d, k)), lf.QUERY_KEYPOINTS)
            for i in range(len(index)):
                ref = lf.unpack(index.local_points[i], index.local_descriptors[i],
                                index.local_count[i], index.local_size[i])
                assert not lf.accepted(lf.verify(other, ref)), (d, k, i)
        for r in wv.classify_images([_first(shared_data / d, k) for k in range(1, 6)],
                                    match_index=strict):
            assert isinstance(r, wv.Prediction) and r.matches == (), (r.source, r.matches)


def test_local_features_follow_their_entries(real_index: tuple[MatchIndex, list[Path]],
                                             tmp_path: Path) -> None:
    index, paths = real_index
    back = load_index(index.save(tmp_path / "l.npz"))
    assert back.local_keypoints == index.local_keypoints
    for k, v in index.local().items():
        assert np.array_equal(back.local()[k], v), k
    assert back.policy()["min_inliers"] == lf.MIN_INLIERS
    assert load_index(tmp_path / "l.npz", min_inliers=40).min_inliers == 40
    edited = index.copy()
    edited.remove(["case-ivory"])
    assert np.array_equal(edited.local_descriptors, index.local_descriptors[[0, 2, 3]])
    merged = edited.merge(index.for_sharing(), skip_duplicates=True)
    assert np.array_equal(merged.local_count, index.local_count[[0, 2, 3, 0, 1, 2, 3]])
    assert index.for_sharing(local=False).local_keypoints == 0
    assert index.for_sharing(embeddings=False).local_keypoints == 0
    with np.load(index.for_sharing(local=False).save(tmp_path / "s.npz")) as z:
        assert not set(z.files) & {"local_points", "local_descriptors"}
    # entries from an index without local features get none (count 0) and still match
    plain = index.for_sharing(local=False)
    grown = index.merge(plain)
    assert grown.local_keypoints == index.local_keypoints
    assert (grown.local_count[len(index):] == 0).all()
    with np.load(tmp_path / "l.npz") as z:
        arrays = {k: z[k] for k in z.files}
    bad = dict(arrays, local_count=arrays["local_count"] + 10_000)
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(MatchIndexError, match="local keypoint count"):
        load_index(tmp_path / "bad.npz")
    del arrays["local_size"]
    np.savez(tmp_path / "bad2.npz", **arrays)
    with pytest.raises(MatchIndexError, match="incomplete local"):
        load_index(tmp_path / "bad2.npz")
    with pytest.raises(wv.ConfigError, match="min_inliers"):
        MatchIndex(dict(index.header), min_inliers=2)
    readded = index.copy()  # photos added later get their keypoints, the same as at build
    readded.remove(["case-ivory"])
    assert add_photos(readded, [KnownPhoto(str(paths[1]), "case-ivory", "ivory_carving")]) == []
    assert readded.local_count[-1] == index.local_count[1]
    assert np.array_equal(readded.local_descriptors[-1], index.local_descriptors[1])
    assert np.array_equal(readded.local_points[-1], index.local_points[1])
    small, failed = build_index([KnownPhoto(str(paths[0]), "a", "live_tiger")], local=False,
                                views="none")
    assert failed == [] and small.local_keypoints == 0 and small.local_points.shape == (1, 0, 2)


def test_model_mismatch_is_refused(real_index: tuple[MatchIndex, list[Path]],
                                   tiny_model_dir: Path, tmp_path: Path) -> None:
    index, _ = real_index
    with pytest.raises(IndexModelMismatchError, match="wildvision-base"):
        wv.Classifier(tiny_model_dir, match_index=index)
    with pytest.raises(IndexModelMismatchError):
        wv.Classifier(None, precision="int8", match_index=index)
    with pytest.raises(wv.ConfigError, match="load_index"):
        wv.Classifier(None, match_index=str(tmp_path / "x.npz"))  # type: ignore[arg-type]
    # a hash-only (shared) list works with any model
    hashes = index.for_sharing(embeddings=False)
    clf = wv.Classifier(tiny_model_dir, match_index=hashes)
    assert clf.match_index is hashes


def test_save_load_round_trip_and_corrupt_files(real_index: tuple[MatchIndex, list[Path]],
                                                tmp_path: Path) -> None:
    index, _ = real_index
    path = index.save(tmp_path / "known.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["known.npz"]  # no temporary left behind
    back = load_index(path)
    assert back.references == index.references and back.labels == index.labels
    assert back.groups == index.groups and back.header["model"] == index.header["model"]
    assert np.array_equal(back.hashes, index.hashes)
    assert np.array_equal(back.embeddings, index.embeddings)
    assert back.policy() == index.policy()
    assert load_index(path, hash_threshold=10).hash_threshold == 10
    data = path.read_bytes()
    for name, content in (("cut.npz", data[: len(data) // 2]), ("empty.npz", b""),
                          ("junk.npz", b"not an index at all")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(MatchIndexError, match=name):
            load_index(tmp_path / name)
    with pytest.raises(MatchIndexError, match="no such"):
        load_index(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(MatchIndexError, match="not a wildvision match index"):
        load_index(tmp_path / "other.npz")
    with np.load(path) as z:  # arrays of different lengths
        arrays = {k: z[k] for k in z.files}
    arrays["labels"] = arrays["labels"][:2]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(MatchIndexError, match="differ in length"):
        load_index(tmp_path / "bad.npz")


def test_failed_save_leaves_the_old_file(real_index: tuple[MatchIndex, list[Path]],
                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    index, _ = real_index
    path = index.save(tmp_path / "known.npz")
    data = path.read_bytes()

    def disk_full(f: io.BufferedWriter, **arrays: np.ndarray) -> None:
        f.write(b"PK\x03\x04 half an index")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="No space"):
        index.save(path)
    assert path.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["known.npz"]


def test_duplicates_unreadable_photos_and_editing(real_index: tuple[MatchIndex, list[Path]],
                                                  tmp_path: Path) -> None:
    index, paths = real_index
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    manifest = tmp_path / "known.csv"
    manifest.write_text("path,reference,label\n"
                        f"{paths[0]},a,live_tiger\nbroken.jpg,b,ivory_carving\n")
    photos = photos_from_manifest(manifest)
    small, failed = build_index(photos)
    assert small.references == ["a"] and small.groups == ["live_protected_animal"]
    assert [f.source for f in failed] == [str(bad)] and failed[0].error_type

    dup = [KnownPhoto(str(paths[0]), "x"), KnownPhoto(str(paths[1]), "x")]
    with pytest.raises(MatchIndexError, match="duplicate"):
        build_index(dup)
    edited = index.copy()
    with pytest.raises(MatchIndexError, match="duplicate"):
        edited.add(["case-tiger"], ["x"], ["ivory"], edited.hashes[:1], edited.quality[:1],
                   edited.embeddings[:1])
    assert len(edited) == 4  # nothing half-added
    assert edited.remove(["case-comb"]) == 1 and "case-comb" not in edited.references
    with pytest.raises(MatchIndexError, match="not in the index"):
        edited.remove(["nope"])

    merged = edited.merge(small)
    assert merged.references == [*edited.references, "a"]
    with pytest.raises(MatchIndexError, match="duplicate"):
        merged.merge(small)
    assert len(merged.merge(small, skip_duplicates=True)) == len(merged)
    other_model = small.copy()
    other_model.header["embedding_sha256"] = "0" * 64
    with pytest.raises(IndexModelMismatchError):
        merged.merge(other_model)
    # hash-only entries (a shared list) join an index with embeddings and match by hash only
    with_list = small.merge(index.for_sharing(embeddings=False))
    assert len(with_list) == 5 and not with_list.embeddings[1:].any()
    r = wv.classify_image(ImageOps.mirror(Image.open(paths[2]).convert("RGB")),
                          match_index=with_list)
    assert r.matches[0].label == "benign" and r.matches[0].similarity is None


def test_sharing_hides_references_and_labels(real_index: tuple[MatchIndex, list[Path]],
                                             tmp_path: Path) -> None:
    index, paths = real_index
    shared = index.for_sharing()
    assert shared.shared and shared.labels == index.groups
    assert not set(shared.references) & set(index.references)
    assert shared.references == index.entry_ids()
    # the sharer finds its own entries from a shared reference
    assert index.find_ids([shared.references[2]]) == [2]
    saved = load_index(shared.save(tmp_path / "shared.npz"))
    r = wv.classify_image(ImageOps.mirror(Image.open(paths[2]).convert("RGB")),
                          match_index=saved)
    assert r.matches[0].reference == shared.references[2] and r.matches[0].label == "benign"

    hashes_only = index.for_sharing(embeddings=False)
    assert hashes_only.embedding_dim == 0 and "embedding_sha256" not in hashes_only.header
    text = hashes_only.write_pdq_list(tmp_path / "list.txt", "te")
    assert text.splitlines()[0] == "pdq " + index.hashes[0].tobytes().hex()
    csv_text = hashes_only.write_pdq_list(tmp_path / "list.csv", "csv")
    assert csv_text.splitlines()[1].split(",")[2] == "ivory"
    for name in ("list.txt", "list.csv"):
        back = read_pdq_list(tmp_path / name)
        assert np.array_equal(back.hashes, index.hashes) and back.embedding_dim == 0
    assert read_pdq_list(tmp_path / "list.csv").groups == index.groups
    # a hash list matches by hash only, whatever the model
    r = wv.classify_image(ImageOps.mirror(Image.open(paths[0]).convert("RGB")),
                          match_index=load_index(tmp_path / "list.txt"))
    assert r.matches and r.matches[0].by == "hash" and r.matches[0].similarity is None
    (tmp_path / "bad.txt").write_text("pdq " + "ab" * 32 + "\nmd5 0123\n")
    with pytest.raises(MatchIndexError, match="line 2"):
        read_pdq_list(tmp_path / "bad.txt")


# -- search engines -------------------------------------------------------------------------


def test_approximate_engines_agree_with_exact() -> None:
    rng = np.random.default_rng(0)
    n, d = 3000, 64
    emb = rng.normal(size=(n, d)).astype(np.float32)
    hashes = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    refs = [f"r{i}" for i in range(n)]
    exact = MatchIndex({"embedding_dim": d}, engine="exact", similarity_threshold=0.8)
    exact.add(refs, refs, ["benign"] * n, hashes, np.full(n, 100, np.uint8), emb)
    approx = exact.copy()
    approx.engine = "ivf"
    probe = rng.choice(n, 50, replace=False)
    queries = emb[probe] + rng.normal(scale=0.3, size=(50, d)).astype(np.float32)
    qh = hashes[probe].copy()
    flips = rng.integers(0, 256, (50, 20))  # up to 20 flipped bits per hash
    for row, bits in enumerate(flips):
        for b in bits:
            qh[row, b // 8] ^= np.uint8(1 << (7 - b % 8))
    keys = [(qh[i].tobytes(), qh[i].tobytes(), 100) for i in range(50)]
    got_exact = exact.lookup(keys, queries)
    got_approx = approx.lookup(keys, queries)
    assert approx._get_engines().emb_kind == "ivf"
    for i, (a, b) in enumerate(zip(got_exact, got_approx, strict=True)):
        assert a and a[0].reference == f"r{probe[i]}" and a[0].hash_distance is not None
        assert b and b[0].reference == a[0].reference
        assert b[0].hash_distance == a[0].hash_distance
        assert b[0].similarity == pytest.approx(a[0].similarity, abs=1e-3)
    # unrelated queries: no match
    none = exact.lookup([None] * 5, rng.normal(size=(5, d)).astype(np.float32))
    assert none == [()] * 5


def _flip(h: np.ndarray, bits: np.ndarray) -> np.ndarray:
    out = h.copy()
    for b in bits:
        out[b // 8] ^= np.uint8(1 << (7 - b % 8))
    return out


def test_engines_search_views_and_wide_hash_thresholds() -> None:
    rng = np.random.default_rng(1)
    n, d, v = 600, 48, 3
    emb = rng.normal(size=(n, d)).astype(np.float32)
    hashes = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    views = {"view_owner": np.repeat(np.arange(n), v),
             "view_hashes": rng.integers(0, 256, (n * v, 32), dtype=np.uint8),
             "view_quality": np.full(n * v, 100, np.uint8),
             "view_embeddings": rng.normal(size=(n * v, d)).astype(np.float32)}
    refs = [f"r{i}" for i in range(n)]
    exact = MatchIndex({"embedding_dim": d}, engine="exact", similarity_threshold=0.9,
                       hash_threshold=47)
    exact.add(refs, refs, ["benign"] * n, hashes, np.full(n, 100, np.uint8), emb, views)
    approx = exact.copy()
    approx.engine = "ivf"
    probe = rng.choice(n * v, 40, replace=False)  # queries near a view, far from its photo
    queries = views["view_embeddings"][probe] + rng.normal(scale=0.1, size=(40, d))
    from wildvision.match.index import PhotoKeys
    # hashes 25 bits from the view's hash (the approximate engine's tables find every one)
    # and 40 bits (only those sharing a chunk within one bit with the query: most of them)
    owner = views["view_owner"][probe]
    for bits in (25, 40):
        keys = [PhotoKeys((_flip(views["view_hashes"][j], rng.choice(256, bits, replace=False))
                           .tobytes(),), (100,)) for j in probe]
        for index in (exact, approx):
            by_emb = index.lookup([None] * 40, queries.astype(np.float32))
            by_hash = index.lookup(keys, None)
            found = 0
            for i in range(40):
                assert by_emb[i] and by_emb[i][0].reference == f"r{owner[i]}", i
                assert by_emb[i][0].similarity is not None and by_emb[i][0].similarity > 0.9
                if by_hash[i]:
                    assert by_hash[i][0].reference == f"r{owner[i]}", i
                    assert by_hash[i][0].hash_distance == bits
                    found += 1
            assert found == 40 if index is exact or bits <= 31 else found >= 34, (bits, found)
    assert approx._get_engines().hash_tables is not None
    # a view embedding passed by the classifier (a query's trimmed view) is compared too
    photo = rng.normal(size=(1, d)).astype(np.float32)  # the photo itself matches nothing
    got = exact.lookup([None], photo, [emb[7:8] + 0.01])
    assert got[0] and got[0][0].reference == "r7"
    assert exact.lookup([None], photo) == [()]


@pytest.mark.parametrize("flips,radius", [(0, 15), (1, 31), (2, 47), (1, 47)])
def test_hash_tables_agree_with_brute_force(flips: int, radius: int) -> None:
    from wildvision.match.mih import HashTables

    rng = np.random.default_rng(flips * 100 + radius)
    base = rng.integers(0, 256, (5000, 32), dtype=np.uint8)
    base[4000:] = base[:1000]  # duplicates: every copy is found, once
    queries = np.stack([_flip(base[i], rng.choice(256, int(rng.integers(0, 56)), replace=False))
                        for i in rng.choice(5000, 60, replace=False)])
    tables = HashTables(base)
    q, rows, d = tables.range_search(queries, radius, flips=flips)
    got = set(zip(q.tolist(), rows.tolist(), d.tolist(), strict=True))
    assert len(got) == len(q)  # no pair twice
    bits = np.unpackbits(queries[:, None, :] ^ base[None, :, :], axis=2).sum(axis=2)
    truth = {(i, j, int(bits[i, j])) for i, j in zip(*np.nonzero(bits <= radius), strict=True)}
    assert got <= truth  # nothing beyond the radius, distances exact
    sure = 16 * (flips + 1) - 1  # within this every hash is found
    assert {t for t in truth if t[2] <= sure} <= got
    if sure >= radius:
        assert got == truth
    else:  # approximate: most of the rest (hashes 32-47 bits away)
        rest = {t for t in truth if t[2] > sure}
        assert len(rest) >= 5 and len(rest & got) >= 0.8 * len(rest), (len(rest), len(got))


def test_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)
    monkeypatch.setitem(sys.modules, "pdqhash", None)
    index = MatchIndex({"embedding_dim": 0}, references=["a"], labels=["a"], groups=["benign"],
                       hashes=np.zeros((1, 32), np.uint8), quality=np.array([100], np.uint8))
    with pytest.raises(wv.MissingExtraError, match=r"pip install 'wildvision\[match\]'"):
        index.lookup([None], None)
    with pytest.raises(wv.MissingExtraError, match=r"wildvision\[match\]"):
        pdq_hash_array(synthetic(0, 256, 192))


# -- CLI and service --------------------------------------------------------------------------


def test_cli_build_classify_share_import(shared_data: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from wildvision.cli import main

    assert main(["match"]) == 2
    assert "needs an action" in capsys.readouterr().err
    known = tmp_path / "known"
    for d, ref, label in INDEXED[:2]:
        (known / label).mkdir(parents=True)
        src = _first(shared_data / d)
        (known / label / f"{ref}.jpg").write_bytes(src.read_bytes())
    (known / "live_tiger" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    index = tmp_path / "known.npz"
    assert main(["match", "build", str(known), "-o", str(index)]) == 1  # one unreadable photo
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["count"] == 2 and "broken.jpg" in err
    assert summary["groups"] == {"ivory": 1, "live_protected_animal": 1}
    assert summary["views"] >= 10 and summary["bytes_per_photo_on_disk"] > 6 * 2 * 1280
    assert summary["local_keypoints_per_photo"] == lf.INDEX_KEYPOINTS
    assert summary["policy"]["min_inliers"] == lf.MIN_INLIERS
    lean = tmp_path / "lean.npz"
    assert main(["match", "build", str(known), "-o", str(lean),
                 "--views", "none", "--no-local", "--min-inliers", "30"]) == 1
    lean_summary = json.loads(capsys.readouterr().out)
    assert lean_summary["views"] == 0 and lean_summary["count"] == 2
    assert lean_summary["local_keypoints_per_photo"] == 0
    assert lean_summary["policy"]["min_inliers"] == 30
    assert lean_summary["bytes_per_photo_on_disk"] == 32 + 1 + 2 * 1280
    assert main(["match", "build", str(known), "-o", str(lean), "--views", "none"]) == 1
    assert json.loads(capsys.readouterr().out)["bytes_per_photo_on_disk"] == \
        32 + 1 + 2 * 1280 + 6 + 36 * lf.INDEX_KEYPOINTS
    assert main(["match", "show", str(index)]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "wildvision-base"

    query = tmp_path / "query.jpg"
    ImageOps.mirror(Image.open(known / "live_tiger" / "case-tiger.jpg")).save(query, quality=60)
    assert main(["classify", str(query), "--match-index", str(index)]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["known_image"] is True and rec["decision"] == "flag"
    assert rec["matches"][0]["reference"] == "live_tiger/case-tiger.jpg"
    assert rec["matches"][0]["label"] == "live_tiger"
    other = _first(shared_data / INDEXED[2][0])
    assert main(["classify", str(query), str(other), "--match-index", str(index), "-f",
                 "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["known_image"] == "True" and rows[0]["match_count"] >= "1"
    assert rows[0]["match_reference"] == "live_tiger/case-tiger.jpg"
    assert rows[0]["match_label"] == "live_tiger" and rows[0]["match_by"] in ("hash", "both")
    assert float(rows[0]["match_similarity"]) > 0.9 and int(rows[0]["match_hash_distance"]) < 32
    assert rows[1]["known_image"] == "False" and rows[1]["match_count"] == "0"
    assert rows[1]["match_reference"] == ""
    # the match columns come with --match-index only; --resume needs the same columns
    res = tmp_path / "res.csv"
    assert main(["classify", str(query), "--match-index", str(index), "-f", "csv", "-o",
                 str(res)]) == 0
    assert main(["classify", str(query), "--match-index", str(index), "-f", "csv", "-o",
                 str(res), "--resume"]) == 0
    assert "1 of 1 inputs already done" in capsys.readouterr().err
    assert main(["classify", str(query), "-f", "csv", "-o", str(res), "--resume"]) == 2
    assert "match columns" in capsys.readouterr().err
    assert main(["classify", str(query), "-f", "csv"]) == 0
    assert "match_reference" not in capsys.readouterr().out

    shared, te = tmp_path / "shared.npz", tmp_path / "list.txt"
    assert main(["match", "export", str(index), "-o", str(shared)]) == 0
    assert main(["match", "export", str(index), "-o", str(te), "-f", "te"]) == 0
    assert load_index(shared).local_keypoints == lf.INDEX_KEYPOINTS
    assert main(["match", "export", str(index), "-o", str(tmp_path / "nk.npz"),
                 "--no-local"]) == 0
    assert load_index(tmp_path / "nk.npz").local_keypoints == 0
    assert all(line.startswith("pdq ") for line in te.read_text().splitlines())
    capsys.readouterr()
    assert main(["classify", str(query), "--match-index", str(shared)]) == 0
    rec = json.loads(capsys.readouterr().out)
    shared_id = rec["matches"][0]["reference"]
    assert rec["matches"][0]["label"] == "live_protected_animal" and "tiger" not in shared_id
    assert main(["match", "show", str(index), "--find", shared_id]) == 0
    assert json.loads(capsys.readouterr().out)["reference"] == "live_tiger/case-tiger.jpg"

    partner = tmp_path / "partner.npz"
    assert main(["match", "import", str(te), "--into", str(partner)]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 2
    assert main(["match", "merge", str(index), str(partner), "-o",
                 str(tmp_path / "all.npz")]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 4
    assert main(["match", "remove", str(index), shared_id, "--ids"]) == 0
    assert load_index(index).references == ["ivory_carving/case-ivory.jpg"]
    # bad inputs: typed one-line errors, exit 1; nothing written
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 nope")
    assert main(["classify", str(query), "--match-index", str(tmp_path / "corrupt.npz")]) == 1
    assert "corrupt" in capsys.readouterr().err
    assert main(["match", "remove", str(index), "nope"]) == 1
    assert main(["classify", str(query), "--match-index", str(index), "-m",
                 str(Path(__file__).parent / "data" / "tiny-model")]) == 1
    assert "not comparable" in capsys.readouterr().err


def test_service_lists_matches(shared_data: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from wildvision.serve import ServeConfig, create_app

    photo = _first(shared_data / INDEXED[0][0])
    index, failed = build_index([KnownPhoto(str(photo), "case-1", "live_tiger")],
                                model=tiny_model_dir)
    assert not failed
    path = index.save(tmp_path / "tiny.npz")
    buf = io.BytesIO()
    ImageOps.mirror(Image.open(photo).convert("RGB")).save(buf, "JPEG", quality=70)
    cfg = ServeConfig(model=str(tiny_model_dir), match_index=str(path))
    with TestClient(create_app(cfg)) as client:
        for _ in range(200):
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.05)
        r = client.post("/v1/classify", content=buf.getvalue(),
                        headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["known_image"] is True and body["matches"][0]["reference"] == "case-1"
    assert body["decision"] == "flag"
    # a corrupt index keeps the service unready, with the typed error
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 nope")
    bad = ServeConfig(model=str(tiny_model_dir), match_index=str(tmp_path / "bad.npz"))
    with TestClient(create_app(bad)) as client:
        for _ in range(200):
            ready = client.get("/readyz")
            if ready.json()["status"] != "loading":
                break
            time.sleep(0.05)
    assert ready.status_code == 503 and ready.json()["error_type"] == "MatchIndexError"


def test_speed_benchmark_runs_small(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/match_speed.py end to end on a small synthetic index: both engines find
    every near copy, and the approximate one agrees with the exact one."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "match_speed.py"
    spec = importlib.util.spec_from_file_location("match_speed", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--size", "4000", "--dim", "64", "--clusters", "20", "--queries", "20",
                     "--nprobe", "4,16", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["engines"]) == {"exact", "ivf-nprobe4", "ivf-nprobe16"}
    for name, rec in report["engines"].items():
        assert rec["near_copy_top1_correct"] == 1.0, name
        assert rec["hash_only_found_32_to_47_bits"] >= (1.0 if name == "exact" else 0.8), name
        assert rec["lookup_ms_near_copy"] > 0
    assert report["engines"]["ivf-nprobe16"]["same_top_match_as_exact_near_copies"] == 1.0
