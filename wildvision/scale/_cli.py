"""``wildvision classify --engine ray``: the classify command on Ray Data (``[scale]`` extra).

Stdlib-only at import time; Ray and pyarrow are imported when the command runs.
Environment: ``RAY_ADDRESS`` (an existing cluster; default: start a local Ray), and
``WILDVISION_RAY_ACTORS`` (number of model actors; default: cluster CPUs / CPUs per actor).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

__all__ = ["run_classify"]

ACTORS_ENV = "WILDVISION_RAY_ACTORS"


def _open_writer(output: str, schema: Any) -> tuple[Any, str | None]:
    """A ParquetWriter on ``output`` (local path or URI); local files go through a temporary
    name renamed on success, so that an interrupted run leaves no half-written OUT.parquet."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from ._ray import _is_uri

    if _is_uri(output) and not output.startswith("file://"):
        fs, path = pafs.FileSystem.from_uri(output)
        return pq.ParquetWriter(path, schema, filesystem=fs), None
    local = output.removeprefix("file://")
    tmp = f"{local}.part-{os.getpid()}"
    return pq.ParquetWriter(tmp, schema), tmp


def run_classify(args: argparse.Namespace) -> int:
    """Run ``wildvision classify --engine ray``; returns the exit status (1 if any input
    failed). Output: one Parquet file, one row per input (see
    :func:`wildvision.scale.result_schema`), in completion order."""
    from ..errors import ConfigError, MissingExtraError
    from ..options import ClassifierOptions
    from ..progress import Progress

    out = args.output
    if not out or out == "-" or not out.endswith(".parquet"):
        raise ConfigError("--engine ray writes Parquet: give --output OUT.parquet")
    if getattr(args, "resume", False):
        raise ConfigError("--resume is not supported with --engine ray")
    if getattr(args, "format", "jsonl") not in ("jsonl", None):
        print("wildvision: note: --format is ignored with --engine ray (Parquet output)",
              file=sys.stderr)
    if not args.paths and not args.files_from:
        raise ConfigError("no inputs: give image files or folders (or --files-from)")
    try:
        import pyarrow.compute as pc
        import ray
        import ray.data
    except ImportError as e:
        raise MissingExtraError("ray[data] and pyarrow", "scale", "--engine ray") from e
    from ._ray import classify_dataset, expand_inputs, result_schema

    options = ClassifierOptions.from_args(args)
    threads = options.threads or 1
    options = options.replace(threads=threads, decode_workers=options.decode_workers or 1)
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                 logging_level=logging.WARNING)
    actors = os.environ.get(ACTORS_ENV)
    try:
        concurrency = (int(actors) if actors else
                       max(1, int(ray.cluster_resources().get(  # type: ignore[no-untyped-call]
                           "CPU", 1) // threads)))
    except ValueError:
        raise ConfigError(f"${ACTORS_ENV} must be an integer, got {actors!r}") from None

    path_ds: Any = None
    if args.paths:
        paths = expand_inputs(args.paths, args.recursive)
        if paths:
            path_ds = ray.data.from_items([{"path": p} for p in paths],
                                          override_num_blocks=max(1, min(
                                              len(paths) // options.batch_size + 1, 10_000)))
    if args.files_from:
        if args.files_from == "-":
            lines = [line.strip() for line in sys.stdin if line.strip()]
            listed: Any = ray.data.from_items([{"path": p} for p in lines]) if lines else None
        else:
            # Read by Ray, not into this process: the list may hold hundreds of millions.
            # num_cpus=0: reading a text file is light, and the model actors may hold every CPU.
            listed = ray.data.read_text(os.path.abspath(args.files_from), num_cpus=0
                                        ).map_batches(_text_to_path, batch_format="pyarrow",
                                                      num_cpus=0)
        if listed is not None:
            path_ds = listed if path_ds is None else path_ds.union(listed)
    if path_ds is None:
        raise ConfigError("no inputs: the folders given hold no image files")

    results = classify_dataset(path_ds, model=args.model, options=options,
                               concurrency=concurrency, num_cpus=float(threads))
    from ..registry import load_model

    schema = result_schema(load_model(args.model).card.groups)
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    progress = Progress(None, show)
    total = failed = 0
    writer, tmp = _open_writer(out, schema)
    done = False
    try:
        for b in results.iter_batches(batch_format="pyarrow", batch_size=None):
            batch: Any = b
            writer.write_table(batch.cast(schema))
            for ok in batch.column("ok").to_pylist():
                progress.update(bool(ok))
            total += batch.num_rows
            failed += int(pc.sum(pc.invert(batch["ok"])).as_py() or 0)
        done = True
    finally:
        writer.close()
        progress.close()
        if tmp is not None:
            if done:
                os.replace(tmp, out.removeprefix("file://"))
            else:
                try:
                    os.remove(tmp)
                except OSError:
                    pass
    print(f"wrote {total} rows to {out}" + (f"; {failed} inputs failed (see their "
          "error_type/message)" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def _text_to_path(batch: Any) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    return pa.table({"path": pc.utf8_trim_whitespace(batch["text"])})
