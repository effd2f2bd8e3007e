"""From decoded images to :class:`Prediction` records: batching, the overlapped decode/infer
pipeline, temperature calibration, group probabilities and flag/review/pass decisions."""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from .errors import ConfigError, WildvisionError
from .explain import (
    Explanation,
    activation_maps,
    displayed_size,
    group_direction,
    heatmap_on_image,
    top_flaggable,
)
from .head import LinearHead, head_weights
from .imaging import ImageSource, decode_image, source_name
from .matching import KnownImageIndex, Match
from .modelpack import ModelPackage, Thresholds
from .options import ClassifierOptions
from .preprocess import normalize, preprocess_image, resize_crop
from .registry import default_model_name, load_model
from .runtime import Backend, create_backend
from .scores import group_matrix, softmax
from .taxonomy import FLAGGABLE_GROUPS

__all__ = [
    "Classifier",
    "Failure",
    "GroupResult",
    "LabelScore",
    "Prediction",
    "Result",
    "classify_image",
    "classify_images",
    "iter_classify",
    "softmax",
]

DECISIONS = ("flag", "review", "pass")
# The columns of a result as a table row (Prediction.to_row / Failure.to_row), in order; a
# Prediction's row adds one prob_<group> column per group of its model.
ROW_FIELDS = (
    "source", "ok", "decision", "flagged_groups", "top_group", "top_label",
    "top_label_probability", "top_labels", "group_probabilities", "familiarity", "unfamiliar",
    "model", "model_version", "image_sha256", "width", "height", "error_type", "message",
    # with a match index: whether the photo matched, how many matches, and the best one
    "known_image", "match_count", "match_reference", "match_label", "match_group",
    "match_similarity", "match_hash_distance", "match_by",
)


@dataclass(frozen=True)
class LabelScore:
    """A fine label with its calibrated probability."""

    label: str
    group: str
    probability: float


@dataclass(frozen=True)
class GroupResult:
    """A group's calibrated probability and the decision its thresholds give."""

    group: str
    probability: float
    decision: str
    flag_threshold: float
    review_threshold: float


