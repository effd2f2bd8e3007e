"""The model package: a folder with ``card.json`` and ``model.onnx`` (optionally
``model.int8.onnx``, ``model.safetensors`` for retraining / the torch backend, ``README.md``).

``card.json`` holds everything needed to use the weights correctly and to audit a result:
name, version, labels and their groups, preprocessing, temperature, per-group thresholds,
the sha256 of every weight file, the metrics with the command and data that produced them.
Loading verifies every hash. Pickle-based files are never loaded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, ModelIntegrityError
from .preprocess import PreprocessConfig
from .taxonomy import FLAGGABLE_GROUPS, GROUP_NAMES, check_label_groups

if TYPE_CHECKING:
    from .openset import OpenSetGate

__all__ = [
    "CARD_FORMAT",
    "ModelCard",
    "ModelPackage",
    "Thresholds",
    "load_package",
    "sha256_file",
]

CARD_FORMAT = 1
# Raw tensor bytes that a model.onnx keeps outside itself (ONNX external data). Only the ones
# card.json lists (and hashes) are ever given to ONNX Runtime, from verified memory.
EXTERNAL_DATA_SUFFIXES = (".data",)  # not .bin: pytorch_model.bin is a pickle
WEIGHT_SUFFIXES = (".onnx", ".safetensors", ".npz", *EXTERNAL_DATA_SUFFIXES)  # .npz: no pickle


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds of one group on its calibrated probability.

    ``probability >= flag`` -> ``flag``; ``>= review`` -> ``review``; else ``pass``.
    """

    flag: float
    review: float

    def __post_init__(self) -> None:
        if not (0.0 <= self.review <= self.flag <= 1.0):
            raise ConfigError(
                f"thresholds need 0 <= review <= flag <= 1, got review={self.review}, "
                f"flag={self.flag}"
            )

    def decide(self, probability: float) -> str:
        if probability >= self.flag:
            return "flag"
        if probability >= self.review:
            return "review"
        return "pass"

    def to_dict(self) -> dict[str, float]:
        return {"flag": self.flag, "review": self.review}

    @staticmethod
    def parse(specs: Sequence[str]) -> dict[str, dict[str, float]]:
        """Per-group overrides from ``GROUP=FLAG`` or ``GROUP=FLAG:REVIEW`` strings (the
        ``--threshold`` option), e.g. ``["ivory=0.9:0.5"]`` -> ``{"ivory": {"flag": 0.9,
        "review": 0.5}}``; a later spec of a group replaces an earlier one. The values are
        checked against a model's groups and defaults when a classifier applies them.

        Raises:
            ConfigError: a spec that does not have that form.
        """
        out: dict[str, dict[str, float]] = {}
        for v in specs:
            try:
                group, spec = v.split("=", 1)
                parts = spec.split(":")
                entry = {"flag": float(parts[0])}
                if len(parts) > 1:
                    entry["review"] = float(parts[1])
                out[group] = entry
            except ValueError:
                raise ConfigError(
                    f"--threshold {v!r}: expected GROUP=FLAG or GROUP=FLAG:REVIEW, e.g. "
                    "ivory=0.9:0.5"
                ) from None
        return out


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelCard:
    """The parsed ``card.json`` of a model package.

    Unknown top-level keys are kept in ``extra`` so newer cards still load.
    """

    name: str
    version: str
    labels: tuple[str, ...]
    label_groups: Mapping[str, str]
    preprocess: PreprocessConfig
    temperature: float = 1.0
    thresholds: Mapping[str, Thresholds] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)
    arch: str = ""
    outputs: tuple[str, ...] = ("logits", "embedding")
    license: str = "Apache-2.0"
    description: str = ""
    metrics: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not self.version:
            raise ModelIntegrityError("card.json: name and version are required")
        if len(set(self.labels)) != len(self.labels) or not self.labels:
            raise ModelIntegrityError(f"card.json of {self.name}: labels must be unique, non-empty")
        missing = [lab for lab in self.labels if lab not in self.label_groups]
        if missing:
            raise ModelIntegrityError(
                f"card.json of {self.name}: labels without a group: {missing}"
            )
        bad = {g for g in self.label_groups.values() if g not in GROUP_NAMES}
        if bad:
            raise ModelIntegrityError(f"card.json of {self.name}: unknown groups {sorted(bad)}")
        if not self.temperature > 0:
            raise ModelIntegrityError(f"card.json of {self.name}: temperature must be > 0")
        for name in self.files:
            if Path(name).name != name or not name.endswith(WEIGHT_SUFFIXES):
                raise ModelIntegrityError(
                    f"card.json of {self.name}: file {name!r} is not a plain "
                    f"{'/'.join(WEIGHT_SUFFIXES)} file name"
                )
        try:
            # the card's own mapping, checked against the built-in taxonomy; nothing global
            check_label_groups((lab, self.label_groups[lab]) for lab in self.labels)
        except ConfigError as e:
            raise ModelIntegrityError(f"card.json of {self.name}: {e}") from None

    @property
    def groups(self) -> tuple[str, ...]:
        """Groups this model can output, in taxonomy order."""
        present = set(self.label_groups[lab] for lab in self.labels)
        return tuple(g for g in GROUP_NAMES if g in present)

    def threshold(self, group: str) -> Thresholds:
        """Thresholds of ``group`` (flaggable groups without an entry get flag 0.5/review 0.3)."""
        if group in self.thresholds:
            return self.thresholds[group]
        return Thresholds(flag=0.5, review=0.3) if group in FLAGGABLE_GROUPS else Thresholds(1, 1)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        try:
            fmt = int(data.get("card_format", CARD_FORMAT))
            if fmt > CARD_FORMAT:
                raise ModelIntegrityError(
                    f"card.json format {fmt} is newer than this wildvision reads ({CARD_FORMAT}); "
                    "upgrade wildvision"
                )
            known = {
                "card_format", "name", "version", "labels", "label_groups", "preprocess",
                "temperature", "thresholds", "files", "arch", "outputs", "license",
                "description", "metrics", "training",
            }
            return cls(
                name=str(data["name"]),
                version=str(data["version"]),
                labels=tuple(data["labels"]),
                label_groups=dict(data["label_groups"]),
                preprocess=PreprocessConfig.from_dict(data.get("preprocess", {})),
                temperature=float(data.get("temperature", 1.0)),
                thresholds={
                    g: Thresholds(float(t["flag"]), float(t["review"]))
                    for g, t in dict(data.get("thresholds", {})).items()
                },
                files=dict(data.get("files", {})),
                arch=str(data.get("arch", "")),
                outputs=tuple(data.get("outputs", ("logits", "embedding"))),
                license=str(data.get("license", "")),
                description=str(data.get("description", "")),
                metrics=dict(data.get("metrics", {})),
                training=dict(data.get("training", {})),
                extra={k: v for k, v in data.items() if k not in known},
            )
        except KeyError as e:
            raise ModelIntegrityError(f"card.json: missing required key {e}") from None
        except (TypeError, ValueError, AttributeError) as e:
            if isinstance(e, ModelIntegrityError):
                raise
            raise ModelIntegrityError(f"card.json: invalid value ({e})") from e

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "card_format": CARD_FORMAT,
            "name": self.name,
            "version": self.version,
            "arch": self.arch,
            "description": self.description,
            "license": self.license,
            "labels": list(self.labels),
            "label_groups": dict(self.label_groups),
            "preprocess": self.preprocess.to_dict(),
            "temperature": self.temperature,
            "thresholds": {g: t.to_dict() for g, t in self.thresholds.items()},
            "outputs": list(self.outputs),
            "files": dict(self.files),
            "metrics": dict(self.metrics),
            "training": dict(self.training),
        }
        d.update(self.extra)
        return d

    def with_updates(self, **changes: Any) -> ModelCard:
        return replace(self, **changes)


