"""Render a model package's human ``README.md`` from its ``card.json`` (never typed by hand)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .modelpack import ModelCard
from .taxonomy import GROUP_NAMES, fine_label

__all__ = ["render_card"]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, float) for x in v):
        return f"[{v[0]:.4f}, {v[1]:.4f}]"
    return str(v)


def _section(title: str, body: str) -> str:
    return f"## {title}\n\n{body.strip()}\n\n" if body.strip() else ""


def _table(rows: list[list[str]], header: list[str]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _metrics_md(metrics: Mapping[str, Any]) -> str:
    parts = []
    for key, block in metrics.items():
        if isinstance(block, Mapping):
            rows = []
            provenance = []
            for k, v in block.items():
                if k in ("command", "data", "manifest_sha256", "commit", "split"):
                    provenance.append(f"- {k}: `{v}`")
                elif isinstance(v, (int, float, str)) or (
                    isinstance(v, (list, tuple)) and len(v) <= 3
                ):
                    rows.append([k, _fmt(v)])
                else:
                    rows.append([k, "`" + json.dumps(v)[:200] + "`"])
            parts.append(f"### {key}\n\n" + "\n".join(provenance) + "\n\n"
                         + (_table(rows, ["metric", "value"]) if rows else ""))
        else:
            parts.append(f"- {key}: {_fmt(block)}")
    return "\n\n".join(parts)


def render_card(card: ModelCard) -> str:
    """The Markdown model card of ``card``."""
    ex = dict(card.extra)
    lines = [f"# {card.name} {card.version}\n", card.description.strip() + "\n"]
    md = "".join(lines)
    md += _section("Intended use", str(ex.get("intended_use", "")))
    covered = [g for g in GROUP_NAMES if g in card.groups]
    rows = []
    for lab in card.labels:
        fl = fine_label(lab)
        n = card.training.get("train_counts", {}).get(lab, "")
        rows.append([lab, card.label_groups[lab], fl.cites_appendix or "", str(n)])
    md += _section(
        "Labels",
        f"Groups covered: {', '.join(covered)}.\n\n"
        + _table(rows, ["fine label", "group", "CITES", "training images"]),
    )
    not_covered = ex.get("not_covered")
    if not_covered:
        md += _section("Not covered", str(not_covered))
    md += _section("Known limits", str(ex.get("limitations", "")))
    th_rows = [[g, _fmt(t.flag), _fmt(t.review)] for g, t in card.thresholds.items()]
    md += _section(
        "Thresholds",
        (str(ex.get("thresholds_note", "")) + "\n\n" if ex.get("thresholds_note") else "")
        + _table(th_rows, ["group", "flag", "review"])
        + f"\n\nTemperature (calibration): {card.temperature:.4f}",
    )
    md += _section("Preprocessing", "```json\n" + json.dumps(card.preprocess.to_dict()) + "\n```")
    md += _section("Metrics", _metrics_md(card.metrics))
    if card.training:
        tr = {k: v for k, v in card.training.items() if k != "train_counts"}
        md += _section("Training", "```json\n" + json.dumps(tr, indent=2)[:6000] + "\n```")
    md += _section("Data sources and licences", str(ex.get("data_sources", "")))
    md += _section(
        "Files",
        _table([[n, f"`{h}`"] for n, h in card.files.items()], ["file", "sha256"])
        + f"\n\nLicence of the weights: {card.license}",
    )
    return md
