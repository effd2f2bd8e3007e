"""Ray Data batch scoring on a local Ray instance: every input exactly once, failures as rows."""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from wildvision import Classifier, Failure, Prediction
from wildvision.errors import ConfigError

from conftest import photo_like

TINY = Path(__file__).parent / "data" / "tiny-model"


# -- no Ray cluster needed ---------------------------------------------------------------------
def test_result_rows_flatten_predictions_and_failures() -> None:
    pytest.importorskip("pyarrow")
    from wildvision.scale import result_row, result_schema

    clf = Classifier(str(TINY))
    buf = io.BytesIO()
    Image.new("RGB", (50, 40), (10, 200, 30)).save(buf, "PNG")
    pred = clf.classify(buf.getvalue())
    groups = clf.card.groups
    schema = result_schema(groups)
    row = result_row(pred, groups)
    assert list(row) == schema.names
    d = pred.to_dict()
    assert row["ok"] is True and row["decision"] == d["decision"]
    assert row["top_label"] == d["top_labels"][0]["label"]
    assert json.loads(row["top_labels"]) == d["top_labels"]
    for g in groups:
        assert row[f"prob_{g}"] == d["groups"][g]["probability"]
    assert json.loads(row["group_probabilities"]) == {
        g: v["probability"] for g, v in d["groups"].items()}
    assert row["error_type"] is None and row["message"] is None
    fail = result_row(Failure("x.jpg", "InvalidImageError", "x.jpg: empty", "tiny-test", "0.0.1"),
                      groups)
    assert fail["ok"] is False and fail["error_type"] == "InvalidImageError"
    assert fail["decision"] is None and fail[f"prob_{groups[0]}"] is None
    assert fail["model_version"] == "0.0.1"
    import pyarrow as pa

    table = pa.Table.from_pylist([row, fail], schema=schema)  # one schema for both kinds
    assert table.num_rows == 2


def test_ray_engine_needs_a_parquet_output() -> None:
    from wildvision.cli import main

    assert main(["classify", "--engine", "ray", "x.jpg", "--output", "out.jsonl"]) == 2
    assert main(["classify", "--engine", "ray", "x.jpg"]) == 2


