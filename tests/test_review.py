"""The review page in a real browser (Chromium driven by Playwright), and its decisions turned
into a manifest that training accepts.

The browser is the Debian ``chromium`` package (``.ci/run`` installs it): without it these
tests skip, unless ``WILDVISION_REQUIRE_BROWSER=1`` (set by CI) makes that a failure.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wildvision.cli import main
from wildvision.data.manifest import read_manifest
from wildvision.data.reviews import DECISION_FIELDS, manifest_from_reviews, read_decisions
from wildvision.errors import DataError
from wildvision.review import build_review_page

from conftest import photo_like

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
XSS_NAME = "<img src=x onerror=alert(1)>.jpg"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file():
        if os.environ.get("WILDVISION_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing (apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Page:
    """A review page open in a fresh browser context, recording what must not happen."""

    def __init__(self, browser: Any, path: Path) -> None:
        self.context = browser.new_context(accept_downloads=True)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error"
                     else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.url = path.resolve().as_uri()
        self.load()

    def load(self) -> float:
        t0 = time.perf_counter()
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready='1']")
        return time.perf_counter() - t0

    def counter(self) -> str:
        return str(self.page.text_content("#counter"))

    def shown(self) -> list[dict[str, str]]:
        """The visible cards in page order: source, file name, decision, group text, status."""
        return list(self.page.eval_on_selector_all("#items .card", """cards => cards.map(c => ({
            name: c.querySelector('.name').title,
            file: c.querySelector('.name').textContent,
            decision: c.querySelector('.badge').textContent,
            grp: c.querySelector('.grp').textContent,
            status: c.querySelector('.status').textContent}))"""))

    def external(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(("file:", "data:", "blob:"))]

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Photos classified with the default model and --explain, with a hostile file name, and
    the review page of their results."""
    root = tmp_path_factory.mktemp("review")
    photos = root / "photos"
    photos.mkdir()
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    sources = []
    if (shared / "manifest.csv").is_file():
        sources += sorted((shared / "met_ivory" / "ivory_artifact").glob("*.jpg"))[:3]
        sources += sorted((shared / "bigcats" / "live_tiger").glob("*.jpg"))[:2]
        sources += sorted((shared / "clothing").rglob("*.jpg"))[:1]
    names = []
    for i, s in enumerate(sources):
        dst = photos / f"real{i}{s.suffix}"
        shutil.copyfile(s, dst)
        names.append(dst.name)
    for i in range(3):  # synthetic photos: the page works without the real data too
        photo_like(320, 240, seed=i).save(photos / f"synthetic{i}.jpg", quality=85)
        names.append(f"synthetic{i}.jpg")
    hostile = photos / XSS_NAME
    photo_like(200, 150, seed=9).save(hostile, "JPEG", quality=85)
    names.append(XSS_NAME)
    results = root / "results.jsonl"
    cwd = os.getcwd()
    os.chdir(root)
    try:
        code = main(["classify", *[f"photos/{n}" for n in names], "--explain", "-o",
                     str(results), "--threshold", "ivory=0.0:0.0",
                     "--threshold", "live_protected_animal=0.0:0.0"])
    finally:
        os.chdir(cwd)
    assert code == 0
    # Every photo gets "flag" (thresholds 0; "review" where the open-set gate finds it
    # unfamiliar), so the page has all of them; one more result
    # line from a failed input and one with a hostile model name and label.
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    evil = dict(lines[-1])
    evil["source"] = "photos/" + XSS_NAME
    evil["model"] = "</script><script>alert(3)</script>"
    evil["top_labels"] = [{"label": "<b>bold</b>", "group": "ivory", "probability": 0.9}]
    lines.append(evil)
    lines.append({"source": "photos/missing.jpg", "ok": False, "error_type": "InvalidImageError",
                  "message": "gone", "model": "m", "model_version": "1"})
    results.write_text("".join(json.dumps(x) + "\n" for x in lines))
    page = build_review_page(results, root / "review.html", image_root=root)
    return {"root": root, "results": results, "lines": lines, "page": page,
            "html": root / "review.html", "real": len(sources)}


