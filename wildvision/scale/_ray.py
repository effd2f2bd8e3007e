"""Batch scoring on Ray Data: the core :class:`~wildvision.predict.Classifier`, unchanged, held
once per actor and fed blocks of images by Ray's streaming executor.

Every input gives exactly one output row: images that cannot be read or decoded become rows
with ``ok=False``, ``error_type`` and ``message`` (the core's :class:`~wildvision.Failure`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlparse

from ..errors import ConfigError, MissingExtraError, ModelIntegrityError
from ..imaging import IMAGE_EXTENSIONS, collect_inputs
from ..modelpack import ModelCard, ModelPackage
from ..options import ClassifierOptions
from ..predict import Classifier, Result
from ..registry import load_model

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

__all__ = [
    "BatchClassifier",
    "classify_dataset",
    "expand_inputs",
    "result_row",
    "result_schema",
]

# URL schemes the core refuses on purpose (it never downloads); kept as plain strings so that
# the core's own InvalidImageError ends up in the row.
_WEB_SCHEMES = frozenset({"http", "https", "ftp"})


def _require_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise MissingExtraError("ray[data]", "scale", "Ray batch scoring") from e
    return ray


def _is_uri(path: str) -> bool:
    scheme = urlparse(path).scheme
    return len(scheme) > 1  # not a Windows drive letter


def _list_uri(uri: str, recursive: bool) -> list[str] | None:
    """Image files under an object-store prefix (sorted), or None if ``uri`` is not a folder."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(uri)
    info = fs.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        return None
    scheme = urlparse(uri).scheme
    prefix = f"{scheme}://" if scheme != "file" else "file://"
    out = []
    for f in fs.get_file_info(pafs.FileSelector(root, recursive=recursive)):
        rel = f.path[len(root):].lstrip("/")
        if (f.type == pafs.FileType.File and Path(f.path).suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in rel.split("/"))):
            out.append(prefix + f.path)
    return sorted(out)


def expand_inputs(paths: Iterable[str | os.PathLike[str]], recursive: bool = False) -> list[str]:
    """Expand folders (local, or object-store prefixes such as ``s3://bucket/photos/``) into
    their image files, as ``wildvision classify`` does; files are kept as given, even missing
    ones, so that each gets a result row.

    Args:
        paths: files, folders or URIs.
        recursive: descend into sub-folders.

    Returns:
        The input list, folders replaced by their image files (sorted).
    """
    out: list[str] = []
    for p in paths:
        text = os.fspath(p)
        if _is_uri(text) and urlparse(text).scheme not in _WEB_SCHEMES:
            listed = None
            try:
                listed = _list_uri(text, recursive)
            except (OSError, ValueError):
                listed = None  # unreachable or unknown: the row will say why
            out.extend(listed if listed is not None else [text])
        else:
            out.extend(collect_inputs([text], recursive))
    return out


class _UriFile:
    """A lazily opened object-store file, read in the Classifier's decode threads."""

    _filesystems: ClassVar[dict[tuple[str, str], Any]] = {}

    def __init__(self, uri: str, max_bytes: int) -> None:
        self.name = uri
        self.max_bytes = max_bytes

    def read(self, n: int = -1) -> bytes:
        import pyarrow.fs as pafs

        parsed = urlparse(self.name)
        key = (parsed.scheme, parsed.netloc)
        fs = self._filesystems.get(key)
        try:
            if fs is None:
                fs, path = pafs.FileSystem.from_uri(self.name)
                self._filesystems[key] = fs
            else:
                path = pafs.FileSystem.from_uri(self.name)[1]
            with fs.open_input_stream(path) as f:
                data: bytes = f.read(n if n >= 0 else self.max_bytes + 1)
                return data
        except FileNotFoundError as e:
            raise OSError(f"file not found ({e})") from e
        except (OSError, ValueError) as e:
            raise OSError(str(e)) from e


class _NamedBytes:
    """Bytes that Ray has already read, carrying their path as the result's ``source``."""

    def __init__(self, data: bytes, name: str) -> None:
        self.name = name
        self._data = data

    def read(self, n: int = -1) -> bytes:
        return self._data if n < 0 else self._data[:n]


