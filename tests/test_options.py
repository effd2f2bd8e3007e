"""The one options object of Classifier (wildvision.options.ClassifierOptions): its checks, its
round trips, the keyword API built on it, the command lines that fill it, and the one row
flattener (Prediction.to_row) behind CSV and Parquet."""

from __future__ import annotations

import argparse
import csv
import io
import json
import pickle
from pathlib import Path

import pytest

from wildvision import ClassifierOptions, classify_images
from wildvision.cli import CSV_FIELDS, build_parser, main
from wildvision.errors import ConfigError
from wildvision.modelpack import Thresholds
from wildvision.options import add_classifier_arguments
from wildvision.predict import ROW_FIELDS, Classifier, Failure, Prediction


def test_defaults_replace_and_checks() -> None:
    o = ClassifierOptions()
    assert (o.backend, o.precision, o.threads, o.batch_size, o.top_k, o.open_set) == (
        "onnx", "fp32", None, 32, 3, True)
    p = o.replace(threads=2, open_set=False)
    assert (p.threads, p.open_set, o.threads, o.open_set) == (2, False, None, True)
    assert o.replace() is o
    with pytest.raises(TypeError, match=r"unknown classifier option.*nope"):
        o.replace(nope=1)
    for bad in ({"threads": 0}, {"decode_workers": -1}, {"batch_size": 0}, {"top_k": 0},
                {"max_pixels": 0}, {"threads": 1.5}, {"top_k": True}, {"thresholds": 0.9}):
        with pytest.raises(ConfigError):
            ClassifierOptions(**bad)  # type: ignore[arg-type]


def test_thresholds_are_copied_and_normalised() -> None:
    given = {"ivory": {"flag": 0.9}, "pangolin_scales": Thresholds(0.8, 0.4), "live_primate": 0.7}
    o = ClassifierOptions(thresholds=given)
    given["ivory"]["flag"] = 0.1  # the caller's dict changing later does not reach the options
    assert o.thresholds == {"ivory": {"flag": 0.9},
                            "pangolin_scales": {"flag": 0.8, "review": 0.4},
                            "live_primate": 0.7}
    assert ClassifierOptions(thresholds={}).thresholds is None


def test_json_pickle_and_hash_round_trips() -> None:
    o = ClassifierOptions(threads=3, thresholds={"ivory": {"flag": 0.9, "review": 0.5}},
                          open_set=False, top_k=7)
    assert ClassifierOptions.from_dict(json.loads(json.dumps(o.to_dict()))) == o
    assert pickle.loads(pickle.dumps(o)) == o  # what Ray ships to its actors
    same = ClassifierOptions(top_k=7, open_set=False, threads=3,
                             thresholds={"ivory": {"review": 0.5, "flag": 0.9}})
    assert hash(same) == hash(o) and same == o
    assert hash(o.replace(top_k=6)) != hash(o)
    with pytest.raises(ConfigError, match="unknown classifier option"):
        ClassifierOptions.from_dict({"treads": 2})


def test_classifier_takes_options_or_keywords(tiny_model_dir: Path, photo_files: list[Path]
                                              ) -> None:
    src = [str(p) for p in photo_files[:6]]
    opts = ClassifierOptions(threads=1, top_k=5, thresholds={"ivory": 0.01})
    a = Classifier(tiny_model_dir, opts)
    b = Classifier(tiny_model_dir, threads=1, top_k=5, thresholds={"ivory": 0.01})
    assert a.options == b.options == opts
    ra, rb = a.classify_many(src), b.classify_many(src)
    assert [r.to_dict() for r in ra] == [r.to_dict() for r in rb]
    assert all(len(r.top_labels) == 5 for r in ra if isinstance(r, Prediction))
    assert a.thresholds["ivory"].flag == 0.01
    # keywords apply on top of an options object
    c = Classifier(tiny_model_dir, opts, top_k=2)
    assert c.options.top_k == 2 and c.options.threads == 1 and c.top_k == 2
    # the module API: options= and keywords give the same results
    via_opts = classify_images(src, tiny_model_dir, options=opts)
    assert [r.to_dict() for r in via_opts] == [r.to_dict() for r in ra]
    with pytest.raises(TypeError, match="unknown classifier option"):
        Classifier(tiny_model_dir, treads=2)