def test_page_is_self_contained_and_escapes_everything(reviewed: dict[str, Any]) -> None:
    html = reviewed["html"].read_text(encoding="utf-8")
    page = reviewed["page"]
    assert page.items == len(reviewed["lines"]) - 1 and page.failed == 1
    assert page.heatmaps >= page.items - 1  # every classified photo carries its heatmap
    assert "<img src=x" not in html and "</script><script>" not in html
    assert "onerror=alert" in html.replace("\\u003c", "<").replace("\\u003e", ">")
    assert "http://" not in html and "https://" not in html
    assert "Content-Security-Policy" in html


def test_page_loads_offline_without_errors_and_shows_hostile_names_as_text(
        browser: Any, reviewed: dict[str, Any]) -> None:
    p = Page(browser, reviewed["html"])
    try:
        n = reviewed["page"].items
        assert p.counter() == f"0 / {n} reviewed"
        cards = p.shown()
        assert len(cards) == n
        names = [c["name"] for c in cards]
        assert names.count("photos/" + XSS_NAME) == 2  # shown as text, twice
        assert [c["file"] for c in cards].count(XSS_NAME) == 2
        assert p.page.locator("#items img").count() == n  # only our thumbnails are images
        assert p.page.eval_on_selector_all(
            "#items img", "imgs => imgs.every(i => i.src.startsWith('data:image/jpeg'))")
        assert p.page.locator("b", has_text="bold").count() == 0
        summary = str(p.page.text_content("#summary"))
        assert "</script><script>alert(3)</script>" in summary and "1 inputs failed" in summary
        assert p.page.locator("script").count() == 2  # the data block and the page script
        # Heatmaps on by default; h toggles the overlay off and on.
        first = p.page.locator("#items img").first
        on = first.get_attribute("src")
        p.page.keyboard.press("h")
        assert first.get_attribute("src") != on
        p.page.keyboard.press("h")
        assert first.get_attribute("src") == on
        assert p.errors == [] and p.dialogs == [] and p.external() == []
    finally:
        p.close()


def test_sort_filter_and_group(browser: Any, reviewed: dict[str, Any]) -> None:
    lines = [d for d in reviewed["lines"] if d.get("ok")]
    p = Page(browser, reviewed["html"])
    try:
        def probs() -> list[float]:
            return [float(c["grp"].split()[-1]) for c in p.shown()]

        assert probs() == sorted(probs(), reverse=True)  # default: most probable first
        p.page.select_option("#sort", "prob-asc")
        assert probs() == sorted(probs())
        p.page.select_option("#sort", "name")
        names = [c["name"] for c in p.shown()]
        assert names == sorted(names)
        # Filter by group: exactly the results whose most probable flaggable group it is.
        for group in ("ivory", "live_protected_animal"):
            want = sum(1 for d in lines if max(
                (g for g in d["groups"] if g != "benign"),
                key=lambda g: d["groups"][g]["probability"]) == group)
            p.page.select_option("#filter-group", group)
            shown = p.shown()
            assert len(shown) == want
            assert all(c["grp"].startswith(group + " ") for c in shown)
        p.page.select_option("#filter-group", "")
        p.page.select_option("#filter-decision", "pass")
        assert p.shown() == []
        p.page.select_option("#filter-decision", "")
        p.page.select_option("#groupby", "group")
        heads = p.page.eval_on_selector_all("#items h2.section", "h => h.map(x => x.textContent)")
        assert heads == sorted(set(heads)) and len(heads) >= 1
        assert len(p.shown()) == len(lines)
        assert p.errors == [] and p.external() == []
    finally:
        p.close()


def _export(p: Page, button: str, dest: Path) -> Path:
    with p.page.expect_download() as dl:
        p.page.click(button)
    dl.value.save_as(dest)
    return dest