# -- on a local Ray instance -------------------------------------------------------------------
def _write_images(root: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        w, h = int(rng.integers(32, 96)), int(rng.integers(32, 96))
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        sub = root / ("a" if i % 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        fmt, ext = (("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"))[i % 3]
        p = sub / f"img{i:04d}.{ext}"
        Image.fromarray(arr).save(p, fmt)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def photo_tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("catalogue")
    good = _write_images(root, 300)
    bad = {
        root / "a" / "truncated.jpg": good[1].read_bytes()[:60],
        root / "a" / "empty.png": b"",
        root / "b" / "page.jpg": b"<!doctype html><html>404</html>",
    }
    for p, data in bad.items():
        p.write_bytes(data)
    (root / "a" / "notes.txt").write_text("not an image: skipped when expanding folders")
    return {"root": root, "good": good, "bad": list(bad)}


@pytest.fixture(scope="module")
def ray_session() -> Iterator[Any]:
    ray = pytest.importorskip("ray", reason="the [scale] extra is not installed")
    pytest.importorskip("ray.data")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024 * 1024)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_classify_dataset_every_input_exactly_once(ray_session: Any,
                                                   photo_tree: dict[str, Any]) -> None:
    from wildvision.scale import classify_dataset

    root = photo_tree["root"]
    extra = [str(root / "missing.jpg"), "http://example.com/photo.jpg"]
    ds = classify_dataset([str(root), *extra], model=str(TINY), recursive=True,
                          batch_size=32, concurrency=2)
    rows = ds.take_all()
    expected = [str(p) for p in photo_tree["good"] + photo_tree["bad"]] + extra
    counts = Counter(r["source"] for r in rows)
    assert len(rows) == len(expected) == 305
    assert set(counts) == set(expected)
    assert max(counts.values()) == 1
    by_source = {r["source"]: r for r in rows}
    failed = {s for s, r in by_source.items() if not r["ok"]}
    assert failed == {str(p) for p in photo_tree["bad"]} | set(extra)
    for s in failed:
        assert by_source[s]["error_type"] == "InvalidImageError"
        assert by_source[s]["message"]
        assert by_source[s]["decision"] is None
    assert "URLs are never fetched" in by_source[extra[1]]["message"]
    # same answers as the single-process core on the same inputs
    local = Classifier(str(TINY)).classify_many(expected, batch_size=32)
    for res in local:
        row = by_source[res.source]
        assert row["ok"] == res.ok
        if res.ok:
            d = res.to_dict()
            assert row["decision"] == d["decision"]
            assert row["top_group"] == d["top_group"]
            assert row["image_sha256"] == d["image_sha256"]
            assert (row["width"], row["height"]) == (d["width"], d["height"])
            for g, v in d["groups"].items():
                assert row[f"prob_{g}"] == pytest.approx(v["probability"], abs=1e-5)


@pytest.mark.slow
def test_classify_dataset_from_read_binary_files(ray_session: Any,
                                                 photo_tree: dict[str, Any]) -> None:
    from wildvision.scale import classify_dataset

    root = photo_tree["root"] / "a"
    files = sorted(p for p in root.iterdir() if p.suffix in (".jpg", ".png", ".webp"))
    ds = ray_session.data.read_binary_files(str(root), include_paths=True,
                                            file_extensions=["jpg", "png", "webp"])
    rows = classify_dataset(ds, model=str(TINY), batch_size=16, concurrency=1).take_all()
    names = Counter(Path(r["source"]).name for r in rows)
    assert names == Counter(p.name for p in files)
    by_name = {Path(r["source"]).name: r for r in rows}
    assert by_name["truncated.jpg"]["ok"] is False
    assert by_name["empty.png"]["error_type"] == "InvalidImageError"
    clf = Classifier(str(TINY))
    for p in files[:20]:
        res = clf.classify_many([p])[0]
        row = by_name[p.name]
        assert row["ok"] == res.ok
        if res.ok:
            assert row["image_sha256"] == res.image_sha256
            assert row["decision"] == res.decision


@pytest.mark.slow
def test_cli_engine_ray_writes_one_row_per_input(ray_session: Any, photo_tree: dict[str, Any],
                                                 tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from wildvision.cli import main

    root = photo_tree["root"]
    listed = [f"file://{photo_tree['good'][0]}", str(root / "nope" / "gone.jpg"), ""]
    list_file = tmp_path / "more.txt"
    list_file.write_text("\n".join(listed) + "\n")
    out = tmp_path / "scores.parquet"
    code = main(["classify", "--engine", "ray", str(root / "a"), "--files-from", str(list_file),
                 "--model", str(TINY), "--batch-size", "32", "--output", str(out),
                 "--threshold", "ivory=0:0", "--no-progress"])
    assert code == 1  # some inputs failed
    table = pq.read_table(out)
    rows = table.to_pylist()
    folder = sorted(str(p) for p in (root / "a").iterdir() if p.suffix != ".txt")
    expected = folder + listed[:2]
    assert Counter(r["source"] for r in rows) == Counter(expected)
    by_source = {r["source"]: r for r in rows}
    assert by_source[listed[0]]["ok"] is True  # a file:// URI, read through pyarrow.fs
    gone = by_source[listed[1]]
    assert gone["ok"] is False and gone["error_type"] == "InvalidImageError"
    assert "not found" in gone["message"]
    assert {"prob_ivory", "top_labels", "group_probabilities", "error_type"} <= set(
        table.column_names)
    ok_rows = [r for r in rows if r["ok"]]
    assert ok_rows and all(r["model"] == "tiny-test" for r in ok_rows)
    for r in ok_rows:  # the --threshold override (flag ivory at any probability) got through
        assert "ivory" in r["flagged_groups"] and r["decision"] == "flag"
    assert not list(tmp_path.glob("scores.parquet.part-*"))


@pytest.mark.slow
def test_classify_dataset_rejects_bad_options(ray_session: Any) -> None:
    from wildvision.scale import classify_dataset

    with pytest.raises(ConfigError):
        classify_dataset(["a.jpg"], model=str(TINY), batch_size=0)
    with pytest.raises(ConfigError):
        classify_dataset(["a.jpg"], model=str(TINY), thresholds={"nope": 0.5})
    with pytest.raises(ConfigError):
        classify_dataset([], model=str(TINY))


@pytest.mark.slow
@pytest.mark.realdata
def test_cli_engine_ray_with_the_default_package(ray_session: Any, shared_data: Path,
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped default package (with its open-set gate, familiarity.npz) on Ray: the same
    decisions, familiarity and unfamiliar flags as the local core, gate on and off. With ivory
    flagged at any probability, the generated photos (unlike every training photo) are the
    ones the gate sends to review."""
    import pyarrow.parquet as pq

    from wildvision.cli import main

    photos = [str(sorted((shared_data / d).iterdir())[5]) for d in
              ("met_ivory/ivory_artifact", "met_ivory/ceramics", "bigcats/live_tiger")]
    for seed in range(2):
        path = tmp_path / f"generated{seed}.png"
        photo_like(200, 150, seed=seed).save(path)
        photos.append(str(path))
    thresholds = {"ivory": {"flag": 0.0, "review": 0.0}}
    monkeypatch.setenv("WILDVISION_RAY_ACTORS", "1")  # one model load per run is enough here
    for open_set in (True, False):
        out = tmp_path / f"open-set-{open_set}.parquet"
        argv = ["classify", "--engine", "ray", *photos, "--output", str(out), "--threshold",
                "ivory=0:0", "--no-progress", "--batch-size", "2"]
        assert main([*argv, "--open-set" if open_set else "--no-open-set"]) == 0
        table = pq.read_table(out)
        assert {"familiarity", "unfamiliar"} <= set(table.column_names)
        rows = {r["source"]: r for r in table.to_pylist()}
        assert sorted(rows) == sorted(photos)
        local = Classifier(None, thresholds=thresholds, open_set=open_set).classify_many(photos)
        for res in local:
            assert isinstance(res, Prediction)
            row = rows[res.source]
            assert row["decision"] == res.decision and row["model"] == "wildvision-base"
            if open_set:
                assert res.familiarity is not None
                assert row["familiarity"] == pytest.approx(res.familiarity, abs=1e-5)
                assert row["unfamiliar"] is res.unfamiliar
            else:
                assert row["familiarity"] is None and row["unfamiliar"] is None
        decisions = [rows[p]["decision"] for p in photos]
        if open_set:
            assert decisions == ["flag"] * 3 + ["review"] * 2
            assert [rows[p]["unfamiliar"] for p in photos] == [False] * 3 + [True] * 2
        else:
            assert decisions == ["flag"] * 5


@pytest.fixture(scope="module")
def extended_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model given a bank and extended with two new labels (``wildvision extend``):
    base ONNX + ``head.npz``."""
    import csv
    import shutil

    from wildvision.cli import main
    from wildvision.extend import extend_model

    root = tmp_path_factory.mktemp("extended")
    base = root / "tiny"
    shutil.copytree(TINY, base)
    labels = Classifier(str(base)).card.labels
    with open(root / "bank.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "fine_label", "split"])
        for i in range(90):
            p = root / "bank" / f"{i}.png"
            p.parent.mkdir(exist_ok=True)
            photo_like(48, 40, seed=100 + i).save(p)
            w.writerow([p, labels[i % len(labels)], "val" if i % 5 == 0 else "train"])
    assert main(["export", "bank", str(base), "--data", str(root / "bank.csv")]) == 0
    for label, seed in (("sea_shell", 300), ("tiger_claw", 400)):
        for i in range(12):
            p = root / "new" / label / f"{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            photo_like(60, 44, seed=seed + i).save(p)
    out = root / "extended"
    extend_model(base, [root / "new"], out, groups={"sea_shell": "benign",
                                                      "tiger_claw": "tiger_parts"},
                 max_drop=100, command="test")
    return out


@pytest.mark.slow
def test_classify_dataset_with_an_extended_package(ray_session: Any, extended_tiny: Path,
                                                   photo_tree: dict[str, Any]) -> None:
    """An extended package (base ONNX + head.npz) loads in the Ray actors: the same labels,
    decisions and probabilities, new group included, as the local core."""
    from wildvision.scale import classify_dataset

    photos = [str(p) for p in photo_tree["good"][:24]]
    rows = classify_dataset(photos, model=str(extended_tiny), batch_size=8,
                            concurrency=1).take_all()
    by_source = {r["source"]: r for r in rows}
    assert sorted(by_source) == sorted(photos)
    clf = Classifier(str(extended_tiny))
    base = {r.source: r.to_dict() for r in Classifier(str(TINY)).classify_many(photos)}
    assert clf.card.labels[-2:] == ("sea_shell", "tiger_claw")
    differs = False
    for res in clf.classify_many(photos):
        assert isinstance(res, Prediction)
        row = by_source[res.source]
        d = res.to_dict()
        assert row["ok"] is True and row["model"] == clf.card.name
        assert row["decision"] == d["decision"]
        assert [t["label"] for t in json.loads(row["top_labels"])] == \
            [t["label"] for t in d["top_labels"]]
        for g, v in d["groups"].items():
            assert row[f"prob_{g}"] == pytest.approx(v["probability"], abs=1e-5)
            differs |= abs(v["probability"] - base[res.source]["groups"][g]["probability"]) > 1e-4
    assert differs  # the actors ran the package's head, not the base graph's logits
