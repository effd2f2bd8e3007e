"""The speed table in the README and docs/performance.md is the committed throughput run's
(``python benchmarks/throughput.py --render benchmarks/results/throughput-2.0.0.json``), so it
cannot drift from what the benchmark measured."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "throughput-2.0.0.json"


def _throughput() -> ModuleType:
    spec = importlib.util.spec_from_file_location("throughput", REPO / "benchmarks" /
                                                  "throughput.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("doc", ["README.md", "docs/performance.md"])
def test_speed_table_is_the_committed_run(doc: str) -> None:
    tp = _throughput()
    result = json.loads(RESULT.read_text(encoding="utf-8"))
    text = (REPO / doc).read_text(encoding="utf-8")
    assert text.count(tp.DOC_START) == 1 and text.count(tp.DOC_END) == 1, doc
    shown = tp.DOC_START + text.split(tp.DOC_START, 1)[1].split(tp.DOC_END, 1)[0] + tp.DOC_END
    assert shown == tp.render_markdown(result), (
        f"{doc}: the speed table differs from {RESULT.name}; paste the output of "
        f"python benchmarks/throughput.py --render {RESULT.relative_to(REPO)}")


def test_committed_run_is_of_the_shipped_model() -> None:
    from wildvision.modelpack import load_package

    result = json.loads(RESULT.read_text(encoding="utf-8"))
    card = load_package(REPO / "wildvision" / "models" / "wildvision-base").card
    assert (result["model"]["name"], result["model"]["version"]) == (card.name, card.version)
    engines = {row["engine"] for row in result["table"]}
    assert {"onnx_fp32", "onnx_int8", "openvino_fp32", "openvino_int8"} <= engines
    assert "naive" in result["images_per_s"]
