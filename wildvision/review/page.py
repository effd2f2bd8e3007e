"""Build the self-contained review page from a ``wildvision classify`` results file.

Safety: every string from the results (file names, labels, model names) travels to the page
inside one ``<script type="application/json">`` block, with ``<``, ``>``, ``&`` and the line
separators escaped so it cannot close the block, and the page script puts it into the page as
text only. A Content-Security-Policy admits exactly the page's own script and style (by hash)
and ``data:`` images: no network request, no injected script, even from a hostile name.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image

from ..data.reviews import DECISION_FIELDS
from ..errors import ConfigError, DataError
from ..explain import Explanation, render_overlay
from ..imaging import load_image
from ..taxonomy import FINE_LABELS, FLAGGABLE_GROUPS, fine_label

__all__ = ["ReviewPage", "build_review_page"]

DECISIONS = ("flag", "review", "pass")


@dataclass
class ReviewPage:
    """What :func:`build_review_page` wrote."""

    path: Path
    items: int
    failed: int = 0  # results lines of inputs classify could not read (not reviewable)
    unavailable: list[str] = field(default_factory=list)  # images missing or changed
    heatmaps: int = 0
    bytes: int = 0


def _read_results(results: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], str]:
    path = Path(results)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read results ({e.strerror or e})") from e
    out = []
    for lineno, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not a JSON line of `wildvision classify` "
                            f"results ({e})") from e
        if not isinstance(d, dict) or "source" not in d or "ok" not in d:
            raise DataError(f"{path}:{lineno}: not a `wildvision classify` result "
                            "(needs 'source' and 'ok')")
        out.append(d)
    return out, hashlib.sha256(raw).hexdigest()


def _top_flaggable(d: dict[str, Any]) -> tuple[str, float | None]:
    groups = d.get("groups") or {}
    best, best_p = "", None
    for g, v in groups.items():
        if g in FLAGGABLE_GROUPS and (best_p is None or float(v["probability"]) > best_p):
            best, best_p = g, float(v["probability"])
    return best, best_p


def _labels_for(d: dict[str, Any], group: str) -> tuple[str, str]:
    """(confirm label, reject label): the model's most probable label in ``group``, and its
    most probable benign label ('' when its top labels have none)."""
    confirm = reject = ""
    for t in d.get("top_labels") or []:
        if not confirm and t.get("group") == group:
            confirm = str(t.get("label", ""))
        if not reject and t.get("group") == "benign":
            reject = str(t.get("label", ""))
    if not confirm and group:
        confirm = next((lab for lab in FINE_LABELS if fine_label(lab).group == group), "")
    return confirm, reject


def _data_uri(img: Image.Image, quality: int) -> str:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _thumbs(path: Path, sha256: str, explanation: Any, size: int, quality: int
            ) -> tuple[str, str, str]:
    """(thumbnail URI, overlay URI or '', problem or '') for one image."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return "", "", f"image not found ({e.strerror or e})"
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        return "", "", "image changed since it was classified"
    try:
        img = load_image(data)
    except Exception as e:  # any decoder failure: shown on the card, the page is still made
        return "", "", f"unreadable image ({type(e).__name__})"
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    overlay = ""
    if explanation is not None:
        try:
            exp = Explanation.from_dict(explanation)
            overlay = _data_uri(render_overlay(img, exp, max_side=None), quality)
        except ConfigError:
            overlay = ""
    return _data_uri(img, quality), overlay, ""


def _json_for_script(obj: Any) -> str:
    """JSON that cannot end a ``<script>`` block or start markup inside it."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode(
        "ascii") + "'"


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; \
style-src {style_hash}; script-src {script_hash}; base-uri 'none'; form-action 'none'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="wildvision {version}">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<header>
  <h1 id="title"></h1>
  <p id="summary"></p>
  <div class="controls">
    <span id="counter"></span> <span id="shown"></span>
    <label>group <select id="filter-group"></select></label>
    <label>decision <select id="filter-decision">
      <option value="">all</option><option value="flag">flag</option>
      <option value="review">review</option><option value="pass">pass</option></select></label>
    <label>status <select id="filter-status">
      <option value="">all</option><option value="todo">not reviewed</option>
      <option value="done">reviewed</option></select></label>
    <label>group by <select id="groupby">
      <option value="none">nothing</option><option value="decision">decision</option>
      <option value="group">group</option></select></label>
    <label>sort <select id="sort">
      <option value="prob-desc">probability, high first</option>
      <option value="prob-asc">probability, low first</option>
      <option value="decision">decision</option><option value="group">group</option>
      <option value="name">file name</option></select></label>
    <label><input type="checkbox" id="heatmaps"> heatmaps (h)</label>
    <label>reviewer <input id="reviewer" size="10" autocomplete="off"></label>
    <button id="export-csv" type="button">export CSV</button>
    <button id="export-jsonl" type="button">export JSONL</button>
    <span class="hint">keys: <kbd>?</kbd></span>
  </div>
  <div class="bar"><div id="progress"></div></div>
</header>
<main><div id="items"></div></main>
<div id="help" class="panel" hidden>
  <b>Keyboard</b><br>
  <kbd>j</kbd>/<kbd>&darr;</kbd> next &nbsp; <kbd>k</kbd>/<kbd>&uarr;</kbd> previous<br>
  <kbd>c</kbd> confirm: the model is right &nbsp; <kbd>x</kbd> reject: not trafficking<br>
  <kbd>r</kbd> relabel (type a label, <kbd>Enter</kbd>) &nbsp; <kbd>u</kbd> undo<br>
  <kbd>h</kbd> heatmaps on/off &nbsp; <kbd>?</kbd> this help &nbsp; <kbd>Esc</kbd> close
</div>
<div id="relabel" class="panel" hidden>
  <div>Relabel <b id="relabel-name"></b></div>
  <input id="relabel-input" list="label-list" size="32" autocomplete="off"
         placeholder="label, e.g. rhino_horn_carved">
  <datalist id="label-list"></datalist>
  <div id="relabel-error"></div>
</div>
<script type="application/json" id="wv-data">{data}</script>
<script>{script}</script>
</body>
</html>
"""


