"""From ``predictions.jsonl`` to ``metrics.json``, ``report.md`` and the plots."""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..modelpack import sha256_file
from . import metrics as M
from .evaluate import (
    HEADLINE_KEYS,
    PRECISION_TARGETS,
    EvalData,
    _stat_fn,
    build_eval_data,
    evaluate_model,
    jsonable,
    true_group,
)
from .predictions import ModelRun, PredictionSet, read_predictions

__all__ = ["SCHEMA_VERSION", "build_metrics", "card_metrics", "render_report"]

SCHEMA_VERSION = 1
HEADLINE_TITLES = {
    "accuracy_group": "group accuracy (top-1)",
    "macro_f1_group": "macro-F1 over groups",
    "balanced_accuracy_group": "balanced accuracy over groups",
    "accuracy_fine": "fine-label accuracy (top-1)",
    "macro_f1_fine": "macro-F1 over fine labels",
    "flag_precision": "flag precision (any flaggable group)",
    "flag_recall": "flag recall (any flaggable group)",
    "flag_f1": "flag F1",
    "false_flag_rate": "false-flag rate on benign images",
    "flag_balanced_accuracy": "flag balanced accuracy (flaggable vs benign)",
    "flaggable_average_precision": "average precision, P(flaggable)",
    "flaggable_roc_auc": "ROC-AUC, P(flaggable)",
    "ece_top_label": "expected calibration error, top label (15 bins)",
}


