"""Where models come from: built-in packages shipped in the wheel, a local folder, or a
Hugging Face Hub repository (``hf://org/name[@revision]``, ``[hub]`` extra).

The registry is data: every folder under ``wildvision/models/`` with a ``card.json`` is a
built-in model. Nothing is registered by import side effects.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from .errors import (
    MissingExtraError,
    ModelIntegrityError,
    ModelNotInstalledError,
    UnknownModelError,
)
from .modelpack import ModelPackage, load_package

__all__ = [
    "BUILTIN_DIR",
    "DEFAULT_MODEL",
    "builtin_models",
    "default_model_name",
    "installed_models",
    "load_model",
    "resolve_model",
]

DEFAULT_MODEL = "wildvision-base"
BUILTIN_DIR = Path(__file__).parent / "models"
_EXTRA_DIRS_ENV = "WILDVISION_MODELS_PATH"  # os.pathsep-separated folders of model packages


def _model_dirs() -> list[Path]:
    dirs = [BUILTIN_DIR]
    extra = os.environ.get(_EXTRA_DIRS_ENV, "")
    dirs += [Path(p) for p in extra.split(os.pathsep) if p]
    return dirs


def installed_models() -> dict[str, Path]:
    """Names of the installed model packages -> their folders: those shipped inside
    wildvision first, then those in the folders of ``$WILDVISION_MODELS_PATH`` (a name
    found twice keeps its first folder). ``$WILDVISION_MODELS_PATH`` may also name package
    folders themselves."""
    found: dict[str, Path] = {}
    for d in _model_dirs():
        if (d / "card.json").is_file():  # a package folder itself
            found.setdefault(d.name, d)
            continue
        try:
            subs = sorted(d.iterdir()) if d.is_dir() else []
        except OSError:  # unreadable: nothing installed there
            continue
        for sub in subs:
            if (sub / "card.json").is_file():
                found.setdefault(sub.name, sub)
    return found


def default_model_name() -> str:
    """The default model: ``$WILDVISION_DEFAULT_MODEL`` or ``wildvision-base``."""
    return os.environ.get("WILDVISION_DEFAULT_MODEL", DEFAULT_MODEL)


def _from_hub(spec: str) -> ModelPackage:
    repo = spec.removeprefix("hf://")
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as e:
        raise MissingExtraError("huggingface-hub", "hub", "models from the Hugging Face Hub") from e
    try:
        local = snapshot_download(
            repo_id=repo,
            revision=revision,
            # Only the package's own files: never pickles, whatever else the repo holds.
            allow_patterns=["card.json", "README.md", "*.onnx", "*.safetensors"],
        )
    except LocalEntryNotFoundError as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        why = (
            "offline mode is on (HF_HUB_OFFLINE=1)" if offline
            else "the Hub cannot be reached (offline)"
        )
        raise UnknownModelError(
            f"hub model {repo!r} is not in the local Hugging Face cache and {why}; download it "
            "once with network access, or pass a local package folder"
        ) from e
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise UnknownModelError(f"hub model {repo!r} could not be fetched: {e}") from e
    return load_package(local)


def load_model(spec: str | os.PathLike[str] | ModelPackage | None = None) -> ModelPackage:
    """Turn a model name, folder, hub id or package into a verified :class:`ModelPackage`
    (``wildvision.load_model``).

    Args:
        spec: ``None`` (the default model), a built-in name (``wildvision models list``), a
            folder holding ``card.json``, or ``hf://org/name[@revision]``.

    Raises:
        ModelNotInstalledError: ``spec`` is None and no default model is installed.
        UnknownModelError: no model of that name; the message lists the known names.
        ModelIntegrityError: the package is malformed or a file fails its sha256 check.
    """
    if isinstance(spec, ModelPackage):
        return spec
    installed = installed_models()
    if spec is None:
        name = default_model_name()
        if name not in installed:
            raise ModelNotInstalledError(
                f"no model given and the default model {name!r} is not installed; pass "
                "model=<name or folder> (installed: "
                f"{', '.join(sorted(installed)) or 'none'})"
            )
        return load_package(installed[name])
    text = os.fspath(spec)
    if text.startswith("hf://"):
        return _from_hub(text)
    path = Path(text)
    if path.is_dir():
        return load_package(path)
    if text in installed:
        return load_package(installed[text])
    if path.exists():
        raise ModelIntegrityError(f"{text}: a model must be a package folder with card.json")
    raise UnknownModelError(
        f"unknown model {text!r}; installed models: {', '.join(sorted(installed)) or 'none'}; "
        "or pass a package folder, or hf://org/name for a Hugging Face Hub repository"
    )


def resolve_model(spec: str | os.PathLike[str] | ModelPackage | None = None) -> ModelPackage:
    """Deprecated name of :func:`load_model`."""
    warnings.warn("wildvision.registry.resolve_model is deprecated; use load_model",
                  DeprecationWarning, stacklevel=2)
    return load_model(spec)


def builtin_models() -> dict[str, Path]:
    """Deprecated name of :func:`installed_models` (it always listed the
    ``$WILDVISION_MODELS_PATH`` packages too)."""
    warnings.warn("wildvision.registry.builtin_models is deprecated; use installed_models",
                  DeprecationWarning, stacklevel=2)
    return installed_models()
