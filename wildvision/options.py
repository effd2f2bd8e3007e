"""How a :class:`~wildvision.Classifier` runs: one frozen options object that every entry point
(the Python API, ``wildvision classify``, ``wildvision serve``, Ray scoring and the bench)
builds once and hands over as is.

A new option is one field here (with its check in ``__post_init__`` and, for the command line,
one line in :func:`add_classifier_arguments`); nothing between the entry points and the
classifier re-plumbs keywords.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError
from .imaging import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from .matching import KnownImageIndex
from .modelpack import Thresholds

__all__ = ["ClassifierOptions", "add_classifier_arguments"]

BACKENDS = ("onnx", "openvino", "torch")  # = runtime.BACKENDS (tested)
PRECISIONS = ("fp32", "bf16", "int8")  # = runtime.PRECISIONS (tested)


@dataclass(frozen=True)
class ClassifierOptions:
    """Everything about how a :class:`~wildvision.Classifier` runs, apart from the model.

    Build it with keywords (``ClassifierOptions(threads=2, open_set=False)``), derive variants
    with :meth:`replace`, and pass it to ``Classifier(model, options)``; the keyword API
    (``Classifier(model, threads=2)``, ``classify_images(..., top_k=5)``) builds one for you.
    It is picklable and turns into JSON (:meth:`to_dict`), so it travels to Ray actors and
    service workers unchanged.

    Attributes:
        backend: the runtime: ``onnx`` (ONNX Runtime, default), ``openvino`` (``[openvino]``
            extra) or ``torch`` (``[torch]`` extra). Never switched behind your back.
        precision: ``fp32``, ``int8`` (if the package ships ``model.int8.onnx``) or ``bf16``
            (openvino only, on CPUs with bfloat16 instructions; a ``ConfigError`` elsewhere).
        threads: inference threads in all; ``None`` lets the runtime choose.
        cache_dir: openvino only: a folder for OpenVINO's compiled-model cache (a later
            process loads the compiled model instead of compiling it again).
        decode_workers: threads decoding images while the model runs the previous ones;
            ``None``: one per core, up to 4.
        batch_size: images decoded ahead of the model in a stream (and the size of a Ray
            batch); see :meth:`~wildvision.Classifier.iter_classify`.
        thresholds: per-group overrides of the card's thresholds, e.g.
            ``{"ivory": {"flag": 0.9, "review": 0.5}}``, ``{"ivory": 0.9}`` (flag only) or
            ``{"ivory": Thresholds(0.9, 0.5)}``; checked against the model's groups when a
            classifier is built.
        top_k: how many fine labels each prediction lists.
        max_pixels, max_bytes: image safety limits (see :func:`wildvision.load_image`).
        return_embedding: put the pooled embedding in each prediction.
        open_set: apply the model's open-set gate when it ships one (default ``True``): a flag
            on a photo unlike every training photo (low ``familiarity``) becomes ``review``.
        match_index: a loaded known-photo index (:func:`wildvision.match.load_index`,
            ``[match]`` extra): each prediction lists its ``matches``, and a photo with a match
            is decided at least the index's ``decision``. Carried as the object (not JSON).
        explain: put in each prediction a heatmap of where the model saw its most probable
            flaggable group (:mod:`wildvision.explain`).

    Raises:
        ConfigError: a value out of range (e.g. ``threads=0``).
    """

    backend: str = "onnx"
    precision: str = "fp32"
    threads: int | None = None
    cache_dir: str | None = None
    decode_workers: int | None = None
    batch_size: int = 32
    thresholds: Mapping[str, Any] | None = field(default=None, hash=False)
    top_k: int = 3
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    return_embedding: bool = False
    open_set: bool = True
    match_index: KnownImageIndex | None = None
    explain: bool = False

    def __post_init__(self) -> None:
        if self.cache_dir is not None:  # kept as text: the options stay JSON-able
            object.__setattr__(self, "cache_dir", os.fspath(self.cache_dir))
        for name in ("threads", "decode_workers"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ConfigError(f"{name} must be >= 1 (or None), got {value!r}")
        for name in ("batch_size", "top_k", "max_pixels", "max_bytes"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value!r}")
        if self.thresholds is not None:
            if not isinstance(self.thresholds, Mapping):
                raise ConfigError(
                    f"thresholds must be a mapping group -> spec, got {self.thresholds!r}"
                )
            # a private copy (with Thresholds as plain dicts): later changes to the caller's
            # dict cannot reach a built classifier, and the options stay JSON- and picklable
            norm = {str(g): (s.to_dict() if isinstance(s, Thresholds)
                             else dict(s) if isinstance(s, Mapping) else s)
                    for g, s in self.thresholds.items()}
            object.__setattr__(self, "thresholds", norm or None)

    def __hash__(self) -> int:
        return hash(self.cache_key())

    def replace(self, **changes: Any) -> ClassifierOptions:
        """A copy with ``changes`` applied (checked like the constructor).

        Raises:
            TypeError: an unknown option name.
            ConfigError: a value out of range.
        """
        unknown = set(changes) - _NAMES
        if unknown:
            raise TypeError(
                f"unknown classifier option(s) {', '.join(sorted(unknown))}; options: "
                f"{', '.join(sorted(_NAMES))}"
            )
        return dataclasses.replace(self, **changes) if changes else self

    @classmethod
    def build(cls, options: ClassifierOptions | None = None, **changes: Any
              ) -> ClassifierOptions:
        """``options`` (default: the defaults) with keyword ``changes`` applied: how the
        keyword APIs turn their arguments into one options object."""
        return (options if options is not None else cls()).replace(**changes)

    def to_dict(self) -> dict[str, Any]:
        """The options as a JSON-able dict (inverse: :meth:`from_dict`)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassifierOptions:
        """Options from :meth:`to_dict`'s output.

        Raises:
            ConfigError: an unknown key or a bad value.
        """
        unknown = set(data) - _NAMES
        if unknown:
            raise ConfigError(f"unknown classifier option(s): {sorted(unknown)}")
        return cls(**data)

    def cache_key(self) -> str:
        """A string equal for equal options (for caches of built classifiers). An index is
        keyed by its identity: a cached classifier holds it, so the identity stays unique."""
        d = self.to_dict()
        if self.match_index is not None:
            d["match_index"] = f"<index id {id(self.match_index)}>"
        return json.dumps(d, sort_keys=True, default=str)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **changes: Any) -> ClassifierOptions:
        """Options from parsed command-line arguments (those that
        :func:`add_classifier_arguments` adds, and ``explain``; absent ones keep their
        defaults), then ``changes``. A ``--match-index`` path is not read: the caller loads
        the index and passes it in ``changes``.

        Raises:
            ConfigError: a bad ``--threshold`` or value.
        """
        values: dict[str, Any] = {}
        for name in _NAMES - {"thresholds", "match_index"}:
            value = getattr(args, name, None)
            if value is not None:
                values[name] = value
        specs: Sequence[str] = getattr(args, "threshold", None) or []
        if specs:
            values["thresholds"] = Thresholds.parse(specs)
        values.update(changes)
        try:
            return cls(**values)
        except ConfigError as e:  # name the option as the user typed it
            msg = str(e)
            for name in _NAMES:
                if msg.startswith(f"{name} "):
                    msg = "--" + name.replace("_", "-") + msg[len(name):]
                    break
            raise ConfigError(msg) from None


