"""From one model's prediction records to its block of ``metrics.json``.

Ground truth is each record's ``group`` / ``fine_label`` (from the manifest). The model's label
set may differ from the data's:

* a true fine label the model lacks is evaluated at group level only (its images still count
  as false positives of whatever fine label the model predicts); it is listed under
  ``coverage.labels_not_in_model``;
* a true group the model lacks is ``covered: false``, left out of macro averages (its images
  still count against the group they are predicted as) and listed under
  ``coverage.groups_not_covered``.

Macro averages run over the classes that are both known to the model and present in the
truth. See ``docs/bench.md`` for every key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError
from ..scores import group_matrix
from ..taxonomy import FLAGGABLE_GROUPS, GROUP_NAMES, fine_label
from . import metrics as M
from .predictions import ModelRun

__all__ = ["PRECISION_TARGETS", "EvalData", "build_eval_data", "evaluate_model", "jsonable"]

PRECISION_TARGETS = (0.90, 0.95, 0.99)
N_BINS = 15
DECISIONS = ("flag", "review", "pass")
FLAG, REVIEW, PASS = 0, 1, 2
MAX_LISTED_FAILURES = 10_000


def jsonable(x: Any) -> Any:
    """numpy scalars/arrays to Python, NaN/inf to ``None``, recursively."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    return x


