"""The ``wildvision`` command line: classify (jsonl/csv/table, exit codes, --resume), models
list/show, --version; called as ``main([...])`` and once through the installed console script."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wildvision import __version__
from wildvision.cli import CSV_FIELDS, collect_inputs, main
from wildvision.modelpack import load_package
from wildvision.registry import load_model

from conftest import ZooItem, mixed_inputs


@pytest.fixture(scope="module")
def inputs_100(image_zoo: dict[str, ZooItem], photo_files: list[Path],
               tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict[int, str]]:
    return mixed_inputs(image_zoo, photo_files, tmp_path_factory.mktemp("cli"))


def _jsonl(path: Path) -> list[dict[str, object]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _check_100(records: list[dict[str, object]], inputs: list[str],
               expected_bad: dict[int, str]) -> None:
    assert [r["source"] for r in records] == inputs
    for i, r in enumerate(records):
        if i in expected_bad:
            assert r["ok"] in (False, "False"), r
            assert r["error_type"] == expected_bad[i], r
            assert str(r["source"]) in str(r["message"])
        else:
            assert r["ok"] in (True, "True"), r
            assert r["decision"] in ("flag", "review", "pass")


def test_classify_jsonl_100_inputs_10_bad(tiny_model_dir: Path, tmp_path: Path,
                                          inputs_100: tuple[list[str], dict[int, str]],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    inputs, bad = inputs_100
    out = tmp_path / "out.jsonl"
    code = main(["classify", *inputs, "--model", str(tiny_model_dir), "-o", str(out),
                 "-b", "16", "--threads", "1"])
    assert code == 1
    records = _jsonl(out)
    assert len(records) == 100
    _check_100(records, inputs, bad)
    assert "10 input(s) failed" in capsys.readouterr().err


def test_classify_csv_100_inputs_10_bad(tiny_model_dir: Path, tmp_path: Path,
                                        inputs_100: tuple[list[str], dict[int, str]]) -> None:
    inputs, bad = inputs_100
    out = tmp_path / "out.csv"
    code = main(["classify", *inputs, "-m", str(tiny_model_dir), "-f", "csv", "-o", str(out)])
    assert code == 1
    with open(out, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == CSV_FIELDS
        rows = list(reader)
    assert len(rows) == 100
    _check_100(rows, inputs, bad)  # type: ignore[arg-type]
    good = rows[0]
    probs = json.loads(good["group_probabilities"])
    assert abs(sum(probs.values()) - 1) < 1e-4
    assert good["model"] == "tiny-test" and len(good["image_sha256"]) == 64


def test_console_script_subprocess(tiny_model_dir: Path,
                                   inputs_100: tuple[list[str], dict[int, str]]) -> None:
    script = Path(sys.executable).parent / "wildvision"
    if not script.exists():
        found = shutil.which("wildvision")
        assert found, "the wildvision console script is not installed (pip install -e .)"
        script = Path(found)
    inputs, bad = inputs_100
    proc = subprocess.run([str(script), "classify", *inputs, "--model", str(tiny_model_dir)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]  # results on stdout
    assert len(records) == 100
    _check_100(records, inputs, bad)
    assert "failed" in proc.stderr  # logs on stderr
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                             timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"wildvision {__version__}"


def test_exit_0_when_all_ok_and_table_format(tiny_model_dir: Path, photo_files: list[Path],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(p) for p in photo_files[:5]]
    assert main(["classify", *files, "-m", str(tiny_model_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["source"] for line in lines] == files
    assert main(["classify", *files, "-m", str(tiny_model_dir), "-f", "table"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("decision") and len(table) == 6
    assert all(line.endswith(f) for line, f in zip(table[1:], files, strict=True))


def test_threshold_option(tiny_model_dir: Path, photo_files: list[Path],
                          capsys: pytest.CaptureFixture[str]) -> None:
    # the ivory probability of this photo, then thresholds below it (read from the model's
    # output: the tiny model's probabilities differ between images)
    assert main(["classify", str(photo_files[0]), "-m", str(tiny_model_dir)]) == 0
    prob = json.loads(capsys.readouterr().out)["groups"]["ivory"]["probability"]
    assert 0 < prob < 0.5
    flag, review = float(f"{prob * 0.9:.3g}"), float(f"{prob * 0.5:.3g}")
    assert main(["classify", str(photo_files[0]), "-m", str(tiny_model_dir),
                 "--threshold", f"ivory={flag}:{review}", "--threshold", "pangolin=0.99"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["groups"]["ivory"]["flag_threshold"] == flag
    assert rec["groups"]["ivory"]["review_threshold"] == review
    assert rec["groups"]["ivory"]["decision"] == "flag"  # the card's flag threshold is 0.5
    assert rec["groups"]["ivory"]["probability"] == prob
    assert rec["groups"]["pangolin"]["flag_threshold"] == 0.99
    assert "ivory" in rec["flagged_groups"] and rec["decision"] == "flag"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["classify"], "no inputs"),
        (["classify", "x.jpg", "--threshold", "ivory"], "GROUP=FLAG"),
        (["classify", "x.jpg", "--threshold", "dragons=0.5"], "unknown group 'dragons'"),
        (["classify", "x.jpg", "--threshold", "ivory=0.2:0.9"], "review <= flag"),
        (["classify", "x.jpg", "--resume"], "--resume needs --output"),
        (["classify", "x.jpg", "-b", "0"], "--batch-size"),
        (["classify", "x.jpg", "--top-k", "0"], "--top-k must be >= 1"),
        (["classify", "x.jpg", "-t", "0"], "--threads must be >= 1"),
        (["classify", "x.jpg", "--no-such-flag"], "unrecognized arguments"),
        (["classify", "x.jpg", "--format", "xml"], "invalid choice"),
        (["models"], "needs an action"),
        ([], "usage"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], message: str, tiny_model_dir: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    if argv[:1] == ["classify"]:
        argv = [*argv, "-m", str(tiny_model_dir)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""


def test_resume_table_format_is_a_usage_error(tiny_model_dir: Path, tmp_path: Path,
                                              photo_files: list[Path]) -> None:
    out = tmp_path / "out.txt"
    assert main(["classify", str(photo_files[0]), "-m", str(tiny_model_dir), "-f", "table",
                 "-o", str(out), "--resume"]) == 2


def test_failures_that_are_not_usage_errors_exit_1(tmp_path: Path, photo_files: list[Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classify", str(photo_files[0]), "-m", "no-such-model"]) == 1
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    assert main(["classify", str(photo_files[0]), "-m", str(tmp_path)]) == 1
    assert "no card.json" in capsys.readouterr().err
    assert main(["classify", "--files-from", str(tmp_path / "missing.txt")]) == 1
    assert "missing.txt" in capsys.readouterr().err


def test_bad_model_does_not_clobber_the_output(tmp_path: Path, photo_files: list[Path]) -> None:
    out = tmp_path / "results.jsonl"
    out.write_text('{"source": "earlier"}\n')
    assert main(["classify", str(photo_files[0]), "-m", "no-such-model", "-o", str(out)]) == 1
    assert out.read_text() == '{"source": "earlier"}\n'


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_resume_after_an_interrupted_run(fmt: str, tiny_model_dir: Path, tmp_path: Path,
                                         inputs_100: tuple[list[str], dict[int, str]],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    inputs, bad = inputs_100
    inputs = inputs[:40]
    out = tmp_path / f"out.{fmt}"
    base = ["classify", "-m", str(tiny_model_dir), "-f", fmt, "-o", str(out)]
    # An interrupted run: the first 25 results, the last of them cut in the middle of its line.
    assert main([*base, *inputs[:25]]) == 1
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = lines[: len(lines) - 1]
    out.write_text("".join(kept) + lines[-1][: len(lines[-1]) // 2], encoding="utf-8")
    capsys.readouterr()
    assert main([*base, "--resume", *inputs]) == 1  # earlier and new failures both count
    err = capsys.readouterr().err
    assert "resume: 24 of 40 inputs already done" in err
    if fmt == "jsonl":
        records = _jsonl(out)
    else:
        with open(out, newline="", encoding="utf-8") as f:
            records = list(csv.DictReader(f))  # type: ignore[arg-type]
    assert sorted(str(r["source"]) for r in records) == sorted(inputs)  # each exactly once
    assert [r["source"] for r in records] == inputs  # and here even in order
    _check_100(records, inputs, {i: e for i, e in bad.items() if i < 40})
    # resuming a finished run does nothing and keeps the file as it is
    before = out.read_bytes()
    assert main([*base, "--resume", *inputs]) == 1
    assert "resume: 40 of 40 inputs already done" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_resume_exit_0_when_nothing_failed(tiny_model_dir: Path, tmp_path: Path,
                                           photo_files: list[Path]) -> None:
    files = [str(p) for p in photo_files[:4]]
    out = tmp_path / "out.jsonl"
    base = ["classify", "-m", str(tiny_model_dir), "-o", str(out), "--resume"]
    assert main([*base, *files[:2]]) == 0
    assert main([*base, *files]) == 0
    assert [r["source"] for r in _jsonl(out)] == files


def test_files_from_and_folders(tiny_model_dir: Path, tmp_path: Path, photo_files: list[Path],
                                monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    for i, p in enumerate(photo_files[:3]):
        shutil.copy(p, folder / f"b{i}{p.suffix}")
    shutil.copy(photo_files[3], folder / "sub" / f"a{photo_files[3].suffix}")
    shutil.copy(photo_files[4], folder / ".hidden" / f"c{photo_files[4].suffix}")
    (folder / "notes.txt").write_text("not an image")
    flat = collect_inputs([str(folder)])
    assert [Path(p).name for p in flat] == sorted(Path(p).name for p in flat)
    assert len(flat) == 3
    deep = collect_inputs([str(folder)], recursive=True)
    assert len(deep) == 4 and not any(".hidden" in p for p in deep)
    assert collect_inputs(["missing.jpg"]) == ["missing.jpg"]  # kept: it gets a Failure

    listing = tmp_path / "list.txt"
    listing.write_text(f"{photo_files[5]}\n\n{photo_files[6]}\n")
    assert main(["classify", "-m", str(tiny_model_dir), "--files-from", str(listing),
                 "-r", str(folder)]) == 0
    sources = [json.loads(line)["source"] for line in capsys.readouterr().out.splitlines()]
    assert sources == [*deep, str(photo_files[5]), str(photo_files[6])]
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{photo_files[7]}\n"))
    assert main(["classify", "-m", str(tiny_model_dir), "--files-from", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == str(photo_files[7])


def test_models_list_and_show(tiny_model_dir: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "models"
    shutil.copytree(tiny_model_dir, root / "tiny-copy")
    monkeypatch.setenv("WILDVISION_MODELS_PATH", str(root))
    monkeypatch.setenv("WILDVISION_DEFAULT_MODEL", "tiny-copy")
    assert main(["models", "list"]) == 0
    listed = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    row = next(r for r in listed if r[0].startswith("tiny-copy"))
    assert row[0] == "tiny-copy (default)" and row[1] == "0.0.1"
    assert row[2].split(",")[0] == "ivory" and row[3] == str(root / "tiny-copy")

    assert main(["models", "show", str(tiny_model_dir), "--full"]) == 0
    shown = capsys.readouterr().out
    assert shown.strip() == (tiny_model_dir / "README.md").read_text(encoding="utf-8").strip()
    assert shown.startswith("# tiny-test 0.0.1")
    assert main(["models", "show", "tiny-copy", "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card == load_package(tiny_model_dir).card.to_dict()
    assert main(["models", "show", "no-such-model"]) == 1
    assert "tiny-copy" in capsys.readouterr().err  # the names it knows


def test_models_show_prints_a_summary_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    """The default model's full card is over a thousand lines; ``show`` prints a screenful
    drawn from card.json, and says how to get the rest."""
    pkg = load_model("wildvision-base")
    card = pkg.card
    assert main(["models", "show", "wildvision-base"]) == 0
    shown = capsys.readouterr().out
    lines = shown.splitlines()
    assert len(lines) < 40
    assert lines[0] == f"{card.name} {card.version}"
    flag = card.thresholds["ivory"].flag
    assert f"ivory flag {flag:.3f}" in shown
    head = card.metrics["reference_test"]["headline"]["macro_f1_group"]
    assert f"macro_f1_group: {head['value']:.4f}" in shown
    onnx_mb = (pkg.path / "model.onnx").stat().st_size / 1e6
    assert f"model.onnx ({onnx_mb:.1f} MB)" in shown
    assert "wildvision models show wildvision-base --full" in lines[-1]
    assert main(["models", "show", "wildvision-base", "--full", "--json"]) == 2


def test_models_show_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    """``wildvision models show NAME --full | head``: the reader closes the pipe early; the
    command stops without an error message (it printed ``[Errno 32] Broken pipe``)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from wildvision.cli import main; "
         "sys.exit(main(sys.argv[1:]))", "models", "show", "wildvision-base", "--full"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `head` exiting before the card is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert err == ""


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"wildvision {__version__}"
    assert main(["--help"]) == 0
    assert "classify" in capsys.readouterr().out


