"""The batch pipeline (Classifier.iter_classify): order, per-item failures, bounded read-ahead,
the same results whatever the thread counts, and JPEG draft decoding shared with training.

Speed is not asserted here: benchmarks/throughput.py measures it against a baseline."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from wildvision.errors import ConfigError
from wildvision.imaging import decode_image
from wildvision.predict import Classifier, Failure, Prediction
from wildvision.preprocess import preprocess_image

from conftest import ZooItem, encode, photo_like


@pytest.fixture(scope="module")
def clf(tiny_model_dir: Path) -> Classifier:
    return Classifier(tiny_model_dir, decode_workers=3, threads=1)


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A listing-size JPEG (1500x1100): far above the tiny model's draft size, so draft
    decoding changes the decoded pixels."""
    path = tmp_path_factory.mktemp("big") / "listing.jpg"
    path.write_bytes(encode(photo_like(1500, 1100, seed=42), "JPEG", quality=90))
    return path


def _mixed_sources(photo_files: list[Path], image_zoo: dict[str, ZooItem]
                   ) -> tuple[list[str], dict[int, str]]:
    """Good photos with bad files spliced in; returns sources and {index: error type}."""
    bad = [image_zoo[n] for n in ("truncated.jpg", "empty.jpg", "page.jpg", "bomb.png",
                                  "icon.ico", "garbage.png")]
    sources = [str(p) for p in photo_files[:40]]
    expected: dict[int, str] = {}
    for k, item in enumerate(bad):
        pos = 3 + 7 * k  # spread over several batches, incl. a batch's first and last slot
        sources.insert(pos, str(item.path))
    sources.insert(len(sources), str(Path(sources[0]).parent / "missing.jpg"))
    for i, s in enumerate(sources):
        for item in bad:
            if s == str(item.path):
                assert item.error is not None
                expected[i] = item.error.__name__
    expected[len(sources) - 1] = "InvalidImageError"
    return sources, expected


def test_order_and_failures_in_place(clf: Classifier, photo_files: list[Path],
                                     image_zoo: dict[str, ZooItem]) -> None:
    sources, expected_failures = _mixed_sources(photo_files, image_zoo)
    results = list(clf.iter_classify(sources, batch_size=4))
    assert [r.source for r in results] == sources
    failed = {i: r.error_type for i, r in enumerate(results) if isinstance(r, Failure)}
    assert failed == expected_failures
    # every good item gets exactly what classifying it alone gives (same tensor, same row)
    for s, r in zip(sources, results, strict=True):
        if isinstance(r, Prediction):
            assert r.to_dict() == clf.classify(s).to_dict()


def test_batch_of_only_failures_and_partial_last_batch(clf: Classifier,
                                                       image_zoo: dict[str, ZooItem],
                                                       photo_files: list[Path]) -> None:
    bad = [str(image_zoo["empty.jpg"].path)] * 3
    good = [str(p) for p in photo_files[:2]]
    results = clf.classify_many(bad + good, batch_size=3)  # batch 1: all bad; batch 2: short
    assert [r.ok for r in results] == [False, False, False, True, True]


class _CountingSource:
    """An endless generator of image bytes recording how many items were taken."""

    def __init__(self, data: list[bytes]) -> None:
        self.data = data
        self.taken = 0

    def __iter__(self) -> Iterator[bytes]:
        for d in itertools.cycle(self.data):
            self.taken += 1
            yield d


@pytest.mark.parametrize("batch_size", [1, 5, 32])
def test_reads_ahead_a_bounded_number_of_images(clf: Classifier, photo_files: list[Path],
                                                batch_size: int) -> None:
    src = _CountingSource([p.read_bytes() for p in photo_files[:7]])
    bound = 5 * batch_size  # documented in Classifier.iter_classify
    ahead = []
    n = 0
    for r in clf.iter_classify(src, batch_size=batch_size):  # an endless stream
        assert r.ok
        ahead.append(src.taken - n)
        n += 1
        if n == 100:
            break
    assert max(ahead) <= bound
    assert max(ahead) >= batch_size  # it does read ahead (decode overlaps inference)
    assert src.taken <= n + bound


