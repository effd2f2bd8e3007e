"""The ``wildvision`` command line.

Subcommands: ``classify``, ``models list|show`` (core); ``data``, ``train``, ``bench``,
``serve``, ``export``, ``extend`` come from subpackages (behind extras where they need
them). Each of those registers its arguments from a light ``_cli`` module and imports its
heavy dependencies only when run.

Exit status: 0 success, 1 some inputs failed (or a command failed), 2 usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from ._version import __version__
from .errors import ConfigError, WildvisionError
from .imaging import IMAGE_EXTENSIONS, collect_inputs
from .options import ClassifierOptions, add_classifier_arguments
from .progress import Progress

__all__ = ["IMAGE_EXTENSIONS", "collect_inputs", "main"]

# Subcommands living in subpackages: name -> module exposing register(subparsers).
_PLUGINS = {
    "data": "wildvision.data._cli",
    "train": "wildvision.train._cli",
    "bench": "wildvision.bench._cli",
    "serve": "wildvision.serve._cli",
    "export": "wildvision.export._cli",
    "calibrate": "wildvision.calibrate._cli",
    "match": "wildvision.match._cli",
    "extend": "wildvision.extend._cli",
    "review": "wildvision.review._cli",
}
CSV_FIELDS = (
    "source", "ok", "decision", "flagged_groups", "top_group", "top_label",
    "top_label_probability", "group_probabilities", "familiarity", "unfamiliar", "model",
    "model_version", "image_sha256", "width", "height", "error_type", "message",
)
# added after CSV_FIELDS with --match-index: the best match (JSON lines list every match)
MATCH_CSV_FIELDS = (
    "known_image", "match_count", "match_reference", "match_label", "match_group",
    "match_similarity", "match_hash_distance", "match_by",
)


# A spreadsheet runs a cell starting with one of these as a formula (OWASP CSV injection):
# such text cells get a leading apostrophe, as do cells already starting with one, so that
# reading a cell back is unambiguous (_csv_unescape).
_CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def _csv_escape(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_CSV_FORMULA_START):
        return "'" + value
    return value


def _csv_unescape(value: str) -> str:
    return value[1:] if value.startswith("'") else value


def _csv_fields(matches: bool) -> list[str]:
    return [*CSV_FIELDS, *(MATCH_CSV_FIELDS if matches else ())]


def _row_csv(result: Any, fields: Sequence[str] = CSV_FIELDS) -> dict[str, Any]:
    row = result.to_row()
    out = {k: row.get(k) for k in fields}
    if row["flagged_groups"] is not None:
        out["flagged_groups"] = ";".join(row["flagged_groups"])
    return {k: _csv_escape(v) for k, v in out.items()}


class _Writer:
    def __init__(self, fmt: str, stream: TextIO, append: bool, matches: bool = False) -> None:
        self.fmt, self.stream = fmt, stream
        self._csv: csv.DictWriter[str] | None = None
        self._fields = _csv_fields(matches)
        if fmt == "csv":
            self._csv = csv.DictWriter(stream, fieldnames=self._fields)
            if not append:
                self._csv.writeheader()
        elif fmt == "table":
            stream.write(
                f"{'decision':<8} {'top group':<22} {'prob':>6}  {'top label':<22} source\n"
            )

    def write(self, result: Any) -> None:
        if self._csv is not None:
            self._csv.writerow(_row_csv(result, self._fields))
            self.stream.flush()
            return
        d = result.to_dict()
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(d) + "\n")
        elif d.get("ok"):
            top = d["top_labels"][0]
            prob = d["groups"][d["top_group"]]["probability"]
            self.stream.write(
                f"{d['decision']:<8} {d['top_group']:<22} {prob:>6.3f}  {top['label']:<22} "
                f"{d['source']}\n"
            )
        else:
            self.stream.write(f"{'FAILED':<8} {d['error_type']:<22} {'':>6}  {'':<22} "
                              f"{d['source']}: {d['message']}\n")
        self.stream.flush()


def _load_done(path: Path, fmt: str, matches: bool = False) -> dict[str, bool]:
    """Inputs already in an earlier output file (for ``--resume``) -> whether they succeeded.

    The file must hold results in ``fmt``, every complete line of it: anything else (a CSV
    resumed as jsonl, someone's notes) is refused, never rewritten. Only a cut last line (no
    newline: an interrupted run) is removed, so that its input is redone and the appended
    results start on a clean line. Every input then appears in the final file exactly once.

    Raises:
        ConfigError: the file is not a wildvision ``fmt`` results file.
    """
    if fmt not in ("jsonl", "csv"):
        raise ConfigError("--resume needs --format jsonl or csv")
    if not path.is_file():
        return {}
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]  # drop a last line without its newline
    try:
        text = complete.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"--resume: {path} is not a UTF-8 {fmt} file ({e})") from e
    not_results = (f"--resume: {path} is not a wildvision {fmt} results file "
                   "(refusing to change it; check -o and -f)")
    done: dict[str, bool] = {}
    if fmt == "jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            try:
                record = json.loads(line)
                source, ok = record["source"], record["ok"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ConfigError(f"{not_results}: line {n} is not a result record") from None
            if not isinstance(source, str) or not isinstance(ok, bool):
                raise ConfigError(f"{not_results}: line {n} is not a result record")
            done[source] = ok
    elif text:
        if text.split("\n", 1)[0].strip().split(",") != _csv_fields(matches):
            raise ConfigError(f"{not_results}: the header differs (match columns are "
                              "written with --match-index only)")
        try:
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error as e:
            raise ConfigError(f"{not_results} ({e})") from e
        for n, r in enumerate(rows, 2):
            if None in r.values() or None in r or not r.get("source"):
                raise ConfigError(f"{not_results}: row {n} has missing or extra fields")
            done[_csv_unescape(r["source"])] = r["ok"] == "True"
    if complete != data:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(complete)
        os.replace(tmp, path)  # never half-written
    return done


def _cmd_classify(args: argparse.Namespace) -> int:
    if args.explain and args.engine == "ray":
        raise ConfigError("--explain is not supported with --engine ray")
    if args.engine == "ray":
        if args.match_index:
            raise ConfigError("--match-index is not supported with --engine ray")
        mod = importlib.import_module("wildvision.scale._cli")
        return int(mod.run_classify(args))
    from .predict import Classifier

    options = ClassifierOptions.from_args(args)
    paths = list(args.paths)
    if args.files_from:
        if args.files_from == "-":
            paths += [line.strip() for line in sys.stdin if line.strip()]
        else:
            with open(args.files_from, encoding="utf-8") as src:
                paths += [line.strip() for line in src if line.strip()]
    if not paths:
        raise ConfigError("no inputs: give image files or folders (or --files-from)")
    inputs = collect_inputs(paths, args.recursive)
    if args.explain and args.format != "jsonl":
        raise ConfigError("--explain writes heatmaps into --format jsonl only")
    # Load the model before touching the output file: a bad model or option leaves it intact.
    clf = Classifier(args.model, options.replace(
        match_index=(importlib.import_module("wildvision.match").load_index(args.match_index)
                     if args.match_index else None)))
    append = False
    failed = 0
    if args.resume:
        if not args.output or args.output == "-":
            raise ConfigError("--resume needs --output FILE")
        done = _load_done(Path(args.output), args.format, bool(args.match_index))
        before = len(inputs)
        failed = sum(1 for p in set(inputs) if done.get(p) is False)  # failed earlier
        inputs = [p for p in inputs if p not in done]
        append = bool(done)
        print(f"resume: {before - len(inputs)} of {before} inputs already done", file=sys.stderr)
    elif args.output and args.output != "-" and not args.force:
        existing = Path(args.output)
        if existing.is_file() and existing.stat().st_size > 0:
            raise ConfigError(f"--output {existing} exists; --resume adds to it, --force "
                              "overwrites it")
    total = len(inputs)
    show = args.progress if args.progress is not None else (sys.stderr.isatty() and total > 50)
    progress = Progress(total, show)
    with contextlib.ExitStack() as stack:
        out: TextIO = sys.stdout
        if args.output and args.output != "-":
            out = stack.enter_context(
                open(args.output, "a" if append else "w", encoding="utf-8", newline="")
            )
        stack.callback(progress.close)
        writer = _Writer(args.format, out, append, bool(args.match_index))
        for r in clf.iter_classify(inputs):
            writer.write(r)
            progress.update(r.ok)
            failed += 0 if r.ok else 1
    if failed:
        print(f"{failed} input(s) failed (see their error_type/message)", file=sys.stderr)
    return 1 if failed else 0


def _cmd_models_list(args: argparse.Namespace) -> int:
    from .modelpack import load_package
    from .registry import default_model_name, installed_models

    models = installed_models()
    if not models:
        print("no models installed", file=sys.stderr)
        return 0
    default = default_model_name()
    for name, path in models.items():
        try:
            card = load_package(path, verify=False).card
            mark = " (default)" if name == default else ""
            print(f"{name}{mark}\t{card.version}\t{','.join(card.groups)}\t{path}")
        except WildvisionError as e:
            print(f"{name}\tBROKEN: {e}")
    return 0


def _cmd_models_show(args: argparse.Namespace) -> int:
    from .registry import load_model

    pkg = load_model(args.name)
    if args.json:
        print(json.dumps(pkg.card.to_dict(), indent=2))
    elif args.full:
        readme = pkg.path / "README.md"
        if readme.is_file():
            print(readme.read_text(encoding="utf-8"))
        else:
            from .modelcard_md import render_card

            print(render_card(pkg.card))
    else:
        from .modelcard_md import render_summary

        print(render_summary(pkg.card, pkg.path))
        print(f"the whole card: wildvision models show {args.name} --full (Markdown) or --json")
    return 0


def _cmd_models_push(args: argparse.Namespace) -> int:
    from .registry import push_to_hub

    url = push_to_hub(args.folder, args.repo, private=args.private, message=args.message)
    print(url)
    return 0


def _cmd_models_pull(args: argparse.Namespace) -> int:
    from .registry import pull_from_hub

    pkg = pull_from_hub(args.repo, args.to)
    print(pkg.path)
    print(f"{pkg.card.name} {pkg.card.version}: verified", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wildvision",
        description="Find wildlife-trafficking products and live protected animals in photos.",
    )
    parser.add_argument("--version", action="version", version=f"wildvision {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("classify", help="classify image files or folders",
                       description="Classify images; one result line per input, in order.")
    c.add_argument("paths", nargs="*", metavar="PATH", help="image files or folders")
    c.add_argument("--files-from", metavar="FILE",
                   help="read more input paths from FILE, one per line (- = stdin)")
    c.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders")
    c.add_argument("-m", "--model", default=None,
                   help="model name, package folder or hf://org/name (default: wildvision-base)")
    c.add_argument("-f", "--format", choices=("jsonl", "csv", "table"), default="jsonl")
    c.add_argument("-o", "--output", default=None, help="output file (default: stdout)")
    c.add_argument("--resume", action="store_true",
                   help="skip inputs already in --output and append the rest")
    c.add_argument("--force", action="store_true",
                   help="overwrite an existing --output file (refused otherwise)")
    add_classifier_arguments(c)
    c.add_argument("--explain", action="store_true",
                   help="add a heatmap of where the model saw the most probable flaggable "
                   "group to each result (jsonl; shown by `wildvision review`)")
    c.add_argument("--match-index", default=None, metavar="FILE",
                   help="known-photo index (wildvision match build; or a PDQ hash list): "
                   "results list their matches, and a photo with one is flagged ([match] extra)")
    c.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="ray: score with Ray Data ([scale] extra), output must be .parquet")
    c.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress line on stderr (default: on a terminal, for > 50 inputs)")
    c.set_defaults(func=_cmd_classify)

    m = sub.add_parser("models", help="list installed models or show a model card")
    msub = m.add_subparsers(dest="models_command", metavar="ACTION")
    ml = msub.add_parser("list", help="list installed models")
    ml.set_defaults(func=_cmd_models_list)
    ms = msub.add_parser("show", help="print a summary of a model's card")
    ms.add_argument("name", help="model name, folder or hf://org/name")
    how = ms.add_mutually_exclusive_group()
    how.add_argument("--full", action="store_true", help="print the whole card (README.md)")
    how.add_argument("--json", action="store_true", help="print card.json")
    ms.set_defaults(func=_cmd_models_show)
    mpush = msub.add_parser(
        "push", help="upload a model package to the Hugging Face Hub ([hub] extra)",
        description="Verify a package and upload its files (card.json, README.md and the "
        "files the card lists, nothing else) to hf://org/name[@branch].")
    mpush.add_argument("folder", help="the model package folder")
    mpush.add_argument("repo", metavar="hf://org/name", help="the Hub repository")
    mpush.add_argument("--private", action="store_true", help="create the repository private")
    mpush.add_argument("--message", default=None, help="commit message (default: name version)")
    mpush.set_defaults(func=_cmd_models_push)
    mpull = msub.add_parser(
        "pull", help="download a model package from the Hugging Face Hub and verify it",
        description="Download hf://org/name[@revision] into the Hugging Face cache, verify "
        "it, print its folder; --to copies it into a new folder.")
    mpull.add_argument("repo", metavar="hf://org/name", help="the Hub repository")
    mpull.add_argument("--to", metavar="DIR", default=None,
                       help="copy the verified package into DIR (must not exist)")
    mpull.set_defaults(func=_cmd_models_pull)

    for _name, modname in _PLUGINS.items():
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue  # subpackage not present in this install
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        0 success; 1 some inputs failed, or a command failed; 2 usage error; 130 interrupted.

    Example:
        >>> main(["classify", "photos/", "--format", "csv", "-o", "out.csv"])  # doctest: +SKIP
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help/--version (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if not getattr(args, "func", None):
        if args.command == "models":
            print("wildvision models: error: needs an action: list, show NAME, push "
                  "FOLDER hf://org/name, or pull hf://org/name",
                  file=sys.stderr)
        elif args.command == "match":
            print("wildvision match: error: needs an action: build, add, remove, merge, "
                  "export, import or show (wildvision match --help)", file=sys.stderr)
        else:
            parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # The reader closed stdout (`| head`): stop quietly, as other command-line tools do.
        # Point stdout at /dev/null so that the interpreter's final flush does not fail too.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, the status a shell reports for such a command
    except ConfigError as e:
        if args.debug:
            raise
        print(f"wildvision: error: {e}", file=sys.stderr)
        return 2
    except (WildvisionError, OSError) as e:
        if args.debug:
            raise
        print(f"wildvision: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