def _f(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def true_group(rec: Mapping[str, Any]) -> str:
    """The ground-truth group of a record: its ``group``, else the taxonomy group of its
    ``fine_label``, else ``""`` (unlabelled)."""
    g = str(rec.get("group") or "")
    if g:
        return g
    fl = str(rec.get("fine_label") or "")
    if fl:
        try:
            return fine_label(fl).group
        except Exception:
            return ""
    return ""


@dataclass
class EvalData:
    """Arrays of the evaluated images (readable and labelled) of one model."""

    groups: list[str]  # union of true and model groups, taxonomy order
    model_groups: list[str]
    labels: list[str]  # model labels, then true labels the model lacks (sorted)
    model_labels: list[str]
    label_group: dict[str, str]
    true_g: np.ndarray
    pred_g: np.ndarray
    true_f: np.ndarray
    pred_f: np.ndarray
    fine_known: np.ndarray  # true fine label is one of the model's labels
    gprob: np.ndarray  # (n, len(groups)), 0 for groups the model lacks
    lprob: np.ndarray  # (n, len(model_labels))
    gdec: np.ndarray  # (n, len(groups)) FLAG/REVIEW/PASS
    overall: np.ndarray  # (n,)
    sources: np.ndarray
    paths: list[str]

    @property
    def n(self) -> int:
        return int(self.true_g.shape[0])

    def group_index(self, g: str) -> int:
        return self.groups.index(g)


def build_eval_data(run: ModelRun, records: Sequence[Mapping[str, Any]]) -> EvalData:
    """Arrays from readable, labelled records of ``run``.

    Raises:
        DataError: a record names a group that is not in the taxonomy, or lacks a label's
            probability.
    """
    model_labels = run.labels
    label_groups = run.label_groups
    model_groups = [g for g in GROUP_NAMES if g in set(label_groups.values())]
    tg = [true_group(r) for r in records]
    bad = sorted({g for g in tg if g not in GROUP_NAMES})
    if bad:
        raise DataError(f"unknown ground-truth group(s) {bad}; groups: {', '.join(GROUP_NAMES)}")
    groups = [g for g in GROUP_NAMES if g in model_groups or g in tg]
    true_fine = [str(r.get("fine_label") or "") or f"<{g}>"
                 for r, g in zip(records, tg, strict=True)]
    extra = sorted({f for f in true_fine if f not in label_groups})
    labels = list(model_labels) + extra
    label_group = dict(label_groups)
    for f, g in zip(true_fine, tg, strict=True):
        label_group.setdefault(f, g)
    n = len(records)
    lprob = np.zeros((n, len(model_labels)))
    for i, r in enumerate(records):
        probs = r.get("probabilities") or {}
        try:
            lprob[i] = [float(probs[lab]) for lab in model_labels]
        except KeyError as e:
            raise DataError(f"{r.get('path')}: no probability for label {e} of model "
                            f"{run.key}") from None
    gidx = {g: i for i, g in enumerate(groups)}
    lidx = {lab: i for i, lab in enumerate(labels)}
    gmat = group_matrix(model_labels, label_groups, groups)
    gprob = lprob @ gmat
    dcode = {d: i for i, d in enumerate(DECISIONS)}
    gdec = np.full((n, len(groups)), PASS, dtype=np.int8)
    overall = np.full(n, PASS, dtype=np.int8)
    pred_g = np.zeros(n, dtype=np.int64)
    pred_f = np.zeros(n, dtype=np.int64)
    for i, r in enumerate(records):
        for g, d in (r.get("decisions") or {}).items():
            if g in gidx:
                gdec[i, gidx[g]] = dcode.get(d, PASS)
        overall[i] = dcode.get(str(r.get("decision", "pass")), PASS)
        top_g = r.get("top_group") or model_groups[int(np.argmax(gprob[i, [gidx[g] for g in
                                                                           model_groups]]))]
        top_f = r.get("top_label") or model_labels[int(np.argmax(lprob[i]))]
        pred_g[i] = gidx[top_g]
        pred_f[i] = lidx[top_f]
    return EvalData(
        groups=groups,
        model_groups=model_groups,
        labels=labels,
        model_labels=list(model_labels),
        label_group=label_group,
        true_g=np.array([gidx[g] for g in tg], dtype=np.int64),
        pred_g=pred_g,
        true_f=np.array([lidx[f] for f in true_fine], dtype=np.int64),
        pred_f=pred_f,
        fine_known=np.array([f in label_groups for f in true_fine], dtype=bool),
        gprob=gprob,
        lprob=lprob,
        gdec=gdec,
        overall=overall,
        sources=np.array([str(r.get("source") or "") for r in records], dtype=object),
        paths=[str(r.get("path", "")) for r in records],
    )


# -- the bootstrapped statistics -------------------------------------------------------------
HEADLINE_KEYS = (
    "accuracy_group",
    "macro_f1_group",
    "balanced_accuracy_group",
    "accuracy_fine",
    "macro_f1_fine",
    "flag_precision",
    "flag_recall",
    "flag_f1",
    "false_flag_rate",
    "flag_balanced_accuracy",
    "flaggable_average_precision",
    "flaggable_roc_auc",
    "ece_top_label",
)


def _flaggable_score(d: EvalData) -> np.ndarray:
    """P(any flaggable group) = sum of the flaggable groups' probabilities."""
    cols = [i for i, g in enumerate(d.groups) if g in FLAGGABLE_GROUPS]
    return np.asarray(d.gprob[:, cols].sum(axis=1))


def _stat_fn(d: EvalData) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    G, L = len(d.groups), len(d.labels)
    g_support = np.bincount(d.true_g, minlength=G)
    eval_groups = [i for i, g in enumerate(d.groups) if g in d.model_groups and g_support[i]]
    fk = d.fine_known
    f_support = np.bincount(d.true_f, minlength=L)
    eval_fine = [i for i in range(len(d.model_labels)) if f_support[i]]
    correct_f = d.true_f[fk] == d.pred_f[fk]
    top_conf = d.lprob[fk].max(axis=1) if d.lprob.shape[1] else np.zeros(int(fk.sum()))
    benign = d.groups.index("benign") if "benign" in d.groups else -1
    truth_flaggable = d.true_g != benign
    flagged = d.overall == FLAG
    curve = M.BinaryCurve(truth_flaggable, _flaggable_score(d))
    group_curves = {
        g: M.BinaryCurve(d.true_g == i, d.gprob[:, i])
        for i, g in enumerate(d.groups) if g in d.model_groups
    }

    def stat(W: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        cmg = M.confusion_w(d.true_g, d.pred_g, G, W)
        out["accuracy_group"] = M.accuracy_w(d.true_g == d.pred_g, W)
        out["macro_f1_group"] = M.macro_f1(cmg, eval_groups) if eval_groups else \
            np.full(W.shape[0], np.nan)
        out["balanced_accuracy_group"] = M.balanced_accuracy(cmg, eval_groups) if eval_groups \
            else np.full(W.shape[0], np.nan)
        Wf = W[:, fk]
        # over all images: those of labels the model lacks are false positives of its labels
        cmf = M.confusion_w(d.true_f, d.pred_f, L, W)
        out["accuracy_fine"] = M.accuracy_w(correct_f, Wf)
        out["macro_f1_fine"] = M.macro_f1(cmf, eval_fine) if eval_fine else \
            np.full(W.shape[0], np.nan)
        b = M.precision_recall_f1(truth_flaggable, flagged, W)
        out["flag_precision"] = b["precision"]
        out["flag_recall"] = b["recall"]
        out["flag_f1"] = b["f1"]
        with np.errstate(invalid="ignore", divide="ignore"):
            ffr = b["fp"] / (b["fp"] + b["tn"])
        out["false_flag_rate"] = ffr
        out["flag_balanced_accuracy"] = (b["recall"] + (1.0 - ffr)) / 2.0
        out["flaggable_average_precision"], out["flaggable_roc_auc"] = curve.ap_auc(W)
        out["ece_top_label"] = M.expected_calibration_error(top_conf, correct_f, N_BINS, Wf)
        for g, c in group_curves.items():
            i = d.groups.index(g)
            out[f"{g}/average_precision"], out[f"{g}/roc_auc"] = c.ap_auc(W)
            if g in FLAGGABLE_GROUPS:
                pos = d.true_g == i
                for rule, pred in (("flag", d.gdec[:, i] == FLAG), ("argmax", d.pred_g == i)):
                    pr = M.precision_recall_f1(pos, pred, W)
                    for k in ("precision", "recall", "f1"):
                        out[f"{g}/{rule}_{k}"] = pr[k]
        return out

    return stat


def _binary_stat(d: EvalData, positive_groups: Sequence[str]
                 ) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    pos_idx = [d.groups.index(g) for g in positive_groups if g in d.groups]
    truth = np.isin(d.true_g, pos_idx)
    flag_cols = [i for i in pos_idx if d.groups[i] in FLAGGABLE_GROUPS]
    pred_thr = (d.gdec[:, flag_cols] == FLAG).any(axis=1) if flag_cols else \
        np.zeros(d.n, dtype=bool)
    pred_arg = np.isin(d.pred_g, pos_idx)
    curve = M.BinaryCurve(truth, d.gprob[:, pos_idx].sum(axis=1))

    def stat(W: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name, pred in (("at_threshold", pred_thr), ("argmax", pred_arg)):
            b = M.precision_recall_f1(truth, pred, W)
            with np.errstate(invalid="ignore", divide="ignore"):
                fpr = b["fp"] / (b["fp"] + b["tn"])
            out[f"{name}/precision"] = b["precision"]
            out[f"{name}/recall"] = b["recall"]
            out[f"{name}/f1"] = b["f1"]
            out[f"{name}/false_positive_rate"] = fpr
            out[f"{name}/balanced_accuracy"] = (b["recall"] + 1.0 - fpr) / 2.0
        out["average_precision"], out["roc_auc"] = curve.ap_auc(W)
        return out

    return stat


def _binary_block(d: EvalData, positive_groups: Sequence[str], n_resamples: int, seed: int
                  ) -> dict[str, Any]:
    est = M.bootstrap(_binary_stat(d, positive_groups), d.n, n_resamples=n_resamples,
                      seed=seed)
    pos_idx = [d.groups.index(g) for g in positive_groups if g in d.groups]
    n_pos = int(np.isin(d.true_g, pos_idx).sum())
    block: dict[str, Any] = {
        "positive_groups": list(positive_groups),
        "not_covered": [g for g in positive_groups if g not in d.model_groups],
        "positives": n_pos,
        "negatives": d.n - n_pos,
    }
    for name in ("at_threshold", "argmax"):
        block[name] = {k: est[f"{name}/{k}"].to_dict() for k in (
            "precision", "recall", "f1", "false_positive_rate", "balanced_accuracy")}
    block["average_precision"] = est["average_precision"].to_dict()
    block["roc_auc"] = est["roc_auc"].to_dict()
    return block


# -- point-only sections ----------------------------------------------------------------------
def _shares(codes: np.ndarray) -> dict[str, float | None]:
    n = codes.shape[0]
    return {d: (float(np.sum(codes == i)) / n if n else None) for i, d in enumerate(DECISIONS)}


def _group_block(d: EvalData, est: Mapping[str, M.Estimate], thresholds: Mapping[str, Any]
                 ) -> dict[str, Any]:
    G = len(d.groups)
    cm = M.confusion_w(d.true_g, d.pred_g, G)[0]
    prf = M.prf_from_confusion(cm)
    out: dict[str, Any] = {}
    for i, g in enumerate(d.groups):
        covered = g in d.model_groups
        pos = d.true_g == i
        block: dict[str, Any] = {
            "covered": covered,
            "flaggable": g in FLAGGABLE_GROUPS,
            "support": int(pos.sum()),
            "predicted": int(prf["predicted"][i]),
            "argmax": {k: _f(prf[k][i]) for k in ("precision", "recall", "f1")},
        }
        if not covered:
            block.update(at_threshold=None, average_precision=None, roc_auc=None,
                         recall_at_precision=None, ece=None, thresholds=None)
            out[g] = block
            continue
        if g in FLAGGABLE_GROUPS:
            th = thresholds.get(g) or {}
            block["thresholds"] = {"flag": _f(th.get("flag")), "review": _f(th.get("review"))}
            # the interval of each "argmax" value above (same bootstrap as every interval)
            block["argmax_ci95"] = {k: est[f"{g}/argmax_{k}"].to_dict()["ci95"]
                                    for k in ("precision", "recall", "f1")}
            block["at_threshold"] = {
                "precision": est[f"{g}/flag_precision"].to_dict(),
                "recall": est[f"{g}/flag_recall"].to_dict(),
                "f1": est[f"{g}/flag_f1"].to_dict(),
                "flagged": int(np.sum(d.gdec[:, i] == FLAG)),
                "decision_shares": {
                    "positives": _shares(d.gdec[pos, i]),
                    "negatives": _shares(d.gdec[~pos, i]),
                },
            }
        else:
            block["thresholds"] = None
            block["at_threshold"] = None  # benign is never flagged: see the benign section
        block["average_precision"] = est[f"{g}/average_precision"].to_dict()
        block["roc_auc"] = est[f"{g}/roc_auc"].to_dict()
        curve = M.BinaryCurve(pos, d.gprob[:, i])
        rap: dict[str, Any] = {}
        for t in PRECISION_TARGETS:
            r, thr = curve.recall_at_precision(t)
            rap[f"{t:.2f}"] = {"recall": _f(r[0]), "threshold": _f(thr[0])}
        block["recall_at_precision"] = rap
        block["ece"] = _f(M.expected_calibration_error(d.gprob[:, i], pos, N_BINS)[0]) \
            if d.n else None
        out[g] = block
    return out


def _fine_block(d: EvalData) -> dict[str, Any]:
    L = len(d.labels)
    # over all images: those of labels the model lacks are false positives of its labels
    prf = M.prf_from_confusion(M.confusion_w(d.true_f, d.pred_f, L)[0])
    out: dict[str, Any] = {}
    for i, lab in enumerate(d.labels):
        g = d.label_group[lab]
        mask = d.true_f == i
        in_model = i < len(d.model_labels)
        block: dict[str, Any] = {
            "group": g,
            "in_model": in_model,
            "support": int(mask.sum()),
            "predicted": int(prf["predicted"][i]),
        }
        if in_model:
            block.update({k: _f(prf[k][i]) for k in ("precision", "recall", "f1")})
            curve = M.BinaryCurve(d.true_f == i, d.lprob[:, i])
            block["average_precision"] = _f(curve.average_precision()[0])
            block["roc_auc"] = _f(curve.roc_auc()[0])
        else:
            block.update(precision=None, recall=None, f1=None, average_precision=None,
                         roc_auc=None)
        block["decision_shares"] = _shares(d.overall[mask])
        if g in FLAGGABLE_GROUPS and g in d.groups and g in d.model_groups:
            gi = d.groups.index(g)
            n = int(mask.sum())
            block["own_group_flag_rate"] = float(np.sum(d.gdec[mask, gi] == FLAG)) / n if n \
                else None
        else:
            block["own_group_flag_rate"] = None
        if g == "benign":
            block["flagged_as"] = _flagged_as(d, mask)
        out[lab] = block
    return out


def _flagged_as(d: EvalData, mask: np.ndarray) -> dict[str, float | None]:
    n = int(mask.sum())
    return {
        g: (float(np.sum(d.gdec[mask, i] == FLAG)) / n if n else None)
        for i, g in enumerate(d.groups) if g in FLAGGABLE_GROUPS and g in d.model_groups
    }


def _confusion_block(d: EvalData) -> dict[str, Any]:
    cmg = M.confusion_w(d.true_g, d.pred_g, len(d.groups))[0].astype(np.int64)
    cmf = M.confusion_w(d.true_f, d.pred_f, len(d.labels))[0].astype(np.int64)
    return {
        "groups": {"labels": d.groups, "matrix": cmg.tolist()},
        "fine_labels": {
            "labels": d.labels,
            "in_model": [i < len(d.model_labels) for i in range(len(d.labels))],
            "matrix": cmf.tolist(),
        },
    }


def _calibration_block(d: EvalData, est: Mapping[str, M.Estimate]) -> dict[str, Any]:
    fk = d.fine_known
    out: dict[str, Any] = {"n_bins": N_BINS}
    if d.lprob.shape[1] and fk.any():
        conf = d.lprob[fk].max(axis=1)
        corr = d.true_f[fk] == d.pred_f[fk]
        out["top_label"] = {
            "n": int(fk.sum()),
            "ece": est["ece_top_label"].to_dict(),
            "bins": M.reliability_bins(conf, corr, N_BINS),
        }
    else:
        out["top_label"] = None
    mg = [d.groups.index(g) for g in d.model_groups]
    if d.n and mg:
        gconf = d.gprob[:, mg].max(axis=1)
        gcorr = d.true_g == d.pred_g
        out["top_group"] = {
            "n": d.n,
            "ece": _f(M.expected_calibration_error(gconf, gcorr, N_BINS)[0]),
            "bins": M.reliability_bins(gconf, gcorr, N_BINS),
        }
    else:
        out["top_group"] = None
    return out


def _source_block(d: EvalData, failed_by_source: Mapping[str, int]) -> dict[str, Any]:
    benign = d.groups.index("benign") if "benign" in d.groups else -1
    out: dict[str, Any] = {}
    for src in sorted(set(d.sources.tolist()) | set(failed_by_source)):
        m = d.sources == src
        n = int(m.sum())
        fk = m & d.fine_known
        is_benign = m & (d.true_g == benign)
        is_flaggable = m & (d.true_g != benign)
        flagged = d.overall == FLAG
        out[src] = {
            "n": n,
            "failed": int(failed_by_source.get(src, 0)),
            "groups": dict(Counter(d.groups[i] for i in d.true_g[m])),
            "accuracy_group": float(np.mean(d.true_g[m] == d.pred_g[m])) if n else None,
            "accuracy_fine": float(np.mean(d.true_f[fk] == d.pred_f[fk])) if fk.any() else None,
            "flag_rate": float(np.mean(flagged[m])) if n else None,
            "review_rate": float(np.mean(d.overall[m] == REVIEW)) if n else None,
            "flag_recall": float(np.mean(flagged[is_flaggable])) if is_flaggable.any() else None,
            "false_flag_rate": float(np.mean(flagged[is_benign])) if is_benign.any() else None,
        }
    return out


def _benign_block(d: EvalData, est: Mapping[str, M.Estimate]) -> dict[str, Any]:
    if "benign" not in d.groups:
        return {"n": 0, "false_flag_rate": None, "flag_or_review_rate": None, "by_source": {},
                "by_fine_label": {}}
    bi = d.groups.index("benign")
    mask = d.true_g == bi
    n = int(mask.sum())
    by_source: dict[str, Any] = {}
    for src in sorted(set(d.sources[mask].tolist())):
        m = mask & (d.sources == src)
        k = int(m.sum())
        by_source[src] = {
            "n": k,
            "false_flag_rate": float(np.mean(d.overall[m] == FLAG)),
            "review_rate": float(np.mean(d.overall[m] == REVIEW)),
            "pass_rate": float(np.mean(d.overall[m] == PASS)),
            "flagged_as": _flagged_as(d, m),
        }
    by_label: dict[str, Any] = {}
    for i, lab in enumerate(d.labels):
        m = mask & (d.true_f == i)
        k = int(m.sum())
        if not k:
            continue
        by_label[lab] = {
            "n": k,
            "false_flag_rate": float(np.mean(d.overall[m] == FLAG)),
            "review_rate": float(np.mean(d.overall[m] == REVIEW)),
            "pass_rate": float(np.mean(d.overall[m] == PASS)),
            "flagged_as": _flagged_as(d, m),
        }
    return {
        "n": n,
        "false_flag_rate": est["false_flag_rate"].to_dict(),
        "flag_or_review_rate": float(np.mean(d.overall[mask] <= REVIEW)) if n else None,
        "review_rate": float(np.mean(d.overall[mask] == REVIEW)) if n else None,
        "flagged_as": _flagged_as(d, mask),
        "by_source": by_source,
        "by_fine_label": by_label,
    }


def _budget_curve(d: EvalData, records: Sequence[Mapping[str, Any]], info: Mapping[str, Any]
                  ) -> list[dict[str, Any]] | None:
    """Flag recall and review share against the review budget, thresholds derived on these
    photos (:func:`wildvision.policy.tradeoff_curve`; the open-set gate as the model applied
    it, from each photo's familiarity)."""
    from ..modelpack import Thresholds
    from ..policy import tradeoff_curve

    current = {g: Thresholds(float(t["flag"]), float(t["review"]))
               for g, t in (info.get("thresholds") or {}).items() if g in d.groups}
    if not current or "benign" not in d.groups or not np.any(d.true_g == d.groups.index("benign")):
        return None
    gate = info.get("open_set_thresholds") or {}
    fam = np.array([float(r["familiarity"]) if r.get("familiarity") is not None else np.inf
                    for r in records], dtype=np.float64)
    limits = np.array([float(gate.get(g, -1.0)) for g in d.groups], dtype=np.float64)
    gated = fam[:, None] < limits[None, :]
    truth = [d.groups[i] for i in d.true_g]
    rows = tradeoff_curve(d.gprob, truth, d.groups, current, gated=gated)
    return [{"review_budget": r["review_budget"], "thresholds": r["thresholds"],
             **r["calibration"]} for r in rows]


def _decisions_block(d: EvalData, records: Sequence[dict[str, Any]] | None = None
                     ) -> dict[str, Any]:
    benign = d.groups.index("benign") if "benign" in d.groups else -1
    block: dict[str, Any] = {
        "all": _shares(d.overall),
        "flaggable_truth": _shares(d.overall[d.true_g != benign]),
        "benign_truth": _shares(d.overall[d.true_g == benign]),
    }
    if records is not None and any("unfamiliar" in r for r in records):
        # the open-set gate (wildvision.openset): share of images below the familiarity
        # threshold, whose flags became review
        unf = np.array([bool(r.get("unfamiliar")) for r in records])
        block["unfamiliar"] = {
            "all": float(unf.mean()) if len(unf) else None,
            "flaggable_truth": float(unf[d.true_g != benign].mean())
            if np.any(d.true_g != benign) else None,
            "benign_truth": float(unf[d.true_g == benign].mean())
            if np.any(d.true_g == benign) else None,
        }
    return block


def evaluate_model(run: ModelRun, *, n_resamples: int = 1000, seed: int = 0,
                   positive_groups: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``metrics.json`` block of one model (see ``docs/bench.md``).

    Args:
        run: the model's records from the predictions file.
        n_resamples: bootstrap resamples for the confidence intervals (0: none).
        seed: bootstrap seed.
        positive_groups: the groups of a binary task (a suite's ``positive_groups``); adds
            the ``binary`` block.
    """
    records = run.records
    failed = [r for r in records if not r.get("ok")]
    ok = [r for r in records if r.get("ok")]
    labelled = [r for r in ok if true_group(r)]
    unlabelled = len(ok) - len(labelled)
    info = run.info
    model = {k: info.get(k) for k in (
        "name", "version", "spec", "path", "card_sha256", "files", "arch", "labels",
        "label_groups", "thresholds", "temperature", "backend", "precision", "batch_size",
        "threads", "open_set")}
    model["groups"] = [g for g in GROUP_NAMES if g in set(run.label_groups.values())]
    failed_by_type = Counter(str(r.get("error_type", "")) for r in failed)
    failed_by_source = Counter(str(r.get("source") or "") for r in failed)
    failures = {
        "count": len(failed),
        "by_type": dict(sorted(failed_by_type.items())),
        "items": [
            {"path": r.get("path"), "source": r.get("source"), "error_type": r.get("error_type"),
             "message": r.get("message")}
            for r in failed[:MAX_LISTED_FAILURES]
        ],
        "listed": min(len(failed), MAX_LISTED_FAILURES),
    }
    sha_mismatch = [r.get("path") for r in ok if r.get("sha256_mismatch")]
    block: dict[str, Any] = {
        "key": run.key,
        "model": model,
        "counts": {
            "images": len(records),
            "evaluated": len(labelled),
            "failed": len(failed),
            "unlabelled": unlabelled,
            "sha256_mismatch": len(sha_mismatch),
        },
        "failures": failures,
        "speed": run.speed,
    }
    if sha_mismatch:
        block["sha256_mismatch"] = sha_mismatch[:MAX_LISTED_FAILURES]
    if not labelled:
        block.update(headline={k: {"value": None, "ci95": [None, None]} for k in HEADLINE_KEYS},
                     groups={}, fine_labels={}, confusion=None, calibration=None,
                     by_source={}, benign=None, decisions=None, binary=None,
                     coverage={"groups_not_covered": {}, "labels_not_in_model": {}})
        block["counts"]["by_group"] = {}
        return jsonable(block)  # type: ignore[no-any-return]
    d = build_eval_data(run, labelled)
    est = M.bootstrap(_stat_fn(d), d.n, n_resamples=n_resamples, seed=seed)
    support = np.bincount(d.true_g, minlength=len(d.groups))
    block["counts"]["by_group"] = {g: int(support[i]) for i, g in enumerate(d.groups)
                                   if support[i]}
    block["headline"] = {k: est[k].to_dict() for k in HEADLINE_KEYS}
    block["groups"] = _group_block(d, est, info.get("thresholds") or {})
    block["fine_labels"] = _fine_block(d)
    block["confusion"] = _confusion_block(d)
    block["calibration"] = _calibration_block(d, est)
    block["by_source"] = _source_block(d, failed_by_source)
    block["benign"] = _benign_block(d, est)
    block["decisions"] = _decisions_block(d, labelled)
    block["binary"] = _binary_block(d, positive_groups, n_resamples, seed) \
        if positive_groups else None
    block["review_budget_curve"] = _budget_curve(d, labelled, info)
    block["coverage"] = {
        "groups_not_covered": {g: int(support[i]) for i, g in enumerate(d.groups)
                               if g not in d.model_groups and support[i]},
        "labels_not_in_model": {lab: int(np.sum(d.true_f == i))
                                for i, lab in enumerate(d.labels)
                                if i >= len(d.model_labels)},
    }
    return jsonable(block)  # type: ignore[no-any-return]
