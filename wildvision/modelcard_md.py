"""Write a model package's ``card.json`` and render its human ``README.md`` from it (never
typed by hand)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from .modelpack import WEIGHT_SUFFIXES, ModelCard, sha256_file
from .taxonomy import GROUP_NAMES, builtin_label

__all__ = ["render_card", "render_summary", "write_card"]


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


def _ci(v: Any) -> tuple[str, str]:
    """``(value, "[lo, hi]")`` of a bench ``{"value", "ci95"}`` entry or a plain number."""
    if isinstance(v, Mapping) and "value" in v:
        ci = v.get("ci95")
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
            return _fmt(v["value"]), f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"
        return _fmt(v["value"]), ""
    return _fmt(v), ""


def _entry(m: Mapping[str, Any], key: str) -> Any:
    """``m[key]``, paired with its interval when ``m`` keeps that apart (``key_ci95``)."""
    v = m.get(key)
    ci = m.get(f"{key}_ci95")
    return {"value": v, "ci95": ci} if v is not None and ci is not None else v


def _ci_cell(v: Any, missing: str = "") -> str:
    """``"value [lo, hi]"`` in one table cell; ``missing`` when there is no value."""
    return " ".join(x for x in _ci(v) if x) if v is not None else missing


def _bench_md(block: Mapping[str, Any]) -> str:
    """One ``wildvision bench`` metrics block (schema v1) as readable tables."""
    data = block.get("data") or {}
    model = block.get("model") or {}
    prov = [f"- command: `{block.get('command', '')}`"]
    if data:
        what = (f"suite `{data['suite']}`" if data.get("suite")
                else f"split `{data.get('split')}`")
        prov.append(f"- data: `{data.get('manifest')}` ({what}; manifest sha256 "
                    f"`{data.get('manifest_sha256')}`): {data.get('evaluated')} of "
                    f"{data.get('images')} images evaluated, {data.get('failed')} failed")
    if model:
        prov.append(f"- model: {model.get('name')} {model.get('version')} (card sha256 "
                    f"`{model.get('card_sha256')}`)")
    prov.append(f"- commit: `{block.get('git_commit')}`, generated {block.get('generated')}")
    boot = block.get("bootstrap") or {}
    if boot:
        prov.append(f"- intervals: {boot.get('confidence')} {boot.get('method')}, "
                    f"{boot.get('resamples')} resamples, seed {boot.get('seed')}")
    out = ["\n".join(prov)]
    head = block.get("headline") or {}
    if head:
        out.append(_table([[k, *_ci(v)] for k, v in head.items()],
                          ["metric", "value", "95% interval"]))
    groups = block.get("groups") or {}
    if groups:
        rows = []
        for g, m in groups.items():
            if not isinstance(m, Mapping):
                continue
            rows.append([g, _fmt(m.get("support", "")), *(
                _ci_cell(m.get(k))
                for k in ("average_precision", "flag_precision", "flag_recall", "flag_f1")),
                _ci_cell(_entry(m, "argmax_f1")),
                _fmt(m.get("flag_threshold", "")),
                *(_fmt(m.get(f"recall_at_precision_{p}", "")) for p in ("0.90", "0.95", "0.99"))])
        out.append("Per group (flag = the card's flag threshold):\n\n" + _table(
            rows, ["group", "support", "average precision", "flag precision", "flag recall",
                   "flag F1", "argmax F1", "flag threshold", "recall @ P0.90",
                   "recall @ P0.95", "recall @ P0.99"]))
    binary = block.get("binary")
    if isinstance(binary, Mapping):
        rows = []
        for rule in ("at_threshold", "argmax"):
            m = binary.get(rule) or {}
            rows.append([rule, *(_ci_cell(m.get(k))
                                 for k in ("precision", "recall", "f1", "false_positive_rate",
                                           "balanced_accuracy"))])
        out.append(
            f"Binary: {', '.join(binary.get('positive_groups') or [])} "
            f"({binary.get('positives')} positives) against everything else "
            f"({binary.get('negatives')} negatives); average precision "
            f"{' '.join(_ci(binary.get('average_precision')))}:\n\n"
            + _table(rows, ["rule", "precision", "recall", "F1", "false-positive rate",
                            "balanced accuracy"]))
    unf = block.get("unfamiliar")
    if isinstance(unf, Mapping):
        out.append("Open-set gate: share of images below the familiarity threshold (their "
                   "flags became review): " + ", ".join(
                       f"{k} {_fmt(v)}" for k, v in unf.items() if v is not None))
    for key, title in (("false_flag_rate_by_benign_label", "False-flag rate by benign label"),
                       ("false_flag_rate_by_source", "False-flag rate by source (benign images)")):
        rates = block.get(key) or {}
        if rates:
            out.append(f"{title}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in rates.items()))
    return "\n\n".join(out)


def _train_md(block: Mapping[str, Any]) -> str:
    """A ``wildvision train`` evaluation block (validation/test logits of the run)."""
    prov = [f"- {k}: `{block[k]}`" for k in ("command", "data", "manifest_sha256", "commit",
                                             "split") if k in block]
    rows = [[k, _fmt(v)] for k, v in block.items()
            if k not in ("command", "data", "manifest_sha256", "commit", "split")
            and isinstance(v, (int, float, str))]
    out = ["\n".join(prov), _table(rows, ["metric", "value"])]
    groups = block.get("per_group") or {}
    if groups:
        cols = ["support", "precision", "recall", "f1", "flag_threshold", "review_precision",
                "review_recall", "review_threshold"]
        out.append("Per group (precision/recall/F1 of `flag`; review_* of `review` or "
                   "above):\n\n" + _table(
                       [[g, *(_fmt(m.get(c, "")) for c in cols)] for g, m in groups.items()],
                       ["group", *cols]))
    labels = block.get("per_label") or {}
    if labels:
        cols = ["support", "precision", "recall", "f1"]
        out.append("Per fine label (argmax):\n\n" + _table(
            [[lab, *(_fmt(m.get(c, "")) for c in cols)] for lab, m in labels.items()],
            ["label", *cols]))
    return "\n\n".join(x for x in out if x)


_COMPARE_HEADLINE = ("macro_f1_group", "macro_f1_fine", "flag_precision", "flag_recall",
                     "false_flag_rate", "flaggable_average_precision", "ece_top_label")
_COMPARE_GROUP = ("flag_precision", "flag_recall", "flag_f1", "argmax_f1",
                  "recall_at_precision_0.95")


def _comparison_md(metrics: Mapping[str, Any], reference: str, prefix: str | tuple[str, ...],
                   names: Mapping[str, str]) -> str:
    """The ``reference`` bench block beside every ``prefix*`` block (same data, same bench):
    one column per model, values with their 95% intervals."""
    keys = [k for k, b in metrics.items() if k.startswith(prefix) and isinstance(b, Mapping)
            and b.get("source") == "wildvision bench"]
    ref = metrics.get(reference)
    if not keys or not isinstance(ref, Mapping):
        return ""
    cols = [*keys, reference]
    blocks = [metrics[k] for k in cols]

    def cell(v: Any) -> str:
        return _ci_cell(v, missing="—")

    rows = [[m, *(cell((b.get("headline") or {}).get(m)) for b in blocks)]
            for m in _COMPARE_HEADLINE]
    groups = [g for g in (ref.get("groups") or {})]
    for g in groups:
        for m in _COMPARE_GROUP:
            rows.append([f"{g}: {m}", *(cell(_entry((b.get("groups") or {}).get(g) or {}, m))
                                        for b in blocks)])
    rows = [r for r in rows if any(c != "—" for c in r[1:])]
    legend = "\n".join(f"- `{k}`: {names.get(k, k)}" for k in cols)
    return legend + "\n\n" + _table(rows, ["metric", *(f"`{k}`" for k in cols)]) + (
        "\n\n— : the model has no label in that group (it can never flag it).")


def _metrics_md(metrics: Mapping[str, Any]) -> str:
    parts = []
    for key, block in metrics.items():
        if isinstance(block, Mapping) and block.get("source") == "wildvision bench":
            parts.append(f"### {key}\n\n" + _bench_md(block))
        elif isinstance(block, Mapping):
            parts.append(f"### {key}\n\n" + _train_md(block))
        else:
            parts.append(f"- {key}: {_fmt(block)}")
    return "\n\n".join(parts)


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * float(v):.1f}%"


def _policy_md(pol: Mapping[str, Any]) -> str:
    """The ``policy`` block: the budget, the thresholds it gave, the trade-off curve."""
    meas = pol.get("measured") or {}
    out = [f"Review budget {_pct(pol.get('review_budget'))} of benign photos; flag precision "
           f"{pol.get('flag_precision')}. Benign photos of the calibration set sent to review: "
           f"{_pct(pol.get('benign_review_share'))} (budget met: {pol.get('budget_met')})."]
    for note in pol.get("notes") or []:
        out.append(f"Note: {note}")
    src = pol.get("calibration_photos") or {}
    out.append("Calibration photos: " + ", ".join(
        f"{k}: {v}" for k, v in src.items() if k not in ("by_group",)))
    if meas:
        rows = [[name, str(v.get("benign", "")), _pct(v.get("benign_review_share")),
                 _pct(v.get("benign_flag_share")), _pct(v.get("flag_recall")),
                 _pct(v.get("seen_recall"))] for name, v in meas.items()]
        out.append(_table(rows, ["photos", "benign", "benign to review", "benign flagged",
                                 "flag recall", "flagged or reviewed"]))
    cross = pol.get("cross_source") or {}
    if cross:
        out.append("Thresholds derived without each held-out source, measured on it:")
        out.append(_table([[s, str(v.get("benign", "")), _pct(v.get("benign_review_share")),
                            _pct(v.get("benign_flag_share")), _pct(v.get("flag_recall"))]
                           for s, v in cross.items()],
                          ["held-out source", "benign", "to review", "flagged",
                           "flag recall"]))
    curve = pol.get("tradeoff_curve") or []
    if curve:
        sets = [k for k in curve[0] if isinstance(curve[0][k], Mapping) and k != "thresholds"]
        rows = []
        for r in curve:
            cells = [_pct(r.get("review_budget"))]
            for k in sets:
                v = r[k]
                cells.append(f"{_pct(v.get('benign_review_share'))} / "
                             f"{_pct(v.get('flag_recall'))} / {_pct(v.get('seen_recall'))}")
            rows.append(cells)
        out.append("Trade-off curve (thresholds derived for each budget; per photo set: "
                   "benign to review / flag recall / flagged or reviewed):")
        out.append(_table(rows, ["budget", *sets]))
    return "\n\n".join(out)


def render_card(card: ModelCard) -> str:
    """The Markdown model card of ``card``."""
    ex = dict(card.extra)
    lines = [f"# {card.name} {card.version}\n", card.description.strip() + "\n"]
    md = "".join(lines)
    md += _section("Intended use", str(ex.get("intended_use", "")))
    covered = [g for g in GROUP_NAMES if g in card.groups]
    rows = []
    for lab in card.labels:
        fl = builtin_label(lab)  # a label new to this card has no CITES entry here
        n = card.training.get("train_counts", {}).get(lab, "")
        cites = fl.cites_appendix if fl is not None else None
        rows.append([lab, card.label_groups[lab], cites or "", str(n)])
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
    pol = ex.get("policy")
    if isinstance(pol, Mapping):
        md += _section("Review-budget policy", _policy_md(pol))
    lineage = ex.get("lineage")
    if isinstance(lineage, list) and lineage:
        md += _section("Lineage", _table(
            [[str(i + 1), str(st.get("step", "")), f"{st.get('base', '')} "
              f"{st.get('base_version', '')}",
              ", ".join(f"{k}={v}" for k, v in st.items()
                        if k not in ("step", "base", "base_version", "base_files"))[:300]]
             for i, st in enumerate(lineage) if isinstance(st, Mapping)],
            ["#", "step", "from", "details"]))
    fam = ex.get("familiarity")
    if isinstance(fam, Mapping):
        md += _section(
            "Open-set gate (familiarity)",
            "A `flag` on a photo whose familiarity (cosine similarity of its embedding to the "
            "nearest training photo, `familiarity.npz`) is below its group's threshold becomes "
            "`review`; probabilities are unchanged. `Classifier(open_set=False)` switches "
            "it off; a group threshold of `-1` switches off that group's gate "
            "(docs/core.md).\n\n"
            + _table([[k, f"`{v}`" if isinstance(v, str) else _fmt(v)]
                      for k, v in fam.items()], ["field", "value"]))
    md += _section("Preprocessing", "```json\n" + json.dumps(card.preprocess.to_dict()) + "\n```")
    blocks = ex.get("metric_blocks")
    names: dict[str, str] = ({str(k): str(v) for k, v in blocks.items()}
                             if isinstance(blocks, Mapping) else {})
    md += _section("Model choice", str(ex.get("model_choice", "")))
    md += _section("Baselines on the same test split",
                   _comparison_md(card.metrics, "reference_test", ("baseline_", "previous_"),
                                  names))
    md += _section("Out of distribution", str(ex.get("out_of_distribution", "")) + "\n\n"
                   + _comparison_md(card.metrics, "reference_test", "loso_", names))
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


def write_card(package_dir: str | Path, card: ModelCard, *, rehash: bool = True) -> ModelCard:
    """Write ``card.json`` (and a rendered ``README.md``), hashing the weight files present.

    Returns the card as written (with ``files`` filled in when ``rehash``).
    """
    root = Path(package_dir)
    if rehash:
        files = {
            p.name: sha256_file(p)
            for p in sorted(root.iterdir())
            if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
        }
        card = replace(card, files=files)
    (root / "card.json").write_text(
        json.dumps(card.to_dict(), indent=2, sort_keys=False) + "\n", encoding="utf-8"
    )
    (root / "README.md").write_text(render_card(card), encoding="utf-8")
    return card


# Headline metrics a summary shows, in this order, when the block has them.
_SUMMARY_METRICS = ("macro_f1_group", "macro_f1_fine", "flag_precision", "flag_recall",
                    "false_flag_rate", "ece_top_label")


def _size(path: Path) -> str:
    try:
        n = path.stat().st_size
    except OSError:
        return "missing"
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def render_summary(card: ModelCard, path: str | Path | None = None) -> str:
    """A screenful about a model (what ``wildvision models show NAME`` prints): name, version,
    groups, thresholds, gate, files, the test headline; :func:`render_card` has everything.

    Args:
        card: the model card.
        path: the package folder, to show file sizes (optional).
    """
    ex = dict(card.extra)
    lines = [f"{card.name} {card.version}"]
    if card.description.strip():
        lines.append(card.description.strip())
    lines.append("")
    if card.arch:
        lines.append(f"architecture: {card.arch}, {card.preprocess.input_size} px input")
    per_group = {g: sum(1 for lab in card.labels if card.label_groups[lab] == g)
                 for g in card.groups}
    lines.append(f"labels: {len(card.labels)} ("
                 + ", ".join(f"{g} {n}" for g, n in per_group.items()) + ")")
    lines.append("thresholds: " + ("; ".join(
        f"{g} flag {t.flag:.3f} review {t.review:.3f}" for g, t in card.thresholds.items())
        or "defaults"))
    fam = ex.get("familiarity")
    if isinstance(fam, Mapping) and isinstance(fam.get("thresholds"), Mapping):
        lines.append("open-set gate: " + "; ".join(
            f"{g} {float(t):.3f}" for g, t in fam["thresholds"].items()))
    else:
        lines.append("open-set gate: none")
    root = Path(path) if path is not None else None
    lines.append("files: " + ", ".join(
        f"{n} ({_size(root / n)})" if root is not None else n for n in card.files))
    lines.append(f"licence of the weights: {card.license or 'not stated'}")
    test_key = next((k for k in ("reference_test", "test") if isinstance(
        card.metrics.get(k), Mapping) and isinstance(card.metrics[k].get("headline"), Mapping)),
        None)
    if test_key is not None:
        block = card.metrics[test_key]
        head = block["headline"]
        data = block.get("data") or {}
        lines += ["", f"{test_key} ({data.get('images', '?')} images, "
                  f"`{block.get('command', '')}`):"]
        lines += [f"  {k}: {_ci_cell(head[k])}" for k in _SUMMARY_METRICS if k in head]
    pol = ex.get("policy")
    if isinstance(pol, Mapping):
        lines.append(f"review-budget policy: {_pct(pol.get('review_budget'))} of benign photos "
                     f"to review, flag precision {pol.get('flag_precision')}")
    lineage = ex.get("lineage")
    if isinstance(lineage, list) and lineage:
        lines += ["", "Lineage:"]
        lines += [f"  {i + 1}. {st.get('step', '')} from {st.get('base', '')} "
                  f"{st.get('base_version', '')}" for i, st in enumerate(lineage)
                  if isinstance(st, Mapping)]
    others = [k for k in card.metrics if k != test_key]
    if others:
        lines += ["", f"other metric blocks: {', '.join(others)}"]
    return "\n".join(lines) + "\n"
