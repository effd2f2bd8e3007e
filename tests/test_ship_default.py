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


def test_readme_demo_photos_are_reference_test_photos_and_classify(shared_data: Path) -> None:
    """The README's first command classifies photos the default model never trained on: the
    demo list is the regenerated one, every line is a test-split row of the reference manifest
    (whose splits keep near-duplicates together), and the command itself runs on them."""
    import csv
    import re
    import subprocess
    import sys

    ship = _load()
    manifest = REPO / "datasets" / "wildvision-ref" / "manifest.csv"
    demo = REPO / "examples" / "unseen-test-photos.txt"
    assert ship.demo(manifest, demo, check=True), (
        "examples/unseen-test-photos.txt is stale: python training/ship_default.py demo "
        "datasets/wildvision-ref/manifest.csv examples/unseen-test-photos.txt")
    with open(manifest, newline="", encoding="utf-8") as f:
        split = {ship.DEMO_PREFIX + r["path"]: r["split"] for r in csv.DictReader(f)}
    lines = demo.read_text(encoding="utf-8").split()
    assert len(lines) == len(set(lines)) >= 30
    assert {split.get(p) for p in lines} == {"test"}
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    first = re.findall(r"```bash\n(.*?)\n```", readme.split("## The two commands", 1)[1],
                       re.S)[0]
    command = first.split(" && ")[-1].split()
    assert command[:2] == ["wildvision", "classify"]
    assert "examples/unseen-test-photos.txt" in command
    assert shared_data.resolve() == (REPO / ship.DEMO_PREFIX).resolve()
    out = subprocess.run([sys.executable, "-m", "wildvision.cli", *command[1:]], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if "../shared/data/" in line]
    assert len(rows) == len(lines), out.stdout
    decisions = {line.split()[0] for line in rows}
    assert decisions <= {"flag", "review", "pass"}, out.stdout
    assert {"flag", "pass"} <= decisions, out.stdout