@dataclass(frozen=True)
class Prediction:
    """The result for one image.

    Attributes:
        source: the input's name (path, or ``<bytes>`` ...).
        decision: overall ``flag`` / ``review`` / ``pass``: the strongest decision over the
            flaggable groups.
        top_group: the most probable group (``benign`` included).
        groups: every group the model covers, with probability and decision.
        top_labels: the most probable fine labels.
        model, model_version: which model made this result (for audits).
        image_sha256: sha256 of the input bytes (of the RGB pixels for PIL/array inputs).
        width, height: the stored image's size in pixels.
        embedding: the pooled embedding, only when asked for (``return_embedding=True``).
        familiarity: similarity of the photo to the nearest training photo
            (:mod:`wildvision.openset`), ``None`` when the model has no reference set or the
            gate is off.
        explanation: where the model saw the most probable flaggable group
            (:class:`~wildvision.explain.Explanation`), only when asked for (``explain=True``).
        unfamiliar: the gate turned at least one ``flag`` into ``review`` (the photo is below
            the familiarity threshold of a group it would have been flagged for; its
            probabilities are unchanged).
        matches: known photos this photo matches (:mod:`wildvision.match`), best first;
            ``None`` when no index was given.
        known_image: at least one match: the decision is at least the index's decision
            (``flag`` by default), whatever the probabilities say.
    """

    source: str
    decision: str
    top_group: str
    groups: tuple[GroupResult, ...]
    top_labels: tuple[LabelScore, ...]
    model: str
    model_version: str
    image_sha256: str
    width: int
    height: int
    embedding: tuple[float, ...] | None = field(default=None, repr=False)
    familiarity: float | None = None
    unfamiliar: bool = False
    matches: tuple[Match, ...] | None = None
    known_image: bool = False
    explanation: Explanation | None = field(default=None, repr=False, compare=False)

    ok = True

    @property
    def flagged(self) -> bool:
        return self.decision == "flag"

    @property
    def flagged_groups(self) -> tuple[str, ...]:
        return tuple(g.group for g in self.groups if g.decision == "flag")

    def group(self, name: str) -> GroupResult:
        for g in self.groups:
            if g.group == name:
                return g
        raise KeyError(f"model {self.model} has no group {name!r}")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "source": self.source,
            "ok": True,
            "decision": self.decision,
            "flagged_groups": list(self.flagged_groups),
            "top_group": self.top_group,
            "groups": {
                g.group: {
                    "probability": round(g.probability, 6),
                    "decision": g.decision,
                    "flag_threshold": g.flag_threshold,
                    "review_threshold": g.review_threshold,
                }
                for g in self.groups
            },
            "top_labels": [
                {"label": s.label, "group": s.group, "probability": round(s.probability, 6)}
                for s in self.top_labels
            ],
            "model": self.model,
            "model_version": self.model_version,
            "image_sha256": self.image_sha256,
            "width": self.width,
            "height": self.height,
        }
        if self.familiarity is not None:
            d["familiarity"] = round(self.familiarity, 6)
            d["unfamiliar"] = self.unfamiliar
        if self.matches is not None:
            d["matches"] = [m.to_dict() for m in self.matches]
            d["known_image"] = self.known_image
        if self.embedding is not None:
            d["embedding"] = list(self.embedding)
        if self.explanation is not None:
            d["explanation"] = self.explanation.to_dict()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def to_row(self) -> dict[str, Any]:
        """One flat table row (the CLI's CSV, Ray's Parquet): :data:`ROW_FIELDS` plus a
        ``prob_<group>`` column per group. Numbers as in :meth:`to_dict`; ``flagged_groups``
        is a list, ``top_labels`` and ``group_probabilities`` are JSON; absent values are
        ``None``."""
        d = self.to_dict()
        top = d["top_labels"][0] if d["top_labels"] else {}
        probs = {g: v["probability"] for g, v in d["groups"].items()}
        row: dict[str, Any] = dict.fromkeys(ROW_FIELDS)
        row.update(
            source=d["source"], ok=True, decision=d["decision"],
            flagged_groups=d["flagged_groups"], top_group=d["top_group"],
            top_label=top.get("label"), top_label_probability=top.get("probability"),
            top_labels=json.dumps(d["top_labels"]), group_probabilities=json.dumps(probs),
            familiarity=d.get("familiarity"), unfamiliar=d.get("unfamiliar"),
            model=d["model"], model_version=d["model_version"],
            image_sha256=d["image_sha256"], width=d["width"], height=d["height"],
        )
        if self.matches is not None:  # the best match (the JSON lists them all)
            best = d["matches"][0] if d["matches"] else {}
            row.update(known_image=self.known_image, match_count=len(self.matches),
                       match_reference=best.get("reference"), match_label=best.get("label"),
                       match_group=best.get("group"), match_similarity=best.get("similarity"),
                       match_hash_distance=best.get("hash_distance"), match_by=best.get("by"))
        row.update({f"prob_{g}": p for g, p in probs.items()})
        return row


@dataclass(frozen=True)
class Failure:
    """An input that could not be classified, in its slot of a batch."""

    source: str
    error_type: str
    message: str
    model: str = ""
    model_version: str = ""

    ok = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "ok": False,
            "error_type": self.error_type,
            "message": self.message,
            "model": self.model,
            "model_version": self.model_version,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def to_row(self) -> dict[str, Any]:
        """:meth:`Prediction.to_row`'s columns: the source, ``ok=False``, the model, the error
        type and message; ``None`` elsewhere (``prob_<group>`` columns are left out)."""
        row: dict[str, Any] = dict.fromkeys(ROW_FIELDS)
        row.update(source=self.source, ok=False, model=self.model,
                   model_version=self.model_version, error_type=self.error_type,
                   message=self.message)
        return row


Result = Union[Prediction, Failure]
# One image's rows of the model's outputs (Classifier.iter_arrays): name -> array.
ImageArrays = dict[str, np.ndarray]