def result_schema(groups: Sequence[str]) -> pa.Schema:
    """The Parquet/Arrow schema of result rows for a model with these groups."""
    import pyarrow as pa

    cols: list[tuple[str, Any]] = [
        ("source", pa.string()),
        ("ok", pa.bool_()),
        ("decision", pa.string()),
        ("flagged_groups", pa.list_(pa.string())),
        ("top_group", pa.string()),
        ("top_label", pa.string()),
        ("top_label_probability", pa.float64()),
        ("top_labels", pa.string()),
        ("group_probabilities", pa.string()),
    ]
    cols += [(f"prob_{g}", pa.float64()) for g in groups]
    cols += [
        ("familiarity", pa.float64()),
        ("unfamiliar", pa.bool_()),
        ("model", pa.string()),
        ("model_version", pa.string()),
        ("image_sha256", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("error_type", pa.string()),
        ("message", pa.string()),
    ]
    return pa.schema(cols)


def result_row(result: Result, groups: Sequence[str]) -> dict[str, Any]:
    """One row of :func:`result_schema`: the result's :meth:`~wildvision.Prediction.to_row`
    (the CLI's CSV fields, plus ``top_labels`` as JSON and one ``prob_<group>`` column per
    group). Absent values are None."""
    row: dict[str, Any] = dict.fromkeys(result_schema(groups).names)
    flat = result.to_row()
    row.update((k, v) for k, v in flat.items() if k in row)
    return row


def _ship_package(package: ModelPackage) -> dict[str, Any]:
    """What an actor needs to rebuild the model without the driver's filesystem: the card and
    every file it lists (the weights of each precision and backend, the open-set gate's
    ``familiarity.npz`` ...), sha256-checked again on arrival."""
    return {"card": package.card,
            "files": {name: package.file(name).read_bytes() for name in package.card.files}}


class BatchClassifier:
    """The Ray Data callable class: one model load per actor, then ``__call__`` per batch.

    Args:
        shipped: the model from :func:`_ship_package`.
        options: the :class:`~wildvision.ClassifierOptions` of every actor's classifier (its
            ``batch_size``: images per model run inside a Ray batch).
        path_column: the column holding each row's path or URI.
        bytes_column: the column holding already-read file bytes, if the dataset has it.
    """

    def __init__(self, shipped: dict[str, Any], options: ClassifierOptions,
                 path_column: str = "path", bytes_column: str = "bytes") -> None:
        card: ModelCard = shipped["card"]
        tmp = Path(tempfile.mkdtemp(prefix="wildvision-model-"))
        try:
            for name, data in shipped["files"].items():
                if hashlib.sha256(data).hexdigest() != card.files.get(name):
                    raise ModelIntegrityError(f"{card.name}: {name} was corrupted in transit")
                (tmp / name).write_bytes(data)
            self.classifier = Classifier(ModelPackage(tmp, card), options)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # the runtime holds the weights in memory
        self.groups = tuple(card.groups)
        self.schema = result_schema(self.groups)
        self.path_column, self.bytes_column = path_column, bytes_column

    def _source(self, path: Any) -> Any:
        if not isinstance(path, str):
            return path  # None or junk: the core turns it into a typed Failure
        path = path.strip()
        if _is_uri(path):
            scheme = urlparse(path).scheme
            if scheme == "file":
                return urlparse(path).path
            if scheme not in _WEB_SCHEMES:
                return _UriFile(path, self.classifier.max_bytes)
        return path

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        if self.path_column not in batch.column_names:
            raise ConfigError(
                f"the dataset has no {self.path_column!r} column (columns: "
                f"{', '.join(batch.column_names)}); pass path_column=..."
            )
        paths = batch.column(self.path_column).to_pylist()
        sources: list[Any]
        if self.bytes_column in batch.column_names:
            datas = batch.column(self.bytes_column).to_pylist()
            sources = [_NamedBytes(d, str(p)) if d is not None else self._source(p)
                       for d, p in zip(datas, paths, strict=True)]
        else:
            sources = [self._source(p) for p in paths]
        results = self.classifier.classify_many(sources)
        rows = [result_row(r, self.groups) for r in results]
        for row, p in zip(rows, paths, strict=True):
            if isinstance(p, str):
                row["source"] = p  # the input as given (URIs too), whatever the reader saw
        return pa.Table.from_pylist(rows, schema=self.schema)


def classify_dataset(
    source: ray.data.Dataset | str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    model: str | os.PathLike[str] | ModelPackage | None = None,
    options: ClassifierOptions | None = None,
    concurrency: int | tuple[int, int] | None = None,
    num_cpus: float = 1.0,
    recursive: bool = False,
    path_column: str = "path",
    bytes_column: str = "bytes",
    **classifier_opts: Any,
) -> ray.data.Dataset:
    """Score images with Ray Data; returns a lazy dataset of result rows (:func:`result_schema`).

    The model is resolved and verified once on the driver, shipped to the actors, and loaded
    once per actor (not per batch). Results are not in input order.

    Args:
        source: a Ray Dataset with a ``path`` column (and optionally ``bytes``, as made by
            ``ray.data.read_binary_files(..., include_paths=True)``), or paths: image files,
            folders, or object-store URIs/prefixes (``s3://``, ``gs://``, ``file://`` ...,
            whatever ``pyarrow.fs`` reads). Web URLs are never fetched (they fail as rows).
        model: model name, package folder, ``hf://org/name`` or package (default model if None).
        options: the :class:`~wildvision.ClassifierOptions` of the actors' classifiers; its
            ``batch_size`` is also the rows per Ray batch, its ``threads`` the ONNX Runtime
            threads per actor (default here: ``num_cpus``, at least 1) and its
            ``decode_workers`` the image-decoding threads per actor (default here: 1).
        concurrency: actors (an int, or ``(min, max)`` for an autoscaling pool); default: the
            cluster's CPUs divided by ``num_cpus`` (one CPU fewer for a given dataset, whose
            read tasks need a CPU too).
        num_cpus: CPUs reserved per actor.
        recursive: descend into sub-folders when expanding folders.
        path_column, bytes_column: column names in a given dataset.
        **classifier_opts: options as keywords (``batch_size``, ``threads``,
            ``decode_workers``, ``backend``, ``precision``, ``thresholds``, ``top_k`` ...),
            applied on top of ``options``.

    Returns:
        A ``ray.data.Dataset``; ``ds.write_parquet("s3://bucket/out/")`` writes it in parallel.

    Raises:
        MissingExtraError: Ray Data is not installed (``pip install 'wildvision[scale]'``).
        ConfigError: bad options, or no inputs.
        UnknownModelError, ModelIntegrityError: the model cannot be resolved or verified.

    Example:
        >>> ds = classify_dataset("s3://bucket/photos/", model="wildvision-base",
        ...                       concurrency=16)  # doctest: +SKIP
        >>> ds.write_parquet("s3://bucket/scores/")  # doctest: +SKIP
    """
    rt = _require_ray()
    opts = ClassifierOptions.build(options, **classifier_opts)
    if num_cpus <= 0:
        raise ConfigError(f"num_cpus must be > 0, got {num_cpus}")
    opts = opts.replace(threads=opts.threads or max(1, int(num_cpus)),
                        decode_workers=opts.decode_workers or 1)
    batch_size = opts.batch_size
    package = load_model(model)
    shipped = _ship_package(package)
    # Fail on bad options here, on the driver, rather than in every actor.
    Classifier(package, opts)

    if isinstance(source, rt.data.Dataset):
        ds = source
    else:
        items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
        paths = expand_inputs(items, recursive)
        if not paths:
            raise ConfigError("no inputs to classify")
        blocks = max(1, min(len(paths) // max(batch_size, 1) + 1, 10_000))
        ds = rt.data.from_items([{path_column: p} for p in paths], override_num_blocks=blocks)

    if concurrency is None:
        cpus = float(rt.cluster_resources().get("CPU", 1.0))
        if not isinstance(source, rt.data.Dataset):
            concurrency = max(1, int(cpus // num_cpus))
        else:  # leave a CPU to the dataset's own read tasks, or they may starve
            concurrency = max(1, int((cpus - 1) // num_cpus))
    if isinstance(concurrency, tuple):
        compute = rt.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    else:
        if concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
        compute = rt.data.ActorPoolStrategy(size=concurrency)
    out: ray.data.Dataset = ds.map_batches(
        BatchClassifier,
        fn_constructor_kwargs={
            "shipped": shipped, "options": opts, "path_column": path_column,
            "bytes_column": bytes_column,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=compute,
        num_cpus=num_cpus,
    )
    return out