def slug(key: str) -> str:
    """A file-name-safe form of a model key."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_") or "model"


def _ok_labelled(run: ModelRun) -> list[dict[str, Any]]:
    return [r for r in run.records if r.get("ok") and true_group(r)]


def _eval_data(run: ModelRun) -> EvalData | None:
    recs = _ok_labelled(run)
    return build_eval_data(run, recs) if recs else None


def _paired(runs: Sequence[ModelRun], n_resamples: int, seed: int) -> list[dict[str, Any]]:
    """Headline differences (model j minus the first model) on the images both evaluated,
    with a paired bootstrap (the same resamples for both models)."""
    out: list[dict[str, Any]] = []
    base = runs[0]

    def keyed(run: ModelRun) -> dict[tuple[str, int], dict[str, Any]]:
        seen: dict[str, int] = {}
        res = {}
        for r in _ok_labelled(run):
            p = str(r.get("path"))
            seen[p] = seen.get(p, 0) + 1
            res[(p, seen[p])] = r
        return res

    kb = keyed(base)
    for other in runs[1:]:
        ko = keyed(other)
        common = [k for k in kb if k in ko]
        entry: dict[str, Any] = {"model": other.key, "baseline": base.key, "images": len(common)}
        if not common:
            entry["delta"] = {k: {"value": None, "ci95": [None, None]} for k in HEADLINE_KEYS}
            out.append(entry)
            continue
        sa = _stat_fn(build_eval_data(base, [kb[k] for k in common]))
        sb = _stat_fn(build_eval_data(other, [ko[k] for k in common]))

        def stat(W: np.ndarray, sa: Any = sa, sb: Any = sb) -> dict[str, np.ndarray]:
            a, b = sa(W), sb(W)
            return {k: b[k] - a[k] for k in HEADLINE_KEYS}

        est = M.bootstrap(stat, len(common), n_resamples=n_resamples, seed=seed)
        entry["delta"] = {k: est[k].to_dict() for k in HEADLINE_KEYS}
        out.append(entry)
    return out


def build_metrics(pset: PredictionSet, *, n_resamples: int = 1000, seed: int = 0,
                  render_command: str | None = None) -> dict[str, Any]:
    """The ``metrics.json`` object of a predictions file (see ``docs/bench.md``)."""
    run = pset.run
    pg = run.get("positive_groups") or None
    models = [evaluate_model(m, n_resamples=n_resamples, seed=seed, positive_groups=pg)
              for m in pset.models]
    comparison = None
    if len(pset.models) > 1:
        comparison = {
            "models": [m.key for m in pset.models],
            "headline": {k: {b["key"]: b["headline"][k] for b in models} for k in HEADLINE_KEYS},
            "paired": _paired(pset.models, n_resamples, seed),
        }
    pred_file = None
    if pset.path is not None:
        pred_file = {"file": pset.path.name, "sha256": sha256_file(pset.path),
                     "skipped_lines": pset.skipped_lines}
    return jsonable({  # type: ignore[no-any-return]
        "schema_version": SCHEMA_VERSION,
        "kind": "wildvision.bench",
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "wildvision_version": __version__,
        "provenance": {
            "command": run.get("command"),
            "render_command": render_command,
            "created": run.get("created"),
            "wildvision_version": run.get("wildvision_version"),
            "git": run.get("git"),
            "manifest": run.get("manifest"),
            "data_root": run.get("data_root"),
            "split": run.get("split"),
            "suite": run.get("suite"),
            "positive_groups": run.get("positive_groups"),
            "images": run.get("images"),
            "predictions": pred_file,
            "machine": run.get("machine"),
        },
        "bootstrap": {
            "resamples": n_resamples,
            "seed": seed,
            "confidence": 0.95,
            "method": "percentile bootstrap over images (resampled with replacement); "
                      "a resample where a metric is undefined is left out of its interval",
        },
        "models": models,
        "comparison": comparison,
    })


# -- report.md --------------------------------------------------------------------------------
def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, Mapping):
        return _fmt(x.get("value"), digits)
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _ci(x: Any, digits: int = 3) -> str:
    if not isinstance(x, Mapping):
        return _fmt(x, digits)
    lo, hi = x.get("ci95") or (None, None)
    v = _fmt(x.get("value"), digits)
    if lo is None or hi is None:
        return v
    return f"{v} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _pct(x: Any) -> str:
    if isinstance(x, Mapping):
        x = x.get("value")
    return "–" if x is None else f"{100 * float(x):.1f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
    return out


def _model_section(b: Mapping[str, Any], plots: Mapping[str, str], n_resamples: int
                   ) -> list[str]:
    m = b["model"]
    c = b["counts"]
    L: list[str] = [f"## {b['key']}", ""]
    L.append(f"Model `{m.get('name')}` version `{m.get('version')}` from `{m.get('path')}` "
             f"(card.json sha256 `{m.get('card_sha256')}`; backend {m.get('backend')}, "
             f"{m.get('precision')}).")
    files = m.get("files") or {}
    if files:
        L.append("Weights: " + ", ".join(f"`{k}` sha256 `{v}`" for k, v in files.items()) + ".")
    L.append("")
    L.append(f"Images: {c['images']}; evaluated {c['evaluated']}; **failed {c['failed']}**; "
             f"unlabelled {c['unlabelled']}"
             + (f"; sha256 different from the manifest: {c['sha256_mismatch']}"
                if c.get("sha256_mismatch") else "") + ".")
    cov = b.get("coverage") or {}
    if cov.get("groups_not_covered"):
        L.append("Groups in the data that the model does not cover (left out of macro "
                 "averages, their images count against the predicted group): "
                 + ", ".join(f"{g} ({n})" for g, n in cov["groups_not_covered"].items()) + ".")
    if cov.get("labels_not_in_model"):
        L.append("Fine labels the model lacks (evaluated at group level): "
                 + ", ".join(f"{g} ({n})" for g, n in cov["labels_not_in_model"].items()) + ".")
    L.append("")
    if not c["evaluated"]:
        L += ["No image could be evaluated.", ""]
    else:
        L += [f"### Headline metrics (95% bootstrap CI, {n_resamples} resamples)", ""]
        L += _table(["metric", "key", "value [95% CI]"],
                    [[HEADLINE_TITLES[k], f"`{k}`", _ci(b["headline"][k])]
                     for k in HEADLINE_KEYS])
        bn = b.get("binary")
        if bn:
            L += ["", f"### Binary task: {', '.join(bn['positive_groups'])} vs the rest", "",
                  f"{bn['positives']} positive and {bn['negatives']} negative images. *At "
                  "threshold*: any positive group flagged by the model's own thresholds; "
                  "*argmax*: the most probable group is a positive group. Score for AP and "
                  "ROC-AUC: the summed probability of the positive groups.", ""]
            if bn.get("not_covered"):
                L += [f"Not covered by the model: {', '.join(bn['not_covered'])}.", ""]
            L += _table(["metric", "at threshold", "argmax"],
                        [[k, _ci(bn["at_threshold"][k]), _ci(bn["argmax"][k])]
                         for k in ("precision", "recall", "f1", "false_positive_rate",
                                   "balanced_accuracy")])
            L += ["", f"Average precision {_ci(bn['average_precision'])}; ROC-AUC "
                  f"{_ci(bn['roc_auc'])}."]
        L += ["", "### Groups", "",
              "One-vs-rest on the group probability; *flag* columns use the model's own flag "
              "threshold; *argmax* columns the most probable group. R@P = highest recall "
              "with precision at least P.", ""]
        rows = []
        for g, gb in b["groups"].items():
            if not gb["covered"]:
                rows.append([g, gb["support"], "not covered"] + ["–"] * 10)
                continue
            at = gb.get("at_threshold") or {}
            rap = gb.get("recall_at_precision") or {}
            th = gb.get("thresholds") or {}
            rows.append([
                g, gb["support"], _ci(gb["average_precision"]), _ci(gb["roc_auc"]),
                _fmt(th.get("flag")) if th else "–",
                _ci(at.get("precision")), _ci(at.get("recall")), _fmt(at.get("f1")),
                *[_fmt((rap.get(f"{t:.2f}") or {}).get("recall")) for t in PRECISION_TARGETS],
                _ci({"value": gb["argmax"]["f1"],
                     "ci95": (gb.get("argmax_ci95") or {}).get("f1")}),
                _fmt(gb.get("ece")),
            ])
        L += _table(["group", "n", "AP", "ROC-AUC", "flag thr", "flag P", "flag R", "flag F1",
                     "R@P.90", "R@P.95", "R@P.99", "argmax F1", "ECE"], rows)
        shares = []
        for g, gb in b["groups"].items():
            at = gb.get("at_threshold")
            if not at:
                continue
            ds = at["decision_shares"]
            shares.append([g, *(_pct(ds["positives"][k]) for k in ("flag", "review", "pass")),
                           *(_pct(ds["negatives"][k]) for k in ("flag", "review", "pass"))])
        if shares:
            L += ["", "Decision shares of each group's own decision, on its images (positives) "
                  "and on all other images (negatives):", ""]
            L += _table(["group", "pos flag", "pos review", "pos pass", "neg flag",
                         "neg review", "neg pass"], shares)
        L += ["", "### Fine labels", "",
              "Argmax fine label; labels the model lacks are evaluated at group level only.", ""]
        rows = []
        for lab, fb in b["fine_labels"].items():
            ds = fb["decision_shares"]
            rows.append([lab, fb["group"], _fmt(fb["in_model"]), fb["support"], fb["predicted"],
                         _fmt(fb["precision"]), _fmt(fb["recall"]), _fmt(fb["f1"]),
                         _fmt(fb["average_precision"]), _pct(ds["flag"]),
                         _pct(fb.get("own_group_flag_rate"))])
        L += _table(["label", "group", "in model", "n", "predicted", "P", "R", "F1", "AP",
                     "flagged", "own group flagged"], rows)
        ben = b.get("benign") or {}
        if ben.get("n"):
            L += ["", "### False flags on benign images", "",
                  f"{ben['n']} benign images; false-flag rate "
                  f"{_ci(ben['false_flag_rate'])}; flagged or sent to review "
                  f"{_pct(ben['flag_or_review_rate'])}.", ""]
            groups = list((ben.get("flagged_as") or {}).keys())
            rows = [[lab, v["n"], _pct(v["false_flag_rate"]), _pct(v.get("review_rate")),
                     *(_pct(v["flagged_as"].get(g)) for g in groups)]
                    for lab, v in ben["by_fine_label"].items()]
            L += _table(["benign fine label", "n", "flagged", "review",
                         *(f"as {g}" for g in groups)], rows)
            L.append("")
            rows = [[src, v["n"], _pct(v["false_flag_rate"]), _pct(v.get("review_rate")),
                     *(_pct(v["flagged_as"].get(g)) for g in groups)]
                    for src, v in ben["by_source"].items()]
            L += _table(["source (benign images)", "n", "flagged", "review",
                         *(f"as {g}" for g in groups)], rows)
        curve = b.get("review_budget_curve")
        if curve:
            L += ["", "### Review budget", "",
                  "Thresholds derived on these images for each review budget (share of benign "
                  "images that may go to review; flag thresholds at 95% precision; "
                  "`wildvision calibrate` does this on your own labelled photos), and what "
                  "they give here.", ""]
            rows = [[_pct(r["review_budget"]), _pct(r.get("benign_review_share")),
                     _pct(r.get("benign_flag_share")), _pct(r.get("flag_recall")),
                     _pct(r.get("seen_recall")),
                     "; ".join(f"{g} {t['flag']:.3f}/{t['review']:.3f}"
                               for g, t in r["thresholds"].items())]
                    for r in curve]
            L += _table(["budget", "benign to review", "benign flagged", "flag recall",
                         "flagged or reviewed", "thresholds (flag/review)"], rows)
        L += ["", "### Per source", "",
              "A drop on one source shows a distribution shift.", ""]
        rows = [[src, v["n"], v["failed"], _fmt(v["accuracy_group"]), _fmt(v["accuracy_fine"]),
                 _pct(v["flag_rate"]), _pct(v["flag_recall"]), _pct(v["false_flag_rate"]),
                 ", ".join(f"{g} {n}" for g, n in v["groups"].items())]
                for src, v in b["by_source"].items()]
        L += _table(["source", "n", "failed", "group acc", "fine acc", "flagged",
                     "flag recall", "false flags", "true groups"], rows)
        cal = b.get("calibration") or {}
        tl, tg = cal.get("top_label"), cal.get("top_group")
        L += ["", "### Calibration", "",
              f"Expected calibration error ({cal.get('n_bins')} equal-width bins): top label "
              f"{_ci(tl['ece']) if tl else '–'} (images of labels the model knows), top group "
              f"{_fmt(tg['ece']) if tg else '–'}.", ""]
    for name, title in (("pr", "Precision-recall curves per group"),
                        ("confusion_groups", "Confusion matrix (groups)"),
                        ("confusion_fine", "Confusion matrix (fine labels)"),
                        ("reliability", "Reliability diagram")):
        if name in plots:
            L += [f"![{title}]({plots[name]})", ""]
    sp = b.get("speed")
    L += ["### Speed (machine-dependent)", ""]
    if sp:
        mach = sp.get("machine") or {}
        L.append(f"{_fmt(sp.get('images_per_s'), 1)} images/s over {sp.get('images')} images "
                 f"(batch size {sp.get('batch_size')}, {sp.get('batches')} batches, "
                 f"{_fmt(sp.get('wall_s'), 2)} s). Batch time p50 "
                 f"{_fmt((sp.get('batch_s') or {}).get('p50'), 4)} s, p95 "
                 f"{_fmt((sp.get('batch_s') or {}).get('p95'), 4)} s; per image p50 "
                 f"{_fmt((sp.get('per_image_s') or {}).get('p50'), 4)} s, p95 "
                 f"{_fmt((sp.get('per_image_s') or {}).get('p95'), 4)} s; first batch "
                 f"{_fmt(sp.get('first_batch_s'), 3)} s.")
        L.append(f"Machine: {mach.get('cpu_model')}, {mach.get('cpu_count')} CPUs "
                 f"({mach.get('cpus_usable')} usable), inference threads "
                 f"{mach.get('inference_threads') or 'runtime default'}, decode workers "
                 f"{mach.get('decode_workers')}; onnxruntime {mach.get('onnxruntime')}, "
                 f"Python {mach.get('python')}. {sp.get('note', '')}.")
    else:
        L.append("Not measured.")
    f = b["failures"]
    L += ["", f"### Failed images ({f['count']})", ""]
    if f["count"]:
        L.append("By type: " + ", ".join(f"{k} {v}" for k, v in f["by_type"].items()) + ".")
        L.append("")
        shown = f["items"][:200]
        L += _table(["path", "error", "message"],
                    [[it["path"], it["error_type"], (it["message"] or "")[:160]]
                     for it in shown])
        if f["count"] > len(shown):
            L.append(f"\n… {f['count'] - len(shown)} more in metrics.json "
                     "(`models[].failures.items`).")
    else:
        L.append("None.")
    L.append("")
    return L


def write_report_md(metrics: Mapping[str, Any], plots: Mapping[str, Mapping[str, str]],
                    path: Path) -> Path:
    """Write ``report.md`` from a ``metrics.json`` object and the plot file names."""
    prov = metrics["provenance"]
    man = prov.get("manifest") or {}
    git = prov.get("git") or {}
    suite = prov.get("suite") or {}
    n_res = metrics["bootstrap"]["resamples"]
    L = ["# wildvision bench report", "",
         f"Generated {metrics['generated']} by wildvision {metrics['wildvision_version']} "
         f"(metrics.json schema {metrics['schema_version']}).", "",
         f"- command: `{prov.get('command')}`"]
    if prov.get("render_command"):
        L.append(f"- rendered by: `{prov['render_command']}`")
    L += [f"- manifest: `{man.get('path')}` (sha256 `{man.get('sha256')}`, "
          f"{man.get('rows')} rows)",
          f"- split: `{prov.get('split')}`; suite: "
          f"{('`' + suite['name'] + '`') if suite.get('name') else 'none'}"
          + (f" — {suite['description']}" if suite.get("description") else ""),
          f"- images: {prov.get('images')}",
          f"- git commit: `{git.get('commit')}`" + (" (uncommitted changes)"
                                                     if git.get("dirty") else ""),
          f"- bootstrap: {n_res} resamples, seed {metrics['bootstrap']['seed']}", ""]
    comp = metrics.get("comparison")
    if comp:
        keys = comp["models"]
        L += ["## Comparison", "",
              f"Δ = model minus `{keys[0]}` on the images both evaluated, paired bootstrap 95% "
              "CI (an interval excluding 0 is a difference beyond resampling noise).", ""]
        paired = {p["model"]: p for p in comp["paired"]}
        header = ["metric", *keys, *(f"Δ {k}" for k in keys[1:])]
        rows = []
        for k in HEADLINE_KEYS:
            rows.append([f"`{k}`", *(_ci(comp["headline"][k][m]) for m in keys),
                         *(_ci(paired[m]["delta"][k]) for m in keys[1:])])
        L += _table(header, rows)
        if "compare" in plots.get("_comparison", {}):
            L += ["", f"![Precision-recall curves, all models]"
                      f"({plots['_comparison']['compare']})"]
        L.append("")
    for b in metrics["models"]:
        L += _model_section(b, plots.get(b["key"], {}), n_res)
    L += ["---", "Metric definitions and the metrics.json schema: docs/bench.md. Speed numbers "
          "depend on the machine; all other numbers are a pure function of predictions.jsonl."]
    path.write_text("\n".join(L) + "\n", encoding="utf-8")
    return path


def render_report(predictions: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                  n_resamples: int = 1000, seed: int = 0, plots: bool = True,
                  render_command: str | None = None) -> dict[str, Any]:
    """Compute ``metrics.json`` and write it with ``report.md`` and the plots into ``out_dir``.

    ``predictions`` is copied into ``out_dir`` (as ``predictions.jsonl``) when it lives
    elsewhere, so a report folder is self-contained.

    Args:
        predictions: a ``predictions.jsonl`` written by ``wildvision bench``.
        out_dir: the report folder (created).
        n_resamples, seed: bootstrap settings.
        plots: write the PNG plots (needs matplotlib, the ``[bench]`` extra).
        render_command: the command that re-rendered this report, for the provenance.

    Returns:
        The ``metrics.json`` object.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = Path(predictions)
    dst = out / "predictions.jsonl"
    if not dst.exists() or not os.path.samefile(src, dst):
        shutil.copyfile(src, dst)
    pset = read_predictions(dst)
    metrics = build_metrics(pset, n_resamples=n_resamples, seed=seed,
                            render_command=render_command)
    plot_files: dict[str, dict[str, str]] = {}
    if plots:
        from . import plots as P

        datas: list[tuple[str, EvalData]] = []
        for run, b in zip(pset.models, metrics["models"], strict=True):
            d = _eval_data(run)
            files: dict[str, str] = {}
            s = slug(run.key)
            if d is not None:
                datas.append((run.key, d))
                files["pr"] = P.plot_pr_curves(
                    d, out / f"pr_{s}.png", f"{run.key}: precision-recall per group").name
                cg = b["confusion"]["groups"]
                files["confusion_groups"] = P.plot_confusion(
                    cg["labels"], cg["labels"], cg["matrix"], out / f"confusion_groups_{s}.png",
                    f"{run.key}: groups").name
                cf = b["confusion"]["fine_labels"]
                keep = [i for i, lab in enumerate(cf["labels"])
                        if cf["in_model"][i] or any(cf["matrix"][i])]
                pred_cols = [i for i, inm in enumerate(cf["in_model"]) if inm]
                files["confusion_fine"] = P.plot_confusion(
                    [cf["labels"][i] + ("" if cf["in_model"][i] else " (not in model)")
                     for i in keep],
                    [cf["labels"][j] for j in pred_cols],
                    [[cf["matrix"][i][j] for j in pred_cols] for i in keep],
                    out / f"confusion_fine_{s}.png", f"{run.key}: fine labels").name
                files["reliability"] = P.plot_reliability(
                    b["calibration"], out / f"reliability_{s}.png",
                    f"{run.key}: reliability").name
            plot_files[run.key] = files
        if len(datas) > 1:
            plot_files["_comparison"] = {
                "compare": P.plot_pr_compare(datas, out / "pr_compare.png").name}
    metrics["plots"] = plot_files
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n",
                                      encoding="utf-8")
    write_report_md(metrics, plot_files, out / "report.md")
    return metrics