@dataclass(frozen=True)
class ModelPackage:
    """A verified model package on disk."""

    path: Path
    card: ModelCard

    def file(self, name: str) -> Path:
        """Path of a weight file listed in the card."""
        if name not in self.card.files:
            raise ModelIntegrityError(
                f"model {self.card.name}: no file {name!r} in the package "
                f"(has: {', '.join(sorted(self.card.files)) or 'none'})"
            )
        return self.path / name

    def read_verified(self, name: str) -> bytes:
        """The bytes of a file listed in the card, checked against its sha256 as read: what
        the caller gets is what was verified, whatever happens to the file afterwards.

        Raises:
            ModelIntegrityError: the file is not listed, unreadable or does not match.
        """
        path = self.file(name)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ModelIntegrityError(f"{path}: cannot read ({e.strerror or e})") from e
        actual = hashlib.sha256(data).hexdigest()
        expected = self.card.files[name]
        if actual != expected:
            raise ModelIntegrityError(
                f"{path}: sha256 mismatch (card says {expected[:12]}…, file is {actual[:12]}…); "
                "the package is corrupt or was modified"
            )
        return data

    def external_data(self) -> dict[str, bytes]:
        """The ONNX external-data files the card lists (``*.data``), verified."""
        return {name: self.read_verified(name) for name in sorted(self.card.files)
                if name.endswith(EXTERNAL_DATA_SUFFIXES)}

    def onnx_file(self, precision: str = "fp32") -> Path:
        if precision == "fp32":
            return self.file("model.onnx")
        if precision == "int8":
            return self.file("model.int8.onnx")
        raise ConfigError(f"precision must be 'fp32' or 'int8', got {precision!r}")

    def familiarity(self) -> OpenSetGate | None:
        """Old name of :meth:`open_set_gate`."""
        return self.open_set_gate()

    def open_set_gate(self) -> OpenSetGate | None:
        """The open-set gate (:mod:`wildvision.openset`) when the package has one: the card's
        ``familiarity`` record and ``familiarity.npz``; groups whose card threshold is ``-1``
        are not gated (``None`` when none is)."""
        from .openset import FAMILIARITY_FILE, load_gate

        rec = self.card.extra.get("familiarity")
        if not isinstance(rec, dict) or FAMILIARITY_FILE not in self.card.files:
            return None
        raw = rec.get("thresholds")
        try:
            thresholds = {str(g): float(t) for g, t in raw.items()}  # type: ignore[union-attr]
        except (AttributeError, TypeError, ValueError) as e:
            raise ModelIntegrityError(f"card.json of {self.card.name}: familiarity needs "
                                      f"numeric per-group thresholds ({e})") from e
        thresholds = {g: t for g, t in thresholds.items() if t > -1.0}
        if not thresholds:
            return None
        return load_gate(self.file(FAMILIARITY_FILE), thresholds)

    @property
    def precisions(self) -> tuple[str, ...]:
        out = []
        if "model.onnx" in self.card.files:
            out.append("fp32")
        if "model.int8.onnx" in self.card.files:
            out.append("int8")
        return tuple(out)


