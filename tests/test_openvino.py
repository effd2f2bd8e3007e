"""The OpenVINO runtime backend ([openvino] extra): its errors, and parity with ONNX Runtime on
the same files: fp32 logits within 1e-4 on real photos; bf16 and int8 with the same top label
on >= 99 % of reference test photos and group macro-F1 within 0.5 point (a subset here; the
full test split: benchmarks/engine_parity.py)."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import wildvision
from wildvision import cli
from wildvision.bench.metrics import confusion_matrix, macro_f1
from wildvision.errors import ConfigError, MissingExtraError, ModelIntegrityError
from wildvision.imaging import decode_image
from wildvision.modelpack import ModelPackage, load_package, sha256_file
from wildvision.predict import Classifier
from wildvision.preprocess import preprocess, preprocess_image
from wildvision.runtime import BACKENDS, PRECISIONS, create_backend

from conftest import REPO_ROOT, photo_like

ov_mod = pytest.importorskip("wildvision._openvino", reason="needs the [openvino] extra")

BASE = REPO_ROOT / "wildvision" / "models" / "wildvision-base"
MANIFEST = REPO_ROOT / "datasets" / "wildvision-ref" / "manifest.csv"


@pytest.fixture(scope="module")
def package(tiny_model_dir: Path) -> ModelPackage:
    return load_package(tiny_model_dir)


@pytest.fixture(scope="module")
def batch(package: ModelPackage) -> np.ndarray:
    sizes = [(80, 60), (60, 80), (64, 64), (300, 120), (33, 47), (500, 375)]
    imgs = [photo_like(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    return preprocess(imgs, package.card.preprocess)


def test_outputs_match_onnx_runtime_tiny(package: ModelPackage, batch: np.ndarray) -> None:
    ref = create_backend(package, "onnx", threads=1).run(batch)
    backend = create_backend(package, "openvino", threads=1)
    assert backend.name == "openvino"
    assert backend.output_names == ("logits", "embedding", "features")
    out = backend.run(batch)
    for k in ("logits", "embedding", "features"):
        assert out[k].shape == ref[k].shape and out[k].dtype == np.float32, k
        np.testing.assert_allclose(out[k], ref[k], atol=1e-4, err_msg=k)
    # dynamic batch axis: a row does not depend on its batch
    single = backend.run(batch[3:4])
    np.testing.assert_allclose(single["logits"][0], out["logits"][3], atol=1e-5)
    # float64 or non-contiguous input is accepted
    again = backend.run(np.asfortranarray(batch.astype(np.float64)))
    np.testing.assert_allclose(again["logits"], out["logits"], atol=1e-6)


def test_concurrent_runs_are_independent(package: ModelPackage, batch: np.ndarray) -> None:
    """The pipeline runs the backend from two threads at once: each run gets its own infer
    request, and its outputs are copies (not the request's buffers, reused by the next run)."""
    backend = create_backend(package, "openvino", threads=1, streams=2)
    alone = [backend.run(batch[i: i + 1])["logits"] for i in range(len(batch))]
    with ThreadPoolExecutor(2) as ex:
        together = list(ex.map(lambda i: backend.run(batch[i: i + 1])["logits"],
                               list(range(len(batch))) * 4))
    for i, got in enumerate(together):
        np.testing.assert_array_equal(got, alone[i % len(batch)])


def test_errors(package: ModelPackage, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="precision must be one of"):
        create_backend(package, "openvino", precision="fp16")
    with pytest.raises(ConfigError, match="threads"):
        create_backend(package, "openvino", threads=0)
    with pytest.raises(ConfigError, match="streams"):
        create_backend(package, "openvino", streams=0)
    # the tiny model ships no int8 file
    with pytest.raises(ModelIntegrityError, match=r"model\.int8\.onnx"):
        create_backend(package, "openvino", precision="int8")
    # no silent engine switch: bf16 and the compiled-model cache are openvino's
    with pytest.raises(ConfigError, match="bf16' runs on backend 'openvino' only"):
        create_backend(package, "onnx", precision="bf16")
    with pytest.raises(ConfigError, match="cache_dir is an openvino option"):
        create_backend(package, "onnx", cache_dir=tmp_path)
    # a CPU without bfloat16: a clear error, not fp32 in disguise
    monkeypatch.setattr(ov_mod, "bf16_supported", lambda device="CPU": False)
    with pytest.raises(ConfigError, match="bfloat16 instructions"):
        create_backend(package, "openvino", precision="bf16")
    # without the extra: which pip command
    monkeypatch.setitem(sys.modules, "wildvision._openvino", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'wildvision\[openvino\]'"):
        create_backend(package, "openvino")


def test_bf16_detection_matches_the_cpu() -> None:
    """OpenVINO's bf16 capability is what the CPU flags say (x86 Linux: avx512_bf16/amx)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        pytest.skip("no /proc/cpuinfo flags on this platform")
    if "avx512f" not in flags and "avx2" not in flags:
        pytest.skip("not an x86 CPU")
    has = "avx512_bf16" in flags or "amx_bf16" in flags
    assert ov_mod.bf16_supported() == has


def test_corrupt_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    pkg_dir = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, pkg_dir)
    (pkg_dir / "model.onnx").write_bytes(b"\x08\x07this is not a protobuf graph")
    card = json.loads((pkg_dir / "card.json").read_text())
    card["files"]["model.onnx"] = sha256_file(pkg_dir / "model.onnx")
    (pkg_dir / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelIntegrityError, match="OpenVINO cannot read"):
        create_backend(load_package(pkg_dir), "openvino")


def test_compiled_model_cache(package: ModelPackage, batch: np.ndarray, tmp_path: Path) -> None:
    cache = tmp_path / "ov-cache"
    first = create_backend(package, "openvino", threads=1, cache_dir=cache).run(batch)
    blobs = list(cache.iterdir())
    assert blobs, "OpenVINO wrote nothing to the cache folder"
    again = create_backend(package, "openvino", threads=1, cache_dir=cache).run(batch)
    assert sorted(cache.iterdir()) == sorted(blobs)  # the same entry, read back
    np.testing.assert_array_equal(again["logits"], first["logits"])


def test_classifier_and_cli(package: ModelPackage, photo_files: list[Path], tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    assert set(BACKENDS) == {"onnx", "openvino", "torch"}
    assert set(PRECISIONS) == {"fp32", "bf16", "int8"}
    parser = cli.build_parser()  # the CLI's literal choices are the runtime's
    for b in BACKENDS:
        assert parser.parse_args(["classify", "x.jpg", "--runtime", b]).backend == b
    for p in PRECISIONS:
        assert parser.parse_args(["classify", "x.jpg", "--precision", p]).precision == p
    files = [str(p) for p in photo_files[:12]] + [str(tmp_path / "missing.jpg")]
    ref = Classifier(package, threads=2).classify_many(files, batch_size=4)
    clf = Classifier(package, backend="openvino", threads=2)
    assert clf.backend.name == "openvino" and clf.backend.streams == clf._runs
    got = clf.classify_many(files, batch_size=4)
    assert [r.ok for r in got] == [r.ok for r in ref] and not got[-1].ok
    for a, b in zip(got, ref, strict=True):
        if isinstance(a, wildvision.Prediction) and isinstance(b, wildvision.Prediction):
            pa = np.array([g.probability for g in a.groups])
            pb = np.array([g.probability for g in b.groups])
            np.testing.assert_allclose(pa, pb, atol=1e-5)
            assert a.decision == b.decision
    out = tmp_path / "ov.jsonl"
    rc = cli.main(["classify", *files[:3], "--model", str(package.path), "--runtime",
                   "openvino", "--precision", "fp32", "--cache-dir", str(tmp_path / "c"),
                   "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["source"] for r in rows] == files[:3]
    assert any((tmp_path / "c").iterdir())
    # bf16 on the default runtime: a usage error naming the runtime, no silent switch
    rc = cli.main(["classify", files[0], "--model", str(package.path), "--precision", "bf16"])
    assert rc == 2 and "'openvino' only" in capsys.readouterr().err


# -- the shipped default model on real photos ---------------------------------------------------
def _test_split(shared_data: Path, n: int) -> list[dict[str, str]]:
    with open(MANIFEST, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test" and not r["error"]]
    return rows[:: max(1, len(rows) // n)][:n]  # every k-th: all groups and sources


@pytest.fixture(scope="module")
def base() -> ModelPackage:
    return load_package(BASE)


@pytest.fixture(scope="module")
def ref_photos(base: ModelPackage, shared_data: Path) -> tuple[np.ndarray, list[str]]:
    """A spread subset of the reference test split, preprocessed once for every engine."""
    cfg = base.card.preprocess
    rows = _test_split(shared_data, 160)
    x = np.stack([
        preprocess_image(decode_image(shared_data / r["path"], draft_size=cfg.draft_size).image,
                         cfg)
        for r in rows
    ])
    return x, [r["group"] for r in rows]


_OUTPUTS: dict[tuple[str, str], dict[str, np.ndarray]] = {}


def _run(base: ModelPackage, backend: str, precision: str, x: np.ndarray
         ) -> dict[str, np.ndarray]:
    """Logits and group probabilities of ``x`` (computed once per engine and precision)."""
    key = (backend, precision)
    if key not in _OUTPUTS:
        clf = Classifier(base, backend=backend, precision=precision, threads=2, open_set=False)
        outs = [clf.predict_arrays(x[i: i + 32]) for i in range(0, len(x), 32)]
        _OUTPUTS[key] = {k: np.concatenate([o[k] for o in outs])
                         for k in ("logits", "group_probabilities")}
    return _OUTPUTS[key]


def _group_macro_f1(base: ModelPackage, truth: list[str], gprob: np.ndarray) -> float:
    groups = list(base.card.groups)
    y = np.array([groups.index(g) for g in truth])
    cm = confusion_matrix(y, gprob.argmax(1), len(groups))
    return float(macro_f1(cm, sorted(set(y.tolist()))))


@pytest.mark.realdata
def test_default_model_fp32_logits_match_onnx_runtime(
        base: ModelPackage, ref_photos: tuple[np.ndarray, list[str]]) -> None:
    x = ref_photos[0]
    ref = _run(base, "onnx", "fp32", x)
    out = _run(base, "openvino", "fp32", x)
    diff = float(np.abs(out["logits"] - ref["logits"]).max())
    assert diff <= 1e-4, diff
    # the other outputs too, on a few photos
    ref_all = create_backend(base, "onnx", threads=2).run(x[:8])
    out_all = create_backend(base, "openvino", threads=2).run(x[:8])
    for k in ("embedding", "features"):
        assert out_all[k].shape == ref_all[k].shape, k
        np.testing.assert_allclose(out_all[k], ref_all[k], atol=1e-4, err_msg=k)


@pytest.mark.realdata
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_default_model_reduced_precision_parity(
        base: ModelPackage, ref_photos: tuple[np.ndarray, list[str]], precision: str) -> None:
    """The same file in both engines: bf16 against ONNX Runtime fp32 (``model.onnx``), int8
    against ONNX Runtime int8 (``model.int8.onnx``), on a 160-photo spread of the test split:
    the same top label on >= 98 % (3 photos) and group macro-F1 no more than 0.5 point lower.
    On so few photos one photo of a small group moves macro-F1 by over a point, so the check
    here is one-sided (no loss); the two-sided criteria of the whole split (>= 99 % same top
    label, macro-F1 within 0.5 point either way) are measured by benchmarks/engine_parity.py.
    Measured here: bf16 changed 2 top labels (one a near-tie, one an ivory carving vs
    ceramics photo it got right), +1.5 points of macro-F1."""
    if precision == "bf16" and not ov_mod.bf16_supported():
        pytest.skip("this CPU has no bfloat16 instructions (the error is tested above)")
    x, truth = ref_photos
    got = _run(base, "openvino", precision, x)
    ref = _run(base, "onnx", "fp32" if precision == "bf16" else "int8", x)
    if precision == "int8":
        # the int8 file computes its stem padding through Q/DQ arithmetic; folded, OpenVINO
        # pads as ONNX Runtime does (unfolded it would not: logits ~2 apart)
        assert float(np.abs(got["logits"] - ref["logits"]).max()) < 0.5
    agree = float(np.mean(got["logits"].argmax(1) == ref["logits"].argmax(1)))
    assert agree >= 0.98, agree
    f1 = _group_macro_f1(base, truth, got["group_probabilities"])
    ref_f1 = _group_macro_f1(base, truth, ref["group_probabilities"])
    assert f1 >= ref_f1 - 0.005, (f1, ref_f1)