# -- for model cards ---------------------------------------------------------------------------
def card_metrics(metrics_json: str | os.PathLike[str] | Mapping[str, Any],
                 model: str | None = None) -> dict[str, Any]:
    """The headline numbers of one model, with CIs and provenance, ready for ``card.json``'s
    ``metrics``.

    Args:
        metrics_json: a ``metrics.json`` path or its parsed object.
        model: the model key (``name@version``) or name; default: the only (or first) model.

    Returns:
        ``{"source", "bench_schema_version", "model", "data", "command", "git_commit",
        "generated", "bootstrap", "headline", "binary", "groups", "false_flag_rate_by_source",
        "false_flag_rate_by_benign_label"}``; every ``headline`` entry is
        ``{"value", "ci95": [lo, hi]}``.

    Raises:
        DataError: unreadable file, a newer schema, or no such model.
    """
    from ..errors import DataError

    if isinstance(metrics_json, Mapping):
        mj: Mapping[str, Any] = metrics_json
    else:
        try:
            mj = json.loads(Path(metrics_json).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{metrics_json}: cannot read metrics.json ({e})") from e
    ver = int(mj.get("schema_version", 0))
    if ver > SCHEMA_VERSION or ver < 1:
        raise DataError(f"metrics.json schema {ver} is not one this wildvision reads "
                        f"(1..{SCHEMA_VERSION})")
    blocks = mj.get("models") or []
    if not blocks:
        raise DataError("metrics.json has no models")
    if model is None:
        b = blocks[0]
    else:
        matches = [x for x in blocks if model in (x["key"], x["model"].get("name"))]
        if not matches:
            raise DataError(f"no model {model!r} in metrics.json (has: "
                            f"{', '.join(x['key'] for x in blocks)})")
        b = matches[0]
    prov = mj["provenance"]
    man = prov.get("manifest") or {}
    groups: dict[str, Any] = {}
    for g, gb in (b.get("groups") or {}).items():
        if not gb.get("covered") or not gb.get("support"):
            continue
        at = gb.get("at_threshold") or {}
        entry: dict[str, Any] = {
            "support": gb["support"],
            "average_precision": gb["average_precision"],
            "roc_auc": gb["roc_auc"],
        }
        if at:
            entry["flag_threshold"] = (gb.get("thresholds") or {}).get("flag")
            entry["flag_precision"] = at["precision"]
            entry["flag_recall"] = at["recall"]
            entry["flag_f1"] = at["f1"]
        if gb.get("argmax"):
            entry["argmax_f1"] = gb["argmax"]["f1"]
            if gb.get("argmax_ci95"):
                entry["argmax_f1_ci95"] = gb["argmax_ci95"]["f1"]
        for t, v in (gb.get("recall_at_precision") or {}).items():
            entry[f"recall_at_precision_{t}"] = v["recall"]
        groups[g] = entry
    ben = b.get("benign") or {}
    return {
        "source": "wildvision bench",
        "bench_schema_version": mj["schema_version"],
        "model": {k: b["model"].get(k) for k in ("name", "version", "card_sha256")},
        "data": {
            "manifest": man.get("path"),
            "manifest_sha256": man.get("sha256"),
            "split": prov.get("split"),
            "suite": (prov.get("suite") or {}).get("name"),
            "images": b["counts"]["images"],
            "evaluated": b["counts"]["evaluated"],
            "failed": b["counts"]["failed"],
        },
        "command": prov.get("command"),
        "git_commit": (prov.get("git") or {}).get("commit"),
        "generated": mj.get("generated"),
        "bootstrap": mj.get("bootstrap"),
        "headline": dict(b["headline"]),
        "binary": b.get("binary"),
        "groups": groups,
        "unfamiliar": (b.get("decisions") or {}).get("unfamiliar"),
        "false_flag_rate_by_source": {s: v["false_flag_rate"]
                                      for s, v in (ben.get("by_source") or {}).items()},
        "false_flag_rate_by_benign_label": {lab: v["false_flag_rate"]
                                            for lab, v in (ben.get("by_fine_label") or {}).items()},
        "benign_review_rate": ben.get("review_rate"),
        "review_rate_by_source": {s: v.get("review_rate")
                                  for s, v in (ben.get("by_source") or {}).items()},
        "pass_rate_by_benign_label": {lab: v.get("pass_rate")
                                      for lab, v in (ben.get("by_fine_label") or {}).items()},
        "review_budget_curve": b.get("review_budget_curve"),
    }