def load_package(path: str | Path, *, verify: bool = True) -> ModelPackage:
    """Load and verify a model package folder.

    Args:
        path: the folder holding ``card.json``.
        verify: check the sha256 of every file listed in the card (default True).

    Raises:
        ModelIntegrityError: no/invalid card, a listed file missing or with a wrong hash.
    """
    root = Path(path)
    card_path = root / "card.json"
    if not card_path.is_file():
        raise ModelIntegrityError(f"{root}: not a model package (no card.json)")
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise ModelIntegrityError(f"{card_path}: unreadable card ({e})") from e
    except RecursionError:
        raise ModelIntegrityError(f"{card_path}: unreadable card (JSON nested too deeply)"
                                  ) from None
    if not isinstance(data, dict):
        raise ModelIntegrityError(f"{card_path}: card must be a JSON object")
    card = ModelCard.from_dict(data)
    if "model.onnx" not in card.files:
        raise ModelIntegrityError(f"{card_path}: the card lists no model.onnx")
    for name, expected in card.files.items():
        fpath = root / name
        if not fpath.is_file():
            raise ModelIntegrityError(f"{root}: file {name} listed in card.json is missing")
        if verify:
            actual = sha256_file(fpath)
            if actual != expected:
                raise ModelIntegrityError(
                    f"{fpath}: sha256 mismatch (card says {expected[:12]}…, file is "
                    f"{actual[:12]}…); the package is corrupt or was modified"
                )
    return ModelPackage(root, card)
