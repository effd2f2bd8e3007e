"""Fuzz ``load_image`` and ``classify_images`` with mutants of the committed seeds
(tests/fuzz/seeds/, written by make_seeds.py): no exception outside ``WildvisionError``, no
image over the pixel limit, no single decode over a CPU-time budget, and in a batch one
result per input, in order.

The default run is bounded (a few hundred examples, well under a minute); CI or a curious
developer runs longer with ``WILDVISION_FUZZ_EXAMPLES=20000 pytest tests/fuzz``. Hypothesis
keeps the failing examples it finds in ``.hypothesis/`` and replays them first.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wildvision.errors import WildvisionError
from wildvision.imaging import load_image
from wildvision.predict import Classifier, Failure, Prediction

SEEDS = sorted((Path(__file__).resolve().parent / "seeds").iterdir())
SEED_BYTES = [p.read_bytes() for p in SEEDS]
EXAMPLES = int(os.environ.get("WILDVISION_FUZZ_EXAMPLES", "300"))
MAX_PIXELS = 4_000_000  # small: a mutant claiming a large size is refused, not decoded
CPU_BUDGET_S = 5.0  # per image; the seeds decode in about a millisecond

_FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def mutants(draw: st.DrawFn) -> bytes:
    """A seed with some bytes overwritten, a run inserted or deleted, or its tail cut."""
    data = bytearray(draw(st.sampled_from(SEED_BYTES)))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "cut", "int"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[pos: pos + draw(st.integers(1, 64))]
        elif kind == "cut":
            del data[pos:]
        elif data:  # an "interesting" 16/32-bit value, where sizes and counts live
            value = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF,
                                          0xFFFFFFFF]))
            raw = value.to_bytes(4, draw(st.sampled_from(["big", "little"])))
            data[pos: pos + 4] = raw
    return bytes(data)


@_FUZZ
@given(mutants())
def test_load_image_raises_only_typed_errors_within_budget(data: bytes) -> None:
    t0 = time.process_time()
    try:
        img = load_image(data, max_pixels=MAX_PIXELS, draft_size=(64, 64))
    except WildvisionError:
        pass
    else:
        assert img.mode == "RGB"
        assert 0 < img.width * img.height <= MAX_PIXELS
    assert time.process_time() - t0 < CPU_BUDGET_S


@pytest.fixture(scope="module")
def classifier(tiny_model_dir: Path) -> Classifier:
    return Classifier(tiny_model_dir, max_pixels=MAX_PIXELS, decode_workers=2)


@settings(_FUZZ, max_examples=max(10, EXAMPLES // 10))
@given(st.lists(mutants(), min_size=1, max_size=6))
def test_classify_images_gives_one_typed_result_per_input(
        classifier: Classifier, batch: list[bytes]) -> None:
    results = classifier.classify_many(batch, batch_size=4)
    assert len(results) == len(batch)
    typed = {c.__name__ for c in _subclasses(WildvisionError)}
    for r in results:
        assert isinstance(r, (Prediction, Failure))
        if isinstance(r, Failure):
            assert r.error_type in typed, (r.error_type, r.message)


def _subclasses(cls: type) -> set[type]:
    out = {cls}
    for sub in cls.__subclasses__():
        out |= _subclasses(sub)
    return out
