"""The run directory of ``wildvision train``: its options (what ``--resume`` checks), the
per-epoch metrics log, and the small helpers writing them (see :mod:`.engine` for the layout).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError

STATE_VERSION = 1


def _git_info() -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "-C", str(here), "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                timeout=10)
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")


def _truncate_log(path: Path, last_epoch: int) -> None:
    """Drop epoch lines after ``last_epoch`` (written by a run interrupted before its
    checkpoint)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("epoch") is None or int(rec["epoch"]) <= last_epoch:
            keep.append(line)
    path.write_text("".join(x + "\n" for x in keep), encoding="utf-8")


def _prepare_run_dir(out: Path, resume: bool, identity: dict[str, Any]) -> dict[str, Any] | None:
    """Create or check the run directory; returns the saved state when resuming."""
    state_path = out / "checkpoint" / "state.json"
    run_json = out / "run.json"
    if resume:
        if not run_json.is_file():
            raise ConfigError(f"--resume: {out} holds no run to resume (no run.json)")
        old = json.loads(run_json.read_text(encoding="utf-8"))
        diffs = [k for k in identity if old.get(k) != identity[k]]
        if diffs:
            raise ConfigError(
                f"--resume: {out} was started with different " + ", ".join(diffs)
                + "; resume with the same recipe, data and options, or use a new --out"
            )
        if state_path.is_file():
            state: dict[str, Any] = json.loads(state_path.read_text(encoding="utf-8"))
            return state
        return None
    if out.exists() and any(out.iterdir()):
        if run_json.exists() or (out / "package").exists():
            raise ConfigError(f"{out} already holds a training run; use --resume to continue "
                              "it, or another --out")
        raise ConfigError(f"{out} exists and is not empty; give a new or empty --out")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(run_json, identity)
    return None
