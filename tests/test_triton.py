"""`wildvision export triton`: the generated model repository, parsed back and checked against
the ONNX graph; the documented client-side post-processing reproduces the Classifier."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnx", reason="the Triton export reads the graph with onnx ([train] extra)")
import onnxruntime as ort

from wildvision import Classifier
from wildvision.errors import ConfigError, ModelIntegrityError
from wildvision.export.triton import export_triton
from wildvision.imaging import decode_image
from wildvision.modelpack import load_package
from wildvision.preprocess import preprocess_image

TINY = Path(__file__).parent / "data" / "tiny-model"
_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([{}\[\]:,])|([^\s{}\[\]:,"#]+))')


def parse_pbtxt(text: str) -> dict[str, Any]:
    """A small, independent reader of protobuf text format: messages become dicts, repeated
    fields lists (every field is returned as a list of values)."""
    tokens = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip():
                raise ValueError(f"cannot tokenize at {text[pos:pos + 20]!r}")
            break
        pos = m.end()
        if m.group(1):
            continue
        tokens.append(m.group(2) or m.group(3) or m.group(4))

    def value(i: int) -> tuple[Any, int]:
        tok = tokens[i]
        if tok == "{":
            return message(i + 1, "}")
        if tok.startswith('"'):
            return json.loads(tok), i + 1
        if re.fullmatch(r"-?\d+", tok):
            return int(tok), i + 1
        if re.fullmatch(r"-?\d+\.\d*(e-?\d+)?", tok):
            return float(tok), i + 1
        return tok, i + 1  # an enum

    def message(i: int, end: str | None) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        while i < len(tokens) and tokens[i] != end:
            key = tokens[i]
            i += 1
            if tokens[i] == ":":
                i += 1
            if tokens[i] == "[":  # a list: [v, v, ...]
                i += 1
                while tokens[i] != "]":
                    v, i = value(i)
                    out.setdefault(key, []).append(v)
                    if tokens[i] == ",":
                        i += 1
                i += 1
            else:
                v, i = value(i)
                out.setdefault(key, []).append(v)
        return out, i + 1

    parsed, _ = message(0, None)
    return parsed


def _ort_shapes(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ins = {i.name: (i.type, i.shape) for i in sess.get_inputs()}
    outs = {o.name: (o.type, o.shape) for o in sess.get_outputs()}
    return ins, outs


_ORT_TO_TRITON = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16"}


def test_export_writes_a_repository_matching_the_onnx_graph(tmp_path: Path) -> None:
    model_dir = export_triton(str(TINY), tmp_path / "repo", max_batch_size=16, instance_count=2)
    assert model_dir == tmp_path / "repo" / "tiny-test"
    onnx_copy = model_dir / "1" / "model.onnx"
    card = load_package(TINY).card
    assert hashlib.sha256(onnx_copy.read_bytes()).hexdigest() == card.files["model.onnx"]
    assert (model_dir / "card.json").read_bytes() == (TINY / "card.json").read_bytes()
    assert (model_dir / "labels.txt").read_text().splitlines() == list(card.labels)

    cfg = parse_pbtxt((model_dir / "config.pbtxt").read_text())
    assert cfg["name"] == ["tiny-test"]
    assert cfg["platform"] == ["onnxruntime_onnx"]
    assert cfg["max_batch_size"] == [16]
    assert cfg["dynamic_batching"][0]["max_queue_delay_microseconds"][0] > 0
    assert cfg["instance_group"][0]["count"] == [2]

    ins, outs = _ort_shapes(onnx_copy)  # an independent reader of the same graph
    assert [t["name"][0] for t in cfg["input"]] == list(ins)
    assert [t["name"][0] for t in cfg["output"]] == list(outs)
    for section, graph in (("input", ins), ("output", outs)):
        for t in cfg[section]:
            otype, shape = graph[t["name"][0]]
            assert not isinstance(shape[0], int)  # dynamic batch axis, left to Triton
            expected = [d if isinstance(d, int) else -1 for d in shape[1:]]
            assert t["dims"] == expected
            assert t["data_type"] == [_ORT_TO_TRITON[otype]]
    size = card.preprocess.input_size
    assert cfg["input"][0]["dims"] == [3, size, size]
    logits = next(t for t in cfg["output"] if t["name"] == ["logits"])
    assert logits["dims"] == [len(card.labels)]
    assert logits["label_filename"] == ["labels.txt"]


def test_client_side_formula_reproduces_the_classifier(tmp_path: Path) -> None:
    """What docs/deployment.md tells a Triton client to do, done on the exported model."""
    model_dir = export_triton(str(TINY), tmp_path)
    card = json.loads((model_dir / "card.json").read_text())
    sess = ort.InferenceSession(str(model_dir / "1" / "model.onnx"),
                                providers=["CPUExecutionProvider"])
    clf = Classifier(str(TINY))
    rng = np.random.default_rng(3)
    images = []
    for i in range(4):
        buf = io.BytesIO()
        arr = rng.integers(0, 256, (50 + 10 * i, 70, 3), dtype=np.uint8)
        Image.fromarray(arr).save(buf, "PNG")
        images.append(buf.getvalue())
    batch = np.stack([preprocess_image(decode_image(b).image, clf.card.preprocess)
                      for b in images])
    logits = sess.run(["logits"], {sess.get_inputs()[0].name: batch})[0]
    # p = softmax(logits / T); P(group) = sum of p over the group's labels; thresholds
    z = logits.astype(np.float64) / card["temperature"]
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    for row, img in zip(p, images, strict=True):
        pred = clf.classify(img)
        for g in pred.groups:
            prob = sum(row[i] for i, lab in enumerate(card["labels"])
                       if card["label_groups"][lab] == g.group)
            assert prob == pytest.approx(g.probability, abs=1e-5)
            th = card["thresholds"].get(g.group)
            if th is None:
                assert g.decision == "pass"
            else:
                decision = ("flag" if prob >= th["flag"] else
                            "review" if prob >= th["review"] else "pass")
                assert decision == g.decision


def test_cli_export_triton_and_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                           ) -> None:
    from wildvision.cli import main

    assert main(["export", "triton", str(TINY), "--out", str(tmp_path), "--max-batch-size",
                 "8"]) == 0
    printed = capsys.readouterr().out.strip()
    assert Path(printed) == tmp_path / "tiny-test"
    cfg = parse_pbtxt((tmp_path / "tiny-test" / "config.pbtxt").read_text())
    assert cfg["max_batch_size"] == [8]
    # a second export replaces the first
    export_triton(str(TINY), tmp_path, max_batch_size=4)
    assert parse_pbtxt((tmp_path / "tiny-test" / "config.pbtxt").read_text())[
        "max_batch_size"] == [4]
    with pytest.raises(ConfigError):
        export_triton(str(TINY), tmp_path, max_batch_size=0)
    with pytest.raises(ConfigError):
        export_triton(str(TINY), tmp_path, instance_count=0)
    with pytest.raises(ModelIntegrityError, match="int8"):
        export_triton(str(TINY), tmp_path, precision="int8")  # the tiny package has none


def test_fixed_batch_axis_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "g",
                              [x], [y])
    path = tmp_path / "fixed.onnx"
    onnx.save(helper.make_model(graph), str(path))
    from wildvision.export.triton import onnx_io

    with pytest.raises(ModelIntegrityError, match="fixed batch"):
        onnx_io(path)