def build_review_page(
    results: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    image_root: str | os.PathLike[str] | None = None,
    decisions: Sequence[str] = ("flag", "review"),
    heatmaps: bool = True,
    thumb_size: int = 256,
    quality: int = 80,
    title: str | None = None,
    workers: int | None = None,
    extra_labels: Iterable[tuple[str, str]] = (),
) -> ReviewPage:
    """Write the review page of a results file.

    Args:
        results: a JSONL file of ``wildvision classify`` results (``--explain`` adds
            heatmaps).
        out: the HTML file to write (atomically).
        image_root: where relative ``source`` paths are (default: the current directory).
        decisions: which model decisions to put on the page.
        heatmaps: show the results' heatmaps as overlays (when they carry them).
        thumb_size: longest side of the embedded thumbnails, in pixels.
        quality: JPEG quality of the thumbnails.
        title: page title (default: from the results file name).
        workers: thumbnail threads (default: CPU count, at most 8).
        extra_labels: more ``(label, group)`` pairs offered for relabelling.

    Returns:
        A :class:`ReviewPage` summary.

    Raises:
        DataError: the results file is missing or malformed.
        ConfigError: bad options.
    """
    bad = [d for d in decisions if d not in DECISIONS]
    if bad or not decisions:
        raise ConfigError(f"decisions must be among {', '.join(DECISIONS)}, got {bad or '[]'}")
    if not 32 <= thumb_size <= 1024:
        raise ConfigError(f"thumb_size must be in [32, 1024], got {thumb_size}")
    if not 10 <= quality <= 95:
        raise ConfigError(f"quality must be in [10, 95], got {quality}")
    rows, results_sha = _read_results(results)
    root = Path(image_root) if image_root is not None else Path.cwd()
    failed = sum(1 for d in rows if not d.get("ok"))
    chosen = [d for d in rows if d.get("ok") and d.get("decision") in decisions]
    labels: dict[str, str] = {lab: fine_label(lab).group for lab in FINE_LABELS}
    for lab, g in extra_labels:
        labels.setdefault(lab, g)
    for d in chosen:
        for t in d.get("top_labels") or []:
            if t.get("label") and t.get("group"):
                labels.setdefault(str(t["label"]), str(t["group"]))

    def one(d: dict[str, Any]) -> tuple[Path, tuple[str, str, str]]:
        p = Path(str(d["source"]))
        path = (p if p.is_absolute() else root / p).resolve()
        exp = d.get("explanation") if heatmaps else None
        return path, _thumbs(path, str(d.get("image_sha256", "")), exp, thumb_size, quality)

    n_workers = workers or max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(n_workers, thread_name_prefix="wv-review") as pool:
        made = list(pool.map(one, chosen))
    items: list[dict[str, Any]] = []
    unavailable: list[str] = []
    models: dict[str, None] = {}
    for i, (d, (path, (thumb, overlay, problem))) in enumerate(zip(chosen, made, strict=True)):
        group, prob = _top_flaggable(d)
        confirm, reject = _labels_for(d, group)
        top = (d.get("top_labels") or [{}])[0]
        if problem:
            unavailable.append(f"{d['source']}: {problem}")
        model = f"{d.get('model', '')} {d.get('model_version', '')}".strip()
        models.setdefault(model, None)
        items.append({
            "key": f"{i}:{d.get('image_sha256', '')}",
            "name": str(d["source"]), "path": str(path),
            "sha256": str(d.get("image_sha256", "")),
            "decision": d.get("decision"), "group": group, "probability": prob,
            "top_label": str(top.get("label", "")),
            "top_label_probability": top.get("probability"),
            "confirm_label": confirm, "reject_label": reject,
            "unfamiliar": bool(d.get("unfamiliar")), "known_image": bool(d.get("known_image")),
            "model": str(d.get("model", "")), "model_version": str(d.get("model_version", "")),
            "thumb": thumb, "overlay": overlay, "problem": problem,
        })
    n_heat = sum(1 for it in items if it["overlay"])
    name = Path(results).name
    summary = (f"{len(items)} photos ({', '.join(decisions)}) from {name}; model "
               f"{', '.join(m for m in models if m) or 'unknown'}")
    if failed:
        summary += f"; {failed} inputs failed in classify and are not shown"
    if unavailable:
        summary += f"; {len(unavailable)} images missing or changed (no thumbnail)"
    page_title = title or f"wildvision review: {name}"
    data = {
        "title": page_title, "summary": summary, "items": items,
        "labels": sorted(labels.items()), "decision_fields": list(DECISION_FIELDS),
        "results_sha256": results_sha, "has_heatmaps": n_heat > 0,
        "page_id": hashlib.sha256(
            f"{results_sha}|{','.join(decisions)}".encode()).hexdigest()[:16],
        "made_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    pkg = resources.files("wildvision.review")
    script = pkg.joinpath("review.js").read_text(encoding="utf-8")
    style = pkg.joinpath("review.css").read_text(encoding="utf-8")
    from .._version import __version__

    text = _TEMPLATE.format(
        style_hash=_csp_hash(style), script_hash=_csp_hash(script), version=__version__,
        title=html.escape(page_title), style=style, data=_json_for_script(data), script=script,
    )
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out_path)
    return ReviewPage(out_path, len(items), failed, unavailable, n_heat,
                      out_path.stat().st_size)