@pytest.mark.realdata
def test_csv_carries_the_open_set_gate_and_it_can_be_switched_off(
        shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photo = sorted((shared_data / "met_ivory").rglob("*.jpg"))[0]
    assert main(["classify", str(photo), "--format", "csv"]) == 0
    row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert -1.0 <= float(row["familiarity"]) <= 1.0 and row["unfamiliar"] in ("True", "False")
    assert main(["classify", str(photo), "--format", "csv", "--no-open-set"]) == 0
    row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert row["familiarity"] == "" and row["unfamiliar"] == ""


def test_models_list_shows_broken_packages_as_broken(
        tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A package with an unreadable card made ``models list`` crash (UnicodeDecodeError,
    RecursionError) instead of listing it as broken."""
    root = tmp_path / "models"
    shutil.copytree(tiny_model_dir, root / "good")
    for name, raw in (("latin1", b'{"name": "caf\xe9"}'), ("deep", b"[" * 200_000)):
        (root / name).mkdir()
        (root / name / "card.json").write_bytes(raw)
    shutil.copytree(tiny_model_dir, tmp_path / "direct")  # the path names a package itself
    monkeypatch.setenv("WILDVISION_MODELS_PATH", f"{root}{os.pathsep}{tmp_path / 'direct'}")
    assert main(["models", "list"]) == 0
    rows = {line.split("\t")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert rows["good"].split("\t")[1] == "0.0.1"
    assert rows["direct"].split("\t")[1] == "0.0.1"
    for name in ("latin1", "deep"):
        assert "BROKEN" in rows[name] and "unreadable card" in rows[name]


def test_resume_refuses_a_file_that_is_not_its_format(
        tiny_model_dir: Path, tmp_path: Path, photo_files: list[Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    """Resuming a CSV results file without -f csv dropped every row and rewrote the file as
    JSONL; -o notes.txt --resume overwrote the notes. Both are refused, the files untouched."""
    files = [str(p) for p in photo_files[:3]]
    out = tmp_path / "results.csv"
    assert main(["classify", "-m", str(tiny_model_dir), "-f", "csv", "-o", str(out),
                 *files[:2]]) == 0
    before = out.read_bytes()
    assert main(["classify", "-m", str(tiny_model_dir), "-o", str(out), "--resume",
                 *files]) == 2
    assert "not a wildvision jsonl results file" in capsys.readouterr().err
    assert out.read_bytes() == before
    notes = tmp_path / "notes.txt"
    notes.write_text("call the buyer back\nprice: 300\n", encoding="utf-8")
    for fmt in ("jsonl", "csv"):
        assert main(["classify", "-m", str(tiny_model_dir), "-f", fmt, "-o", str(notes),
                     "--resume", *files]) == 2
        assert notes.read_text(encoding="utf-8") == "call the buyer back\nprice: 300\n"
    # A JSON line that is not a result record is not one either.
    other = tmp_path / "other.jsonl"
    other.write_text('{"source": "a.jpg", "ok": true}\n{"name": "x"}\n', encoding="utf-8")
    assert main(["classify", "-m", str(tiny_model_dir), "-o", str(other), "--resume",
                 *files]) == 2
    assert "line 2" in capsys.readouterr().err


def test_output_is_never_overwritten_without_force(
        tiny_model_dir: Path, tmp_path: Path, photo_files: list[Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(p) for p in photo_files[:2]]
    out = tmp_path / "report.jsonl"
    out.write_text("my earlier work\n", encoding="utf-8")
    base = ["classify", "-m", str(tiny_model_dir), "-o", str(out), *files]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--force" in err
    assert out.read_text(encoding="utf-8") == "my earlier work\n"
    assert main([*base, "--force"]) == 0
    assert [r["source"] for r in _jsonl(out)] == files
    empty = tmp_path / "empty.jsonl"
    empty.touch()  # an empty file (mktemp) holds nothing to lose
    assert main(["classify", "-m", str(tiny_model_dir), "-o", str(empty), *files]) == 0
    assert len(_jsonl(empty)) == 2


def test_csv_cells_cannot_be_spreadsheet_formulas(
        tiny_model_dir: Path, tmp_path: Path, photo_files: list[Path],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """File names and messages starting with = + - @ were written as is into CSV results that
    moderators open in spreadsheets (OWASP CSV injection)."""
    names = ['=HYPERLINK("x.example","y").png', "+1.png", "-2+3.png", "@SUM(A1).png",
             "'quoted.png", "plain.png"]
    for i, name in enumerate(names):
        shutil.copy(photo_files[i], tmp_path / name)
    monkeypatch.chdir(tmp_path)  # relative names: the source cells start with them
    inputs = [*names, "=missing.jpg"]
    base = ["classify", "-m", str(tiny_model_dir), "-f", "csv", "-o", "results.csv"]
    assert main([*base, "--", *inputs]) == 1
    with open("results.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    for row in rows[1:]:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (cell, row)
    sources = [row[0] for row in rows[1:]]
    assert sources == ["'" + n if n != "plain.png" else n for n in inputs]
    assert rows[-1][-1].startswith("'=missing.jpg: ")  # the failure message
    # --resume reads the escaped names back: nothing is redone.
    capsys.readouterr()
    assert main([*base, "--resume", "--", *inputs]) == 1
    assert "resume: 7 of 7 inputs already done" in capsys.readouterr().err