@pytest.mark.parametrize("slow_decode", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_model_runs_overlap_up_to_two(tiny_model_dir: Path, photo_files: list[Path],
                                      threads: int, slow_decode: bool) -> None:
    """Two model runs at once with 2+ threads, one with 1. A run waits until a second one is
    running (with 2 threads; up to 20 s) instead of sleeping a fixed time, so a busy machine
    (here: images that take 50 ms each to decode) cannot make the overlap come too late."""
    clf = Classifier(tiny_model_dir, threads=threads, decode_workers=2)
    run = clf.backend.run
    active, peak, lock = 0, 0, threading.Lock()
    overlapped = threading.Event()

    def slow_run(batch: np.ndarray) -> dict[str, np.ndarray]:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
            if active >= 2:
                overlapped.set()
        # with one run allowed a second never comes: a short wait gives a wrong one a chance
        overlapped.wait(20.0 if threads >= 2 else 0.05)
        try:
            return run(batch)
        finally:
            with lock:
                active -= 1

    clf.backend.run = slow_run  # type: ignore[method-assign]
    if slow_decode:
        prepare = clf._prepare

        def slow_prepare(*args: Any, **kwargs: Any) -> Any:
            time.sleep(0.05)
            return prepare(*args, **kwargs)

        clf._prepare = slow_prepare  # type: ignore[method-assign]
    sources = [str(p) for p in photo_files[:40]]
    results = clf.classify_many(sources, batch_size=4)
    assert [r.source for r in results] == sources and all(r.ok for r in results)
    assert peak == min(threads, 2)


def test_threads_must_be_positive(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="threads"):
        Classifier(tiny_model_dir, threads=0)


def test_stopping_early_releases_the_decode_threads(clf: Classifier,
                                                    photo_files: list[Path]) -> None:
    def decode_threads() -> int:
        return sum(t.name.startswith(("wv-decode", "wv-infer")) for t in threading.enumerate())

    before = decode_threads()
    it = clf.iter_classify(itertools.cycle([str(p) for p in photo_files[:5]]), batch_size=4)
    assert next(it).ok
    assert decode_threads() > before
    it.close()
    assert decode_threads() == before


@pytest.mark.parametrize(("workers", "threads"), [(1, 1), (4, 2), (2, 1)])
def test_same_results_whatever_the_thread_counts(tiny_model_dir: Path, photo_files: list[Path],
                                                 workers: int, threads: int) -> None:
    sources = [str(p) for p in photo_files[:30]]
    ref = Classifier(tiny_model_dir, decode_workers=1, threads=1).classify_many(
        sources, batch_size=8)
    # different images get different outputs (the tiny model follows a colour rule)
    assert len({a.top_labels[0].label for a in ref if isinstance(a, Prediction)}) >= 3
    other = Classifier(tiny_model_dir, decode_workers=workers, threads=threads,
                       return_embedding=True).classify_many(sources, batch_size=8)
    for a, b in zip(ref, other, strict=True):
        assert isinstance(a, Prediction) and isinstance(b, Prediction)
        assert a.source == b.source and a.image_sha256 == b.image_sha256
        np.testing.assert_allclose([g.probability for g in a.groups],
                                   [g.probability for g in b.groups], atol=1e-5)
        assert [s.label for s in a.top_labels] == [s.label for s in b.top_labels]
        assert b.embedding is not None and len(b.embedding) > 0


def test_batch_size_is_validated_when_called(clf: Classifier) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        clf.iter_classify([], batch_size=0)  # not deferred to the first next()
    assert list(clf.iter_classify([], batch_size=4)) == []


def test_prepare_into_a_batch_row_is_bit_identical(clf: Classifier, big_jpeg: Path,
                                                   photo_files: list[Path]) -> None:
    cfg = clf.card.preprocess
    for src in [big_jpeg, *photo_files[:6]]:
        out = np.full((3, cfg.input_size, cfg.input_size), np.nan, np.float32)
        p = clf._prepare(0, str(src), out)
        assert p.error is None and p.tensor is out
        expected = preprocess_image(decode_image(src, draft_size=cfg.draft_size).image, cfg)
        assert np.array_equal(out, expected)
        assert np.array_equal(clf._prepare(0, str(src)).tensor, expected)


def test_pipeline_uses_draft_decoding(clf: Classifier, big_jpeg: Path) -> None:
    cfg = clf.card.preprocess
    assert cfg.jpeg_draft and cfg.draft_size is not None
    drafted = decode_image(big_jpeg, draft_size=cfg.draft_size)
    full = decode_image(big_jpeg)
    assert drafted.original_size == full.image.size == (1500, 1100)
    # the cheapest DCT scale (1/8 here) still at least draft_size on both sides
    assert drafted.image.size == (188, 138)
    assert min(drafted.image.size) >= cfg.draft_size[0]
    via_draft = preprocess_image(drafted.image, cfg)
    via_full = preprocess_image(full.image, cfg)
    assert not np.array_equal(via_draft, via_full)
    (r,) = clf.classify_many([str(big_jpeg)])
    assert r.ok and (r.width, r.height) == (1500, 1100)
    assert np.array_equal(clf._prepare(0, str(big_jpeg)).tensor, via_draft)


# -- training decodes exactly as inference -----------------------------------------------------


def _manifest(tmp_path: Path, files: list[Path]) -> Path:
    from wildvision.data.manifest import ManifestRow, write_manifest

    rows = [ManifestRow(path=f.name, source="gen", label="cat", fine_label="domestic_cat",
                        group="benign", split="train") for f in files]
    path = tmp_path / "manifest.csv"
    write_manifest(path, rows)
    return path


def test_training_dataset_decodes_like_inference(clf: Classifier, big_jpeg: Path,
                                                 tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from wildvision.data.manifest import read_manifest
    from wildvision.data.torch_dataset import ManifestDataset

    cfg = clf.card.preprocess
    small = tmp_path / "small.jpg"
    small.write_bytes(encode(photo_like(300, 200, seed=5), "JPEG", quality=90))
    big = tmp_path / big_jpeg.name
    big.write_bytes(big_jpeg.read_bytes())
    manifest = read_manifest(_manifest(tmp_path, [big, small]))

    # evaluation path: identical tensors to inference
    ds = ManifestDataset(manifest, ["domestic_cat"], cfg, split="train")
    for i, f in enumerate([big, small]):
        assert np.array_equal(ds.load_array(i), clf._prepare(0, str(f)).tensor)

    # augmentation path: the transform sees the same draft-decoded image as inference
    seen: list[tuple[int, ...]] = []

    def spy(arr: np.ndarray) -> np.ndarray:
        seen.append(arr.shape)
        return np.asarray(Image.fromarray(arr).resize((cfg.input_size, cfg.input_size)))

    aug = ManifestDataset(manifest, ["domestic_cat"], cfg, split="train", transform=spy)
    aug.load_array(0)
    drafted = decode_image(big, draft_size=cfg.draft_size).image
    assert seen == [(drafted.size[1], drafted.size[0], 3)]
    assert drafted.size != (1500, 1100)


@pytest.mark.parametrize("crop_only", [False, True], ids=["whole-resize", "crop-region"])
def test_training_eval_arrays_match_inference(clf: Classifier, big_jpeg: Path,
                                              crop_only: bool) -> None:
    """Bit for bit, with either resize: what training evaluates on is what inference sees,
    through both inference paths (a new tensor, and written into a batch row)."""
    pytest.importorskip("torch")
    import dataclasses

    from wildvision.modelpack import ModelPackage
    from wildvision.preprocess import normalize
    from wildvision.train.data import load_eval_array

    cfg = dataclasses.replace(clf.card.preprocess, resize_crop_only=crop_only)
    pkg = ModelPackage(clf.package.path, clf.card.with_updates(preprocess=cfg))
    inference = Classifier(pkg, threads=1, open_set=False)
    arr = load_eval_array(big_jpeg, cfg)
    assert np.array_equal(normalize(arr, cfg), inference._prepare(0, str(big_jpeg)).tensor)
    row = np.full((3, cfg.input_size, cfg.input_size), np.nan, np.float32)
    assert inference._prepare(0, str(big_jpeg), row).tensor is row
    assert np.array_equal(normalize(arr, cfg), row)