def test_keyboard_decisions_persist_export_and_become_a_training_manifest(
        browser: Any, reviewed: dict[str, Any], tmp_path: Path) -> None:
    p = Page(browser, reviewed["html"])
    n = reviewed["page"].items
    try:
        p.page.select_option("#sort", "name")
        p.page.fill("#reviewer", "mod-1")
        p.page.click("h1")  # leave the text box: keys go to the page again
        # By name, the first two cards are the hostile name's two results (the same image):
        # start at the third.
        for _ in range(3):
            p.page.keyboard.press("j")
        p.page.keyboard.press("c")  # confirm, moves on
        assert p.counter() == f"1 / {n} reviewed"
        p.page.keyboard.press("x")  # reject
        assert p.counter() == f"2 / {n} reviewed"
        p.page.keyboard.press("r")  # relabel: a new label for an extended model
        p.page.keyboard.type("no_such_label")
        p.page.keyboard.press("Enter")
        assert "unknown label" in str(p.page.text_content("#relabel-error"))
        p.page.fill("#relabel-input", "rhino_horn_carved")
        p.page.keyboard.press("Enter")
        assert p.counter() == f"3 / {n} reviewed"
        p.page.keyboard.press("c")
        assert p.counter() == f"4 / {n} reviewed"
        p.page.keyboard.press("k")
        p.page.keyboard.press("u")  # undo the last one
        assert p.counter() == f"3 / {n} reviewed"
        statuses = [c["status"] for c in p.shown()]
        assert statuses[:2] == ["not reviewed"] * 2
        assert statuses[2].startswith("confirm: ") and statuses[3].startswith("reject")
        assert statuses[4] == "relabel: rhino_horn_carved [rhino_horn]"
        # Kept in the browser: a reload shows the same progress.
        p.load()
        assert p.counter() == f"3 / {n} reviewed"
        p.page.select_option("#filter-status", "done")
        assert len(p.shown()) == 3
        jsonl = _export(p, "#export-jsonl", tmp_path / "decisions.jsonl")
        csv_file = _export(p, "#export-csv", tmp_path / "decisions.csv")
        assert p.errors == [] and p.external() == []
    finally:
        p.close()
    rows = [json.loads(x) for x in jsonl.read_text().splitlines()]
    with open(csv_file, newline="", encoding="utf-8") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(rows) == len(csv_rows) == 3
    assert list(rows[0]) == list(DECISION_FIELDS) == list(csv_rows[0])
    # (the hostile name is on two results, told apart by their model name)
    by_source = {(d["source"], d["model"]): d for d in reviewed["lines"] if d.get("ok")}
    for r, c in zip(rows, csv_rows, strict=True):
        res = by_source[r["source"], r["model"]]
        assert r["image_sha256"] == res["image_sha256"] == c["image_sha256"]
        assert (r["model"], r["model_version"]) == (res["model"], res["model_version"])
        assert r["original_decision"] == res["decision"] and r["reviewer"] == "mod-1"
        assert {k: str(v) for k, v in r.items() if v is not None} == {
            k: v for k, v in c.items() if v != ""} | ({"reviewer_label": ""}
                                                     if r["reviewer_label"] == "" else {})
    assert [r["action"] for r in rows] == ["confirm", "reject", "relabel"]
    assert read_decisions(jsonl) == read_decisions(csv_file)
    # Decisions -> manifest: the reviewed files, with their sha256, labels and groups.
    out = tmp_path / "m" / "manifest.csv"
    res = manifest_from_reviews(csv_file, out, default_reject_label="everyday_object")
    m = read_manifest(out)
    assert len(m) == 3 and not res.skipped
    for row, r in zip(m, rows, strict=True):
        assert m.abs_path(row).resolve() == Path(r["path"]).resolve()
        assert row.sha256 == r["image_sha256"] and row.width > 0 and row.phash
        assert row.fine_label == (r["reviewer_label"] or "everyday_object")
    assert [row.group for row in m][2] == "rhino_horn"
    # ... which `wildvision train` accepts as its data.
    from wildvision.train.data import prepare_data
    from wildvision.train.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "training" / "recipes"
                         / "quick.yaml")
    data = prepare_data(out, recipe)
    assert sorted(data.labels) == sorted({row.fine_label for row in m})