def _parse(argv: list[str], **kw: object) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_classifier_arguments(p, **kw)  # type: ignore[arg-type]
    return p.parse_args(argv)


def test_from_args_reads_the_shared_flags() -> None:
    args = _parse(["-b", "8", "-t", "2", "--decode-workers", "3", "--precision", "int8",
                   "--threshold", "ivory=0.9:0.5", "--top-k", "4", "--no-open-set"])
    o = ClassifierOptions.from_args(args)
    assert o == ClassifierOptions(batch_size=8, threads=2, decode_workers=3, precision="int8",
                                  thresholds={"ivory": {"flag": 0.9, "review": 0.5}}, top_k=4,
                                  open_set=False)
    assert ClassifierOptions.from_args(_parse([])) == ClassifierOptions()
    assert ClassifierOptions.from_args(_parse([], batch_size=16)).batch_size == 16
    skipped = _parse([], skip=("thresholds", "top_k"))
    assert not hasattr(skipped, "threshold") and not hasattr(skipped, "top_k")
    with pytest.raises(ConfigError, match="--decode-workers must be >= 1"):
        ClassifierOptions.from_args(_parse(["--decode-workers", "0"]))


def test_every_command_builds_the_same_options() -> None:
    """classify, serve and bench read their classifier flags into ClassifierOptions."""
    parser = build_parser()
    common = ["-t", "2", "--precision", "int8", "-b", "8"]
    c = parser.parse_args(["classify", "x.jpg", *common, "--no-open-set", "--top-k", "5"])
    assert ClassifierOptions.from_args(c) == ClassifierOptions(
        threads=2, precision="int8", batch_size=8, open_set=False, top_k=5)
    b = parser.parse_args(["bench", "--out", "r", *common, "--no-open-set"])
    assert ClassifierOptions.from_args(b) == ClassifierOptions(
        threads=2, precision="int8", batch_size=8, open_set=False)
    from wildvision.serve._cli import build_config

    s = parser.parse_args(["serve", *common, "--threshold", "ivory=0.9", "--no-open-set"])
    cfg = build_config(s)
    assert cfg.classifier_options() == ClassifierOptions(
        threads=2, precision="int8", batch_size=8, open_set=False,
        thresholds={"ivory": {"flag": 0.9}}, max_bytes=cfg.max_body_bytes)
    assert (cfg.threads, cfg.batch_size, cfg.open_set) == (2, 8, False)


def test_to_row_is_the_csv_row(tiny_model_dir: Path, photo_files: list[Path], tmp_path: Path
                               ) -> None:
    clf = Classifier(tiny_model_dir, threads=1)
    inputs = [str(photo_files[0]), str(tmp_path / "missing.jpg")]
    pred, fail = clf.classify_many(inputs)
    assert isinstance(pred, Prediction) and isinstance(fail, Failure)
    row = pred.to_row()
    d = pred.to_dict()
    assert list(row)[: len(ROW_FIELDS)] == list(ROW_FIELDS)
    assert [k for k in row if k.startswith("prob_")] == [f"prob_{g}" for g in clf.card.groups]
    assert row["top_label"] == d["top_labels"][0]["label"]
    assert json.loads(row["group_probabilities"]) == {
        g: v["probability"] for g, v in d["groups"].items()}
    assert row[f"prob_{d['top_group']}"] == d["groups"][d["top_group"]]["probability"]
    assert json.loads(row["top_labels"]) == d["top_labels"]
    assert row["error_type"] is None and row["ok"] is True
    frow = fail.to_row()
    assert list(frow) == list(ROW_FIELDS)
    assert (frow["ok"], frow["error_type"], frow["decision"]) == (False, fail.error_type, None)

    out = tmp_path / "out.csv"
    assert main(["classify", *inputs, "-m", str(tiny_model_dir), "-f", "csv", "-o",
                 str(out)]) == 1
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert set(CSV_FIELDS) <= set(ROW_FIELDS)
    assert rows[0]["flagged_groups"] == ";".join(pred.flagged_groups)
    for k in CSV_FIELDS:
        if k != "flagged_groups":
            want = "" if row[k] is None else str(row[k])
            assert rows[0][k] == want, k
            assert rows[1][k] == ("" if frow[k] is None else str(frow[k])), k
