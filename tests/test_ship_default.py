"""training/ship_default.py: the record of how the default package's card is assembled."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

from wildvision.modelcard_md import write_card
from wildvision.modelpack import load_package

REPO = Path(__file__).resolve().parent.parent
TINY = Path(__file__).parent / "data" / "tiny-model"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "ship_default", REPO / "training" / "ship_default.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_carry_copies_blocks_with_provenance_under_new_keys(tmp_path: Path) -> None:
    ship = _load()
    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(TINY, old)
    shutil.copytree(TINY, new)
    block = {"source": "wildvision bench", "command": "wildvision bench -m X --split test",
             "model": {"name": "probe", "version": "1.0.0"}, "git_commit": "ab" * 20,
             "headline": {"macro_f1_group": {"value": 0.95, "ci95": [0.94, 0.96]}}}
    card = load_package(old).card
    write_card(old, card.with_updates(metrics={**card.metrics, "baseline_probe": block}),
               rehash=False)
    ship.carry(new, old, ["baseline_probe_lite1=baseline_probe"])
    got = load_package(new).card.metrics  # the files still verify
    assert got["baseline_probe_lite1"] == block
    assert "baseline_probe" not in got
    # a missing block and an existing key are errors, and nothing is written
    before = (new / "card.json").read_bytes()
    with pytest.raises(SystemExit, match="no metric block 'nope'"):
        ship.carry(new, old, ["nope"])
    with pytest.raises(SystemExit, match="already has"):
        ship.carry(new, old, ["baseline_probe_lite1=baseline_probe"])
    assert (new / "card.json").read_bytes() == before