def test_from_reviews_cli_lists_what_it_leaves_out(reviewed: dict[str, Any], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ok = [d for d in reviewed["lines"] if d.get("ok")]
    photos_root = reviewed["root"]

    def row(d: dict[str, Any], **kw: Any) -> dict[str, Any]:
        base = {"image_sha256": d["image_sha256"], "source": d["source"],
                "path": str(photos_root / d["source"]), "model": d["model"],
                "model_version": d["model_version"], "original_decision": d["decision"],
                "original_group": "ivory", "original_probability": 0.9, "action": "confirm",
                "reviewer_label": "ivory_carving", "reviewer_group": "ivory"}
        return base | kw

    changed = tmp_path / "changed.jpg"
    photo_like(50, 50, seed=3).save(changed)
    decisions = [
        row(ok[0]),
        row(ok[1], action="reject", reviewer_label="", reviewer_group="benign"),
        row(ok[2], reviewer_label="live_tiger", reviewer_group="ivory"),  # group mismatch
        row(ok[3], path=str(changed)),  # not the reviewed bytes
        row(ok[4], path=str(tmp_path / "gone.jpg")),
        row(ok[0], action="relabel", reviewer_label="ceramics", reviewer_group="benign"),
    ]
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps(d) + "\n" for d in decisions))
    out = tmp_path / "manifest.csv"
    assert main(["data", "from-reviews", str(f), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    m = read_manifest(out)
    assert [(r.fine_label, r.group) for r in m] == [("ceramics", "benign")]  # the later one
    assert "1 earlier decisions on the same image replaced" in err
    for reason in ("no reviewer label", "is in group 'live_protected_animal'", "sha256 differs",
                   "image file not found"):
        assert reason in err
    assert main(["data", "from-reviews", str(f), "-o", str(out), "--strict"]) == 1
    f.write_text(json.dumps(row(ok[0], action="approve")) + "\n")
    assert main(["data", "from-reviews", str(f), "-o", str(out)]) == 2 - 1  # DataError: 1
    assert "action must be one of" in capsys.readouterr().err
    with pytest.raises(DataError, match="no usable decision"):
        manifest_from_reviews([], tmp_path / "x.csv")


def test_review_cli_and_bad_inputs(reviewed: dict[str, Any], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "page.html"
    assert main(["review", str(reviewed["results"]), "-o", str(out), "--root",
                 str(reviewed["root"]), "--no-heatmaps"]) == 0
    assert "0 with heatmaps" in capsys.readouterr().err
    assert out.is_file()
    assert main(["review", str(reviewed["results"]), "-o", str(out), "--decisions",
                 "maybe"]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert main(["review", str(bad), "-o", str(out)]) == 1
    assert "bad.jsonl:1" in capsys.readouterr().err
    # Images missing from --root: still a page, the cards say why.
    assert main(["review", str(reviewed["results"]), "-o", str(out), "--root",
                 str(tmp_path)]) == 0
    assert "image not found" in capsys.readouterr().err


def test_a_2000_item_page_loads(browser: Any, tmp_path: Path,
                               record_property: Any) -> None:
    img = tmp_path / "p.jpg"
    photo_like(96, 72, seed=1).save(img, quality=80)
    import hashlib

    sha = hashlib.sha256(img.read_bytes()).hexdigest()
    groups = ("ivory", "live_protected_animal")
    lines = []
    for i in range(2000):
        g = groups[i % 2]
        p = 0.5 + (i % 500) / 1000
        lines.append({"source": str(img), "ok": True, "decision": ("flag", "review")[i % 3 == 0],
                      "groups": {g: {"probability": p}, "benign": {"probability": 1 - p}},
                      "top_labels": [{"label": "ivory_carving", "group": "ivory",
                                      "probability": p}],
                      "model": "wildvision-base", "model_version": "x", "image_sha256": sha})
    results = tmp_path / "big.jsonl"
    results.write_text("".join(json.dumps(x) + "\n" for x in lines))
    t0 = time.perf_counter()
    page = build_review_page(results, tmp_path / "big.html", thumb_size=64, workers=2)
    build_s = time.perf_counter() - t0
    p = Page(browser, page.path)
    try:
        load_s = p.load()
        assert len(p.shown()) == 2000
        t1 = time.perf_counter()
        p.page.select_option("#filter-group", "ivory")
        filter_s = time.perf_counter() - t1
        assert len(p.shown()) == 1000
        t2 = time.perf_counter()
        p.page.keyboard.press("j")
        p.page.keyboard.press("c")
        assert p.counter() == "1 / 2000 reviewed"
        key_s = time.perf_counter() - t2
        assert p.errors == [] and p.external() == []
    finally:
        p.close()
    msg = (f"2000-item review page: {page.bytes / 1e6:.1f} MB built in {build_s:.1f} s; "
           f"browser load {load_s:.2f} s, filter {filter_s:.2f} s, keyboard decision "
           f"{key_s:.2f} s")
    record_property("review_2000", msg)
    print(msg, file=sys.stderr)
