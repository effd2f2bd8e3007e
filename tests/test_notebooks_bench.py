"""Execute notebooks/benchmark.ipynb (a bench of the tiny model on real photos) with nbclient."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is a dev dependency")
nbclient = pytest.importorskip("nbclient", reason="nbclient is a dev dependency")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "benchmark.ipynb"


@pytest.mark.realdata
def test_benchmark_notebook_runs(shared_data: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on any failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 3, "the three plots are displayed"
    assert "failed 1" in text and "missing/not-there.jpg" in text
    assert "metrics.json" in text and "predictions.jsonl" in text
    assert "manifest_sha256" in text