ThresholdSpec = Mapping[str, Union[Thresholds, Mapping[str, float], float]]


def _merge_thresholds(package: ModelPackage, overrides: ThresholdSpec | None
                      ) -> dict[str, Thresholds]:
    card = package.card
    out = {g: card.threshold(g) for g in card.groups}
    for group, spec in (overrides or {}).items():
        if group not in out:
            raise ConfigError(
                f"threshold for unknown group {group!r}; model {card.name} has groups "
                f"{', '.join(card.groups)}"
            )
        if isinstance(spec, Thresholds):
            out[group] = spec
        elif isinstance(spec, (int, float)) and not isinstance(spec, bool):
            out[group] = Thresholds(flag=float(spec), review=min(float(spec), out[group].review))
        elif isinstance(spec, Mapping):
            unknown = set(spec) - {"flag", "review"}
            if unknown:
                raise ConfigError(f"threshold keys must be 'flag'/'review', got {sorted(unknown)}")
            try:
                flag = float(spec.get("flag", out[group].flag))
                review = float(spec.get("review", min(out[group].review, flag)))
            except (TypeError, ValueError):
                raise ConfigError(
                    f"thresholds of {group!r} must be numbers, got {spec!r}"
                ) from None
            out[group] = Thresholds(flag=flag, review=review)
        else:
            raise ConfigError(
                f"threshold of {group!r} must be a number, a Thresholds or a mapping with "
                f"'flag'/'review', got {spec!r}"
            )
    return out


# Input pixels per model run in iter_classify: two 224 px images. The runs are single-threaded
# (see _inference_layout), where ONNX Runtime's time per image does not depend on the run size,
# while its activation memory grows with it: about 30 MB per 224 px image for
# EfficientNet-Lite0, i.e. 940 MB of peak RSS for one run of 32 images.
_RUN_PIXELS = 2 * 224 * 224


