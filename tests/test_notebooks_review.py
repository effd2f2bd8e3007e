"""Execute notebooks/review_loop.ipynb (classify with heatmaps -> review page -> decisions ->
manifest) on real photos with nbclient."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is a dev dependency")
nbclient = pytest.importorskip("nbclient", reason="nbclient is a dev dependency")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "review_loop.ipynb"


@pytest.mark.realdata
def test_review_notebook_runs(shared_data: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=180, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on any failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 1, "the heatmap overlay is displayed"
    assert "7 photos" in text and "review.html" in text
    assert text.count("heatmap (") == 7
    # The manifest rows: the confirmed ivory, the rejected ceramic, the relabelled tiger.
    assert "ivory_carving ivory" in text and "ceramics benign" in text
    assert "live_tiger live_protected_animal" in text
    labels = next(line for line in text.splitlines() if line.startswith("labels: "))
    learned = ast.literal_eval(labels[len("labels: "):])
    assert sorted(learned) == ["ceramics", "ivory_carving", "live_tiger"]
    # 4. extend: the reviewed photos go into a new package that names its base
    assert "extend from wildvision-base" in text
    assert text.count("(wildvision-base-reviewed 2.0.0-reviews.1)") == 7
    # ... and never loosens the base model's thresholds
    shown = [line.split() for line in text.splitlines() if line.startswith("threshold ")]
    assert len(shown) == 2, text  # ivory and live_protected_animal
    for _, _, _, before, _, after, _, r_before, _, r_after in shown:
        assert float(after.rstrip(",")) >= float(before) - 1e-3
        assert float(r_after) >= float(r_before) - 1e-3
