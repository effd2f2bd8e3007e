"""The crafted hostile files of tests/make_crafted.py: each gives its documented result within
a generous time and memory budget.

Each file is decoded in a fresh interpreter, so that its peak resident memory (``VmHWM``) is
its own. CPU time (robust to a busy CI machine) and memory are printed (``pytest -rA``
shows them) and recorded as test properties. The budgets are several times what the files
cost now and below what they cost before their defects were fixed (a 40-megapixel 16-bit PNG
peaked at 1.0 GB, a TIFF of 100,000 pages took minutes), so a regression fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from make_crafted import CRAFTED, Crafted, write_all

from conftest import REPO_ROOT

TIME_BUDGET_S = 30.0
MEMORY_BUDGET_MB = 700.0

_WORKER = r"""
import json, resource, sys, time
from wildvision.errors import WildvisionError
from wildvision.imaging import decode_image
path, draft = sys.argv[1], sys.argv[2] == "draft"
t0, c0 = time.perf_counter(), time.process_time()
try:
    dec = decode_image(path, draft_size=(292, 292) if draft else None)
    out = {"error": None, "size": list(dec.original_size), "mode": dec.image.mode}
except WildvisionError as e:
    out = {"error": type(e).__name__, "message": str(e)}
out["seconds"] = time.perf_counter() - t0
out["cpu_seconds"] = time.process_time() - c0
try:  # this process's own peak: ru_maxrss keeps the parent's peak across fork + exec
    with open("/proc/self/status") as f:
        hwm = [line for line in f if line.startswith("VmHWM:")][0]
    out["peak_mb"] = int(hwm.split()[1]) / 1024
except (OSError, IndexError):
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def crafted_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crafted")
    paths = write_all(root)
    assert sorted(p.name for p in paths) == sorted(c.name for c in CRAFTED)
    return root


def _decode_in_subprocess(path: Path, draft: bool) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _WORKER, str(path), "draft" if draft else "full"],
            capture_output=True, text=True, timeout=10 * TIME_BUDGET_S, env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{path.name}: still decoding after {10 * TIME_BUDGET_S:g} s")
    assert proc.returncode == 0, f"{path.name}: worker failed\n{proc.stderr[-3000:]}"
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# Every file decoded at full size; the 40-megapixel ones also at a model's draft size.
_CASES = [(c, False) for c in CRAFTED] + [(c, True) for c in CRAFTED if c.size and
                                          c.size[0] * c.size[1] > 10_000_000]


@pytest.mark.parametrize(("item", "draft"), _CASES,
                         ids=[f"{c.name}-{'draft' if d else 'full'}" for c, d in _CASES])
def test_crafted_file_has_its_documented_result_within_budget(
        item: Crafted, draft: bool, crafted_dir: Path,
        record_property: Callable[[str, object], None]) -> None:
    path = crafted_dir / item.name
    result = _decode_in_subprocess(path, draft)
    line = (f"{item.name} ({'draft' if draft else 'full'}): {result['error'] or 'loaded'} in "
            f"{result['cpu_seconds']:.2f} s CPU ({result['seconds']:.2f} s wall), peak RSS "
            f"{result['peak_mb']:.0f} MB")
    print(line)
    record_property("crafted", line)
    assert result["error"] == item.error, f"{item.name}: {result}"
    if item.size is not None:
        assert tuple(result["size"]) == item.size  # type: ignore[arg-type]
        assert result["mode"] == "RGB"
    assert result["cpu_seconds"] < TIME_BUDGET_S, line  # type: ignore[operator]
    assert result["peak_mb"] < MEMORY_BUDGET_MB, line  # type: ignore[operator]