def _inference_layout(threads: int | None, backend: str) -> tuple[int, int]:
    """How ``threads`` inference threads are used: (concurrent runs, runtime threads per run).

    ONNX Runtime splits every operator over its intra-op threads and waits for all of them
    before the next one; on a few cores shared with the decode threads, one descheduled thread
    stalls the others at every operator. Two concurrent runs of a few images, each with half
    the threads (one each on a 2-core machine), keep the cores busy instead: measured in
    docs/performance.md. OpenVINO gets the same layout: one stream per concurrent run. The
    torch backend keeps its own threading (one run at a time).
    """
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    if backend not in ("onnx", "openvino"):
        return 1, threads  # type: ignore[return-value]
    total = threads or os.cpu_count() or 1
    runs = min(2, total)
    return runs, max(1, total // runs)


@dataclass
class _Prepared:
    index: int
    source: str
    tensor: np.ndarray | None = None
    sha256: str = ""
    size: tuple[int, int] = (0, 0)
    error: BaseException | None = None
    match_keys: Any = None
    decoded_size: tuple[int, int] = (0, 0)
    view_tensors: tuple[np.ndarray, ...] = ()  # the match index's extra views, preprocessed


class Classifier:
    """A loaded model with its runtime and decision policy; reuse it for many images.

    Args:
        model: ``None`` (the default model), a name, a package folder, ``hf://org/name`` or a
            :class:`~wildvision.modelpack.ModelPackage`.
        options: how it runs (:class:`~wildvision.options.ClassifierOptions`: backend,
            precision, threads, decode workers, batch size, threshold overrides, ``top_k``,
            image limits, embeddings, the open-set gate, a known-photo ``match_index``,
            ``explain``); default: the defaults.
        **changes: options as keywords, applied on top of ``options``, e.g.
            ``Classifier("wildvision-base", threads=2, thresholds={"ivory": 0.9})``.

    Raises:
        ConfigError: a bad option (or a threshold override for a group the model lacks).
        TypeError: an unknown option name.
        IndexModelMismatchError: ``match_index`` was made with another model.

    Example:
        >>> clf = Classifier("wildvision-base")  # doctest: +SKIP
        >>> for r in clf.iter_classify(paths, batch_size=32):  # doctest: +SKIP
        ...     print(r.source, r.decision if r.ok else r.error_type)
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | ModelPackage | None = None,
        options: ClassifierOptions | None = None,
        **changes: Any,
    ) -> None:
        opts = ClassifierOptions.build(options, **changes)
        self.options = opts
        self.package = load_model(model)
        self.card = self.package.card
        runs, run_threads = _inference_layout(opts.threads, opts.backend)
        self.backend: Backend = create_backend(
            self.package, opts.backend, precision=opts.precision, threads=run_threads,
            streams=runs, cache_dir=opts.cache_dir,
        )
        self.precision = opts.precision
        self.thresholds = _merge_thresholds(self.package, opts.thresholds)
        self.top_k = min(opts.top_k, len(self.card.labels))
        self.max_pixels = opts.max_pixels
        self.max_bytes = opts.max_bytes
        self.return_embedding = opts.return_embedding
        self.gate = self.package.open_set_gate() if opts.open_set else None
        self.decode_workers = opts.decode_workers or max(1, min(4, (os.cpu_count() or 2)))
        match_index = opts.match_index
        if match_index is not None:
            if not isinstance(match_index, KnownImageIndex):
                raise ConfigError(
                    "match_index must be a loaded index (wildvision.match.load_index(path)), "
                    f"got {type(match_index).__name__}"
                )
            match_index.check_model(self.package, opts.precision)
        self.match_index = match_index
        labels = self.card.labels
        self._groups = self.card.groups
        self._group_matrix = group_matrix(labels, self.card.label_groups, self._groups)
        self.explain_top = opts.explain
        self._head: LinearHead | None = None
        if opts.explain:
            self._explainer()  # fail now, not on the first image, when the model cannot explain
        self._runs = runs
        self._lock = threading.BoundedSemaphore(runs)  # at most `runs` model runs at once

    @property
    def familiarity(self) -> Any:
        """Old name of :attr:`gate` (the open-set gate in use, or ``None``)."""
        return self.gate

    # -- single steps -------------------------------------------------------------------
    def _prepare(self, index: int, source: ImageSource, out: np.ndarray | None = None
                 ) -> _Prepared:
        """Decode and preprocess one input; never raises (the error is kept in the result).

        Runs in the decode threads. With ``out`` (a float32 CxHxW row of a preallocated batch)
        the model input is written there, bit-identical to
        :func:`~wildvision.preprocess.preprocess_image`, without a temporary float image.
        """
        name = source_name(source)
        try:
            cfg = self.card.preprocess
            dec = decode_image(
                source,
                max_pixels=self.max_pixels,
                max_bytes=self.max_bytes,
                draft_size=cfg.draft_size,
            )
            if out is None:
                tensor = preprocess_image(dec.image, cfg)
            else:  # straight into the batch row
                tensor = normalize(np.asarray(resize_crop(dec.image, cfg)), cfg, out=out)
            keys = (self.match_index.image_keys(dec.image)
                    if self.match_index is not None else None)
            views = tuple(preprocess_image(v, cfg) for v in getattr(keys, "views", ()))
            return _Prepared(index, name, tensor, dec.sha256, dec.original_size,
                             match_keys=keys, decoded_size=dec.image.size, view_tensors=views)
        except Exception as e:  # a decoder bug must not take the batch down; keep its type
            return _Prepared(index, name, error=e)

    def _failure(self, p: _Prepared) -> Failure:
        err = p.error
        return Failure(
            source=p.source,
            error_type=type(err).__name__,
            message=str(err),
            model=self.card.name,
            model_version=self.card.version,
        )

    def predict_arrays(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the backend on a preprocessed float32 NCHW batch; adds ``probabilities``
        (calibrated, per fine label) and ``group_probabilities`` (per ``card.groups``)."""
        outputs = self.backend.run(batch)
        probs = softmax(outputs["logits"], self.card.temperature)
        outputs = dict(outputs)
        outputs["probabilities"] = probs
        outputs["group_probabilities"] = probs @ self._group_matrix
        return outputs

    # -- explanations --------------------------------------------------------------------
    def _explainer(self) -> LinearHead:
        """The head weights explanations need (read once); checks the model can explain."""
        if self._head is None:
            if "features" not in self.backend.output_names:
                raise ConfigError(
                    f"model {self.card.name} has no 'features' output: it cannot be explained "
                    f"(outputs: {', '.join(self.backend.output_names)})"
                )
            self._head = head_weights(
                self.package, self.precision if self.backend.name == "onnx" else "fp32"
            )
        return self._head

    def _explanations(self, out: Mapping[str, np.ndarray], rows: Sequence[_Prepared],
                      groups: Sequence[str | None]) -> list[Explanation | None]:
        """Explain ``groups[i]`` (``None``: nothing) in row ``i`` of a batch's outputs."""
        head = self._explainer()
        labels = self.card.labels
        label_group = np.array([self.card.label_groups[lab] for lab in labels])
        wanted = [i for i, g in enumerate(groups) if g is not None]
        result: list[Explanation | None] = [None] * len(groups)
        if not wanted:
            return result
        masks = np.stack([label_group == groups[i] for i in wanted])
        dirs = group_direction(head.weight, out["probabilities"][wanted], masks)
        cams = activation_maps(out["features"][wanted], dirs)
        cfg = self.card.preprocess
        for k, i in enumerate(wanted):
            p = rows[i]
            image_size = displayed_size(p.decoded_size, p.size)
            heat, box = heatmap_on_image(cams[k], cfg, p.decoded_size, image_size)
            g = groups[i]
            assert g is not None
            prob = float(out["group_probabilities"][i][self._groups.index(g)])
            result[i] = Explanation(g, prob, heat, image_size, box)
        return result

    def explain(self, source: ImageSource, group: str | None = None) -> Explanation:
        """Where the model sees ``group`` in one image (default: its most probable flaggable
        group), whatever the decision.

        Raises:
            InvalidImageError: a bad input.
            ConfigError: the model has no group ``group``, or cannot be explained.
        """
        if group is not None and group not in self._groups:
            raise ConfigError(f"model {self.card.name} has no group {group!r} "
                              f"(groups: {', '.join(self._groups)})")
        p = self._prepare(0, source)
        if p.error is not None:
            raise p.error
        self._explainer()
        with self._lock:
            out = self.predict_arrays(p.tensor[None])  # type: ignore[index]
        if group is None:
            group = top_flaggable(self._groups, FLAGGABLE_GROUPS, out["group_probabilities"][0])
            if group is None:
                raise ConfigError(f"model {self.card.name} has no flaggable group to explain")
        exp = self._explanations(out, [p], [group])[0]
        assert exp is not None
        return exp

    def _make_prediction(self, p: _Prepared, probs: np.ndarray, gprobs: np.ndarray,
                         emb: np.ndarray | None, familiarity: float | None = None,
                         matches: tuple[Match, ...] | None = None,
                         explanation: Explanation | None = None) -> Prediction:
        groups = []
        overall = "pass"
        unfamiliar = False
        for gi, g in enumerate(self._groups):
            prob = float(gprobs[gi])
            th = self.thresholds[g]
            decision = th.decide(prob) if g in FLAGGABLE_GROUPS else "pass"
            if (decision == "flag" and familiarity is not None and self.gate is not None
                    and self.gate.below(familiarity, g)):
                decision = "review"
                unfamiliar = True
            if DECISIONS.index(decision) < DECISIONS.index(overall):
                overall = decision
            groups.append(GroupResult(g, prob, decision, th.flag, th.review))
        known = bool(matches)
        # A confirmed photo decides regardless of the probabilities; it never lowers.
        if (known and self.match_index is not None
                and DECISIONS.index(self.match_index.decision) < DECISIONS.index(overall)):
            overall = self.match_index.decision
        order = np.argsort(-probs, kind="stable")[: self.top_k]
        labels = self.card.labels
        top = tuple(
            LabelScore(labels[i], self.card.label_groups[labels[i]], float(probs[i])) for i in order
        )
        top_group = self._groups[int(np.argmax(gprobs))]
        return Prediction(
            source=p.source,
            decision=overall,
            top_group=top_group,
            groups=tuple(groups),
            top_labels=top,
            model=self.card.name,
            model_version=self.card.version,
            image_sha256=p.sha256,
            width=p.size[0],
            height=p.size[1],
            embedding=tuple(float(v) for v in emb) if emb is not None else None,
            familiarity=familiarity,
            unfamiliar=unfamiliar,
            matches=matches,
            known_image=known,
            explanation=explanation,
        )

    def _view_embeddings(self, ok: Sequence[_Prepared]) -> list[np.ndarray | None] | None:
        """Embeddings of the match index's extra views of each photo (one more model run
        for the photos that have any, e.g. a photo in a screenshot frame)."""
        views = [t for p in ok for t in p.view_tensors]
        if not views:
            return None
        with self._lock:
            emb = self.predict_arrays(np.stack(views)).get("embedding")
        if emb is None:
            return None
        out: list[np.ndarray | None] = []
        at = 0
        for p in ok:
            k = len(p.view_tensors)
            out.append(emb[at:at + k] if k else None)
            at += k
        return out

    def _infer(self, prepared: list[_Prepared], batch: np.ndarray | None = None
               ) -> list[tuple[Result, ImageArrays | None]]:
        # ``batch``: the preallocated rows of ``prepared`` (iter_classify), used as is when
        # every item decoded. Each result comes with its rows of the model's outputs.
        ok = [p for p in prepared if p.error is None]
        results: dict[int, Result] = {p.index: self._failure(p) for p in prepared if p.error}
        arrays: dict[int, ImageArrays] = {}
        if ok:
            if batch is None or len(ok) != len(prepared):
                batch = np.stack([p.tensor for p in ok])  # type: ignore[misc]
            found: list[tuple[Match, ...]] | None = None
            try:
                with self._lock:  # at most self._runs runs at once keeps memory bounded
                    out = self.predict_arrays(batch)
                if self.match_index is not None:
                    found = self.match_index.lookup([p.match_keys for p in ok],
                                                    out.get("embedding"),
                                                    self._view_embeddings(ok))
            except Exception as e:  # e.g. the runtime failing: every item records it
                for p in ok:
                    p.error = e
                    results[p.index] = self._failure(p)
            else:
                emb = out.get("embedding") if self.return_embedding else None
                fam = (self.gate.score(out["embedding"])
                       if self.gate is not None and "embedding" in out else None)
                exps: list[Explanation | None] = [None] * len(ok)
                if self.explain_top:
                    exps = self._explanations(out, ok, [
                        top_flaggable(self._groups, FLAGGABLE_GROUPS, gp)
                        for gp in out["group_probabilities"]
                    ])
                for row, p in enumerate(ok):
                    results[p.index] = self._make_prediction(
                        p, out["probabilities"][row], out["group_probabilities"][row],
                        emb[row] if emb is not None else None,
                        float(fam[row]) if fam is not None else None,
                        found[row] if found is not None else None,
                        exps[row],
                    )
                    a = {k: v[row] for k, v in out.items()}
                    if fam is not None:
                        a["familiarity"] = fam[row]
                    arrays[p.index] = a
        return [(results[p.index], arrays.get(p.index)) for p in prepared]

    # -- public API ----------------------------------------------------------------------
    def classify(self, source: ImageSource) -> Prediction:
        """Classify one image.

        Raises:
            InvalidImageError, ImageTooLargeError, UnsupportedFormatError: a bad input.
        """
        p = self._prepare(0, source)
        if p.error is not None:
            raise p.error
        result = self._infer([p])[0][0]
        if isinstance(result, Failure):
            raise WildvisionError(f"{result.source}: {result.message}")
        return result

    def iter_classify(self, sources: Iterable[ImageSource], *, batch_size: int | None = None
                      ) -> Iterator[Result]:
        """Classify a stream of images; yields one result per input, in input order.

        ``decode_workers`` threads decode images (JPEGs at draft size) straight into a ring of
        preallocated model inputs, while the model runs on the images before them: up to two
        runs at once, of a few images each, on the one ONNX Runtime session. ``sources`` is
        read lazily and at most about ``batch_size`` images ahead of the model (never more
        than ``5 * batch_size`` ahead of the results), so memory stays bounded on endless
        streams. A bad input yields a :class:`Failure` in its slot; the stream goes on.

        Args:
            sources: paths, bytes, file objects, PIL images or arrays; any iterable, read once.
            batch_size: images decoded ahead of the model (default: the options'
                ``batch_size``, 32). The model itself runs on a few images at a time: see
                docs/performance.md.

        Raises:
            ConfigError: ``batch_size`` < 1.
        """
        return (r for r, _ in self.iter_arrays(sources, batch_size=batch_size))

    def iter_arrays(self, sources: Iterable[ImageSource], *, batch_size: int | None = None
                    ) -> Iterator[tuple[Result, ImageArrays | None]]:
        """Like :meth:`iter_classify`, with each result the model's outputs for that image as
        numpy arrays, for callers that compute on them (the bench, the open-set gate's
        export, a known-photo index) rather than rebuild them from a :class:`Prediction`.

        The arrays (``None`` for a :class:`Failure`) are the image's rows of
        :meth:`predict_arrays`: ``logits``, ``probabilities`` (calibrated, per
        ``card.labels``, float64), ``group_probabilities`` (per ``card.groups``), and the
        model's other outputs such as ``embedding`` (float32); plus ``familiarity`` (a float32
        scalar) when the open-set gate is on. They are views into the run's outputs: copy
        what you keep.

        Raises:
            ConfigError: ``batch_size`` < 1.
        """
        if batch_size is None:
            batch_size = self.options.batch_size
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(sources, Sized):  # no batch arrays larger than the input list
            batch_size = min(batch_size, max(1, len(sources)))
        return self._pipeline(iter(sources), batch_size)

    def _pipeline(self, it: Iterator[ImageSource], batch_size: int
                  ) -> Iterator[tuple[Result, ImageArrays | None]]:
        size = self.card.preprocess.input_size
        run = max(1, min(batch_size, _RUN_PIXELS // (size * size)))
        n_runs = self._runs
        # A ring of decoded model inputs: item i is written into row i % slots by a decode
        # thread, and the model reads runs of consecutive rows in place. Row i is reused for
        # item i + slots only once item i's result is out. slots is a multiple of run, so a
        # run never wraps around.
        slots = -(-(batch_size + n_runs * run) // run) * run
        ring = np.empty((slots, 3, size, size), np.float32)  # untouched rows cost no memory
        pending: deque[Future[_Prepared]] = deque()  # decoding, in input order
        # in the model, in input order
        running: deque[Future[list[tuple[Result, ImageArrays | None]]]] = deque()
        taken = queued = done = 0  # items read from sources / given to the model / yielded
        exhausted = False
        with ThreadPoolExecutor(self.decode_workers, thread_name_prefix="wv-decode") as decode, \
                ThreadPoolExecutor(n_runs, thread_name_prefix="wv-infer") as infer:

            def fill() -> None:
                nonlocal taken, exhausted
                while not exhausted and taken < done + slots:
                    try:
                        src = next(it)
                    except StopIteration:
                        exhausted = True
                        return
                    pending.append(decode.submit(self._prepare, taken, src,
                                                 ring[taken % slots]))
                    taken += 1

            try:
                fill()
                while pending or running:
                    while pending and len(running) < n_runs:
                        k = min(run, len(pending), slots - queued % slots)
                        chunk = [pending.popleft().result() for _ in range(k)]
                        row = queued % slots
                        running.append(infer.submit(self._infer, chunk, ring[row: row + k]))
                        queued += k
                    results = running.popleft().result()
                    done += len(results)
                    fill()
                    yield from results
            finally:
                for f in pending:
                    f.cancel()

    def classify_many(self, sources: Iterable[ImageSource], *, batch_size: int | None = None
                      ) -> list[Result]:
        """Like :meth:`iter_classify`, as a list."""
        return list(self.iter_classify(sources, batch_size=batch_size))


_CACHE: dict[tuple[Any, ...], Classifier] = {}
_CACHE_LOCK = threading.Lock()


def _model_key(model: Any) -> tuple[Any, ...]:
    """What identifies ``model`` for the classifier cache. A package folder is keyed with its
    card.json's mtime and size, so re-exporting a model to the same folder (a notebook
    retraining loop) is picked up; ``None`` is keyed with the current default model name."""
    if model is None:
        return ("<default>", default_model_name())
    text = os.fspath(model)
    try:
        st = (Path(text) / "card.json").stat()
    except (OSError, ValueError):
        return (text,)
    return (text, st.st_mtime_ns, st.st_size)


def _cached_classifier(model: Any, options: ClassifierOptions) -> Classifier:
    if isinstance(model, ModelPackage):
        return Classifier(model, options)
    # batch_size is a per-call setting of a built classifier: one cache entry for all
    key = (_model_key(model), options.replace(batch_size=32).cache_key())
    with _CACHE_LOCK:
        clf = _CACHE.get(key)
        if clf is None:
            if len(_CACHE) >= 4:
                _CACHE.pop(next(iter(_CACHE)))
            clf = _CACHE[key] = Classifier(model, options)
    return clf


def classify_image(source: ImageSource, model: Any = None, *,
                   options: ClassifierOptions | None = None, **opts: Any) -> Prediction:
    """Classify one image.

    Args:
        source: a path, bytes, a binary file object, a PIL image or an HxWx3 uint8 array.
        model: ``None`` (the default model), a name, a package folder or ``hf://org/name``.
        options: a :class:`~wildvision.options.ClassifierOptions`.
        **opts: options as keywords (``thresholds``, ``precision``, ``threads`` ...), applied
            on top of ``options``.

    Returns:
        A :class:`Prediction`.

    Raises:
        InvalidImageError: the input is not a readable image (typed subclasses for too-large
            and unsupported inputs).
        ModelNotInstalledError: no model given and no default model installed.
        UnknownModelError: an unknown model name.

    Example:
        >>> p = classify_image("listing.jpg")  # doctest: +SKIP
        >>> p.decision, p.group("ivory").probability  # doctest: +SKIP
        ('flag', 0.97)
    """
    return _cached_classifier(model, ClassifierOptions.build(options, **opts)).classify(source)


def iter_classify(sources: Iterable[ImageSource], model: Any = None, *,
                  batch_size: int | None = None, options: ClassifierOptions | None = None,
                  **opts: Any) -> Iterator[Result]:
    """Stream results (:class:`Prediction` or :class:`Failure`) in input order.

    ``options`` and ``**opts`` as for :func:`classify_image`; ``batch_size`` as for
    :meth:`Classifier.iter_classify`.
    """
    o = ClassifierOptions.build(options, **opts)
    return _cached_classifier(model, o).iter_classify(
        sources, batch_size=batch_size if batch_size is not None else o.batch_size)


def classify_images(sources: Sequence[ImageSource] | Iterable[ImageSource], model: Any = None, *,
                    batch_size: int | None = None, options: ClassifierOptions | None = None,
                    **opts: Any) -> list[Result]:
    """Classify many images; one :class:`Prediction` or :class:`Failure` per input, in order.

    A bad image never fails the batch: it yields a :class:`Failure` (source, error type,
    message) in its slot. ``options`` and ``**opts`` as for :func:`classify_image`.
    """
    return list(iter_classify(sources, model, batch_size=batch_size, options=options, **opts))