_NAMES = frozenset(f.name for f in fields(ClassifierOptions))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def add_classifier_arguments(parser: argparse.ArgumentParser, *, batch_size: int = 32,
                             batch_size_help: str | None = None,
                             threads_help: str = "inference threads",
                             skip: Sequence[str] = ()) -> None:
    """Add the command-line options of :class:`ClassifierOptions` to a (sub)command, read back
    with :meth:`ClassifierOptions.from_args`.

    Args:
        parser: the parser of the command.
        batch_size: the command's default ``--batch-size``.
        batch_size_help, threads_help: the command's help for those options.
        skip: option names the command does not take (e.g. ``("thresholds", "top_k")``).
    """
    skipped = set(skip)
    if "batch_size" not in skipped:
        parser.add_argument("-b", "--batch-size", type=int, default=batch_size,
                            help=batch_size_help)
    if "threads" not in skipped:
        parser.add_argument("-t", "--threads", type=int, default=None, help=threads_help)
    if "decode_workers" not in skipped:
        parser.add_argument("--decode-workers", type=int, default=None,
                            help="image decoding threads")
    if "precision" not in skipped:
        parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                            help="fp32 (default), int8 (the model's model.int8.onnx) or bf16 "
                                 "(openvino runtime, CPUs with bfloat16 instructions)")
    if "backend" not in skipped:
        parser.add_argument("--runtime", "--backend", dest="backend", choices=BACKENDS,
                            default="onnx",
                            help="inference engine: onnx (ONNX Runtime, default), openvino "
                                 "([openvino] extra) or torch ([torch] extra); never "
                                 "switched automatically")
    if "cache_dir" not in skipped:
        parser.add_argument("--cache-dir", default=None, metavar="DIR",
                            help="openvino: compiled-model cache folder (faster later starts)")
    if "thresholds" not in skipped:
        parser.add_argument("--threshold", action="append", metavar="GROUP=FLAG[:REVIEW]",
                            help="override a group's thresholds, e.g. ivory=0.9:0.5 "
                                 "(repeatable)")
    if "top_k" not in skipped:
        parser.add_argument("--top-k", type=int, default=3)
    if "open_set" not in skipped:
        parser.add_argument("--open-set", action=argparse.BooleanOptionalAction, default=True,
                            help="apply the model's open-set gate: a flag on a photo unlike "
                                 "every training photo becomes review (default: on; "
                                 "--no-open-set: off)")
