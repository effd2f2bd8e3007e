"""Training recipes: a YAML file describing one training run (see ``training/README.md``).

A recipe is parsed into frozen dataclasses. Every problem found (an unknown key anywhere, with
the closest valid key suggested; a wrong type; an out-of-range value) is collected and raised
as ONE :class:`~wildvision.errors.ConfigError` listing them all, before any work starts.

This module needs only the stdlib and pyyaml.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from ..errors import ConfigError, MissingExtraError

__all__ = [
    "AugmentConfig",
    "CalibrationConfig",
    "EarlyStopping",
    "FreezeConfig",
    "HeadOnlyConfig",
    "LabelsConfig",
    "OpenSetConfig",
    "Recipe",
    "TrunkCacheConfig",
    "load_recipe",
    "parse_recipe",
]


@dataclass(frozen=True)
class FreezeConfig:
    """The freezing schedule.

    Attributes:
        head_epochs: first epochs train only the linear head (backbone frozen, BN in eval).
        top_blocks: afterwards, train the top N block stages of the backbone (plus its final
            conv/norm) and the head; ``-1`` trains the whole backbone. EfficientNet/MobileNet
            families (timm models with ``blocks``) only, for ``N >= 0``.
        unfreeze_all_at: epoch (1-based) from which the whole backbone trains; ``null`` never.
    """

    head_epochs: int = 1
    top_blocks: int = 2
    unfreeze_all_at: Union[int, None] = None


@dataclass(frozen=True)
class TrunkCacheConfig:
    """Caching the frozen trunk's output (the backbone below the trainable top blocks).

    While the lower blocks are frozen their output depends only on the input, so it is
    computed once per image and augmented view, then the top blocks and head train on the
    cache. ``views`` augmented views are cached per training image; each epoch uses one.

    Attributes:
        enabled: use the cache when the schedule allows it (top_blocks >= 0, never unfrozen).
        views: augmented views cached per training image.
        dtype: ``float16`` (half the memory) or ``float32``.
    """

    enabled: bool = True
    views: int = 2
    dtype: str = "float16"


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation (albumentations, on the uint8 image, before ``normalize``).

    Attributes:
        scale: RandomResizedCrop area range.
        ratio: RandomResizedCrop aspect-ratio range.
        hflip: probability of a horizontal flip.
        color_jitter: brightness/contrast/saturation strength; 0 disables.
        hue: hue jitter strength.
        color_p: probability of the colour jitter.
        rotate: maximum rotation in degrees; 0 disables.
        rotate_p: probability of the rotation.
        to_gray: probability of greyscale.
        jpeg_quality: JPEG re-compression quality range.
        jpeg_p: probability of JPEG re-compression.
    """

    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (0.75, 1.3333)
    hflip: float = 0.5
    color_jitter: float = 0.2
    hue: float = 0.02
    color_p: float = 0.8
    rotate: float = 10.0
    rotate_p: float = 0.3
    to_gray: float = 0.05
    jpeg_quality: tuple[int, int] = (50, 95)
    jpeg_p: float = 0.3


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when the monitored validation metric has not improved by ``min_delta`` for
    ``patience`` epochs. The best epoch's weights are exported.

    ``monitor`` is one of :data:`MONITORS`: ``val_macro_f1`` (fine labels, argmax),
    ``val_group_macro_f1`` (the fine argmax mapped to its group; what the model is used for)
    or ``val_loss`` (cross-entropy without label smoothing; lower is better, and far less noisy
    than an F1 over classes with a handful of validation images)."""

    patience: int = 3
    min_delta: float = 0.0
    monitor: str = "val_macro_f1"


MONITORS = ("val_macro_f1", "val_group_macro_f1", "val_loss")


@dataclass(frozen=True)
class CalibrationConfig:
    """Temperature scaling and per-group thresholds, chosen on validation.

    Attributes:
        flag_precision: target precision of ``flag`` per group.
        review_precision: target precision of ``review``.
        fallback_flag, fallback_review: thresholds for a group without validation positives
            or whose target is out of reach (the card says which groups and why).
        min_flag, min_review: floors for thresholds chosen on validation.
        ece_bins: bins of the expected calibration error.
    """

    flag_precision: float = 0.95
    review_precision: float = 0.80
    fallback_flag: float = 0.5
    fallback_review: float = 0.3
    min_flag: float = 0.5
    min_review: float = 0.2
    ece_bins: int = 15


@dataclass(frozen=True)
class HeadOnlyConfig:
    """The ``--head-only`` fast path: a linear head on cached backbone embeddings.

    Attributes:
        l2: L2 strengths tried (on standardised embeddings); the one with the best validation
            macro-F1 (then NLL) wins.
        max_iter: L-BFGS iterations per fit.
        views: embeddings per training image: 1 = the plain eval view only; more adds
            augmented views.
        balance: ``loss`` (class-weighted loss) or ``none``.
    """

    l2: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    max_iter: int = 100
    views: int = 1
    balance: str = "loss"


@dataclass(frozen=True)
class OpenSetConfig:
    """The open-set gate (:mod:`wildvision.openset`) added to the package after training:
    a flag on a photo unlike every training photo becomes ``review``.

    Attributes:
        enabled: build it (needs a ``val`` split in the manifest; skipped with a note if not).
        quantile: share of the correctly flagged validation images allowed below the threshold.
        dims: width of the stored projection of the training embeddings.
    """

    enabled: bool = True
    quantile: float = 0.01
    dims: int = 256


@dataclass(frozen=True)
class LabelsConfig:
    """Which labels the model learns.

    Attributes:
        column: manifest column holding the class: ``fine_label`` (default) or ``label``.
        include: train only these labels (default: every label in the train split).
        exclude: drop these labels (their rows are not used at all).
        merge: ``{old: new}`` relabel rows before anything else.
        new: ``{label: group}`` fine labels not in the taxonomy (registered for this run and
            recorded in the card).
        min_train: a class needs at least this many training images.
    """

    column: str = "fine_label"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    merge: Mapping[str, str] = field(default_factory=dict)
    new: Mapping[str, str] = field(default_factory=dict)
    min_train: int = 1


@dataclass(frozen=True)
class Recipe:
    """One training run. See ``training/README.md`` for the documented schema.

    ``text`` keeps the recipe file verbatim (it goes into the model card); ``path`` is where
    it was read from.
    """

    name: str
    version: str = "0.1.0"
    description: str = ""
    backbone: str = "tf_efficientnet_lite0"
    weights: str = "auto"
    weights_license: str = ""
    input_size: Union[int, None] = None
    crop_pct: Union[float, None] = None
    interpolation: Union[str, None] = None
    resize_mode: str = "center_crop"
    drop_rate: float = 0.2
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    backbone_lr_mult: float = 0.1
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.1
    balance: str = "sampler"
    sampler_power: float = 0.5
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    trunk_cache: TrunkCacheConfig = field(default_factory=TrunkCacheConfig)
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    head_only: HeadOnlyConfig = field(default_factory=HeadOnlyConfig)
    open_set: OpenSetConfig = field(default_factory=OpenSetConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    auto_val_fraction: float = 0.2
    limit_per_class: Union[int, None] = None
    parity_tolerance: float = 1e-4
    parity_images: int = 16
    eval_batch_size: int = 64
    workers: int = 0
    threads: Union[int, None] = None
    seed: int = 0
    license: str = "Apache-2.0"
    intended_use: str = ""
    limitations: str = ""
    data_sources: str = ""
    text: str = field(default="", compare=False, repr=False)
    path: str = field(default="", compare=False)

    @property
    def sha256(self) -> str:
        """sha256 of the recipe text (empty-string hash for recipes built in code)."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def with_overrides(self, **changes: Any) -> Recipe:
        """A copy with top-level fields changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


_SECTIONS: dict[str, type] = {
    "freeze": FreezeConfig,
    "trunk_cache": TrunkCacheConfig,
    "augmentation": AugmentConfig,
    "early_stopping": EarlyStopping,
    "calibration": CalibrationConfig,
    "head_only": HeadOnlyConfig,
    "open_set": OpenSetConfig,
    "labels": LabelsConfig,
}
_INTERNAL = {"text", "path"}


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Check/convert ``value`` to annotation ``tp``; append a message and return None on error."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where, problems)
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{where}: expected true/false, got {value!r}")
        return None
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append(f"{where}: expected an integer, got {value!r}")
        return None
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        problems.append(f"{where}: expected a number, got {value!r}")
        return None
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # version: 1.0 in YAML is a float
        problems.append(f"{where}: expected a string, got {value!r}")
        return None
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            problems.append(f"{where}: expected a list, got {value!r}")
            return None
        if len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(v, args[0], f"{where}[{i}]", problems) for i, v in enumerate(value)]
            return tuple(items)
        if len(value) != len(args):
            problems.append(f"{where}: expected {len(args)} values, got {len(value)}")
            return None
        return tuple(_coerce(v, a, f"{where}[{i}]", problems)
                     for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin in (Mapping, dict) or tp is Mapping:
        if not isinstance(value, Mapping):
            problems.append(f"{where}: expected a mapping, got {value!r}")
            return None
        kt, vt = args if args else (str, str)
        return {_coerce(k, kt, f"{where} key", problems): _coerce(v, vt, f"{where}.{k}", problems)
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, problems)
    problems.append(f"{where}: unsupported type {_type_name(tp)}")  # pragma: no cover
    return None


def _build(cls: Any, data: Any, where: str, problems: list[str]) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        problems.append(f"{where or 'recipe'}: expected a mapping, got {data!r}")
        return cls() if cls is not Recipe else None
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls) if f.name not in _INTERNAL]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in valid:
            problems.append(f"unknown key {path!r}{_suggest(str(key), valid)}")
            continue
        n_before = len(problems)
        v = _coerce(value, hints[key], path, problems)
        if len(problems) == n_before:
            kwargs[key] = v
    missing = [f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               and f.name not in kwargs and f.name not in data]
    for name in missing:
        problems.append(f"missing required key {(where + '.' if where else '') + name!r}")
    if missing or len(kwargs) < len([k for k in data if k in valid]):
        return None
    return cls(**kwargs)


def _check_values(r: Recipe, problems: list[str]) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            problems.append(msg)

    need(bool(r.name.strip()), "name: must not be empty")
    need(r.input_size is None or 32 <= r.input_size <= 1024,
         f"input_size: must be in [32, 1024], got {r.input_size}")
    need(r.crop_pct is None or 0.1 <= r.crop_pct <= 1.0,
         f"crop_pct: must be in [0.1, 1], got {r.crop_pct}")
    need(r.epochs >= 1, f"epochs: must be >= 1, got {r.epochs}")
    need(r.batch_size >= 1, f"batch_size: must be >= 1, got {r.batch_size}")
    need(r.eval_batch_size >= 1, f"eval_batch_size: must be >= 1, got {r.eval_batch_size}")
    need(r.lr > 0, f"lr: must be > 0, got {r.lr}")
    need(r.backbone_lr_mult > 0, f"backbone_lr_mult: must be > 0, got {r.backbone_lr_mult}")
    need(r.weight_decay >= 0, f"weight_decay: must be >= 0, got {r.weight_decay}")
    need(r.warmup_epochs >= 0, f"warmup_epochs: must be >= 0, got {r.warmup_epochs}")
    need(0 <= r.min_lr_ratio <= 1, f"min_lr_ratio: must be in [0, 1], got {r.min_lr_ratio}")
    need(0 <= r.label_smoothing < 1, f"label_smoothing: must be in [0, 1), got "
         f"{r.label_smoothing}")
    need(0 <= r.drop_rate < 1, f"drop_rate: must be in [0, 1), got {r.drop_rate}")
    need(r.balance in ("sampler", "loss", "none"),
         f"balance: must be sampler, loss or none, got {r.balance!r}")
    need(0 <= r.sampler_power <= 1, f"sampler_power: must be in [0, 1], got {r.sampler_power}")
    need(0 < r.auto_val_fraction < 1,
         f"auto_val_fraction: must be in (0, 1), got {r.auto_val_fraction}")
    need(r.limit_per_class is None or r.limit_per_class >= 1,
         f"limit_per_class: must be >= 1, got {r.limit_per_class}")
    need(r.parity_tolerance > 0, f"parity_tolerance: must be > 0, got {r.parity_tolerance}")
    need(r.parity_images >= 1, f"parity_images: must be >= 1, got {r.parity_images}")
    need(r.workers >= 0, f"workers: must be >= 0, got {r.workers}")
    need(r.threads is None or r.threads >= 1, f"threads: must be >= 1, got {r.threads}")
    f = r.freeze
    need(f.head_epochs >= 0, f"freeze.head_epochs: must be >= 0, got {f.head_epochs}")
    need(f.top_blocks >= -1, f"freeze.top_blocks: must be >= -1, got {f.top_blocks}")
    need(f.unfreeze_all_at is None or f.unfreeze_all_at >= 1,
         f"freeze.unfreeze_all_at: must be >= 1 or null, got {f.unfreeze_all_at}")
    t = r.trunk_cache
    need(t.views >= 1, f"trunk_cache.views: must be >= 1, got {t.views}")
    need(t.dtype in ("float16", "float32"),
         f"trunk_cache.dtype: must be float16 or float32, got {t.dtype!r}")
    a = r.augmentation
    need(0 < a.scale[0] <= a.scale[1] <= 1, f"augmentation.scale: need 0 < lo <= hi <= 1, got "
         f"{a.scale}")
    need(0 < a.ratio[0] <= a.ratio[1], f"augmentation.ratio: need 0 < lo <= hi, got {a.ratio}")
    for name in ("hflip", "color_p", "rotate_p", "to_gray", "jpeg_p"):
        v = getattr(a, name)
        need(0 <= v <= 1, f"augmentation.{name}: a probability in [0, 1], got {v}")
    need(1 <= a.jpeg_quality[0] <= a.jpeg_quality[1] <= 100,
         f"augmentation.jpeg_quality: need 1 <= lo <= hi <= 100, got {a.jpeg_quality}")
    need(a.color_jitter >= 0 and a.hue >= 0 and a.rotate >= 0,
         "augmentation: color_jitter, hue and rotate must be >= 0")
    o = r.open_set
    need(0 <= o.quantile < 1, f"open_set.quantile: in [0, 1), got {o.quantile}")
    need(o.dims >= 1, f"open_set.dims: must be >= 1, got {o.dims}")
    e = r.early_stopping
    need(e.patience >= 1, f"early_stopping.patience: must be >= 1, got {e.patience}")
    need(e.monitor in MONITORS,
         f"early_stopping.monitor: one of {', '.join(MONITORS)}, got {e.monitor!r}")
    need(e.min_delta >= 0, f"early_stopping.min_delta: must be >= 0, got {e.min_delta}")
    c = r.calibration
    need(0 < c.review_precision <= c.flag_precision <= 1,
         "calibration: need 0 < review_precision <= flag_precision <= 1, got "
         f"{c.review_precision}, {c.flag_precision}")
    need(0 <= c.fallback_review <= c.fallback_flag <= 1,
         "calibration: need 0 <= fallback_review <= fallback_flag <= 1")
    need(0 <= c.min_review <= 1 and 0 <= c.min_flag <= 1,
         "calibration: min_flag and min_review must be in [0, 1]")
    need(c.ece_bins >= 1, f"calibration.ece_bins: must be >= 1, got {c.ece_bins}")
    h = r.head_only
    need(len(h.l2) >= 1 and all(v is not None and v >= 0 for v in h.l2),
         "head_only.l2: a non-empty list of numbers >= 0")
    need(h.max_iter >= 1, f"head_only.max_iter: must be >= 1, got {h.max_iter}")
    need(h.views >= 1, f"head_only.views: must be >= 1, got {h.views}")
    need(h.balance in ("loss", "none"), f"head_only.balance: loss or none, got {h.balance!r}")
    lab = r.labels
    need(lab.column in ("fine_label", "label"),
         f"labels.column: fine_label or label, got {lab.column!r}")
    need(lab.min_train >= 1, f"labels.min_train: must be >= 1, got {lab.min_train}")


def parse_recipe(data: Any, *, text: str = "", path: str = "") -> Recipe:
    """Build a :class:`Recipe` from parsed YAML.

    Raises:
        ConfigError: every problem found, in one message.
    """
    problems: list[str] = []
    recipe = _build(Recipe, data, "", problems)
    if recipe is not None and not problems:
        _check_values(recipe, problems)
    if problems or recipe is None:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}invalid recipe ({len(problems)} problem"
                          f"{'s' if len(problems) != 1 else ''}):\n  - "
                          + "\n  - ".join(problems))
    out: Recipe = dataclasses.replace(recipe, text=text, path=path)
    return out


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and validate a recipe YAML file.

    Args:
        path: the recipe file (e.g. ``training/recipes/wildvision-base-v2.yaml``).

    Returns:
        The recipe; its ``text`` is the file verbatim.

    Raises:
        ConfigError: missing or unparsable file, or any invalid key/value (all listed).
        MissingExtraError: pyyaml is not installed.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: recipe not found")
    text = p.read_text(encoding="utf-8")
    try:
        import yaml
    except ImportError:
        raise MissingExtraError("pyyaml", "train", "reading recipes") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML ({e})") from e
    return parse_recipe(data, text=text, path=str(p))
