"""Where models come from: built-in packages shipped in the wheel, a local folder, or a
Hugging Face Hub repository (``hf://org/name[@revision]``, ``[hub]`` extra).

The registry is data: every folder under ``wildvision/models/`` with a ``card.json`` is a
built-in model. Nothing is registered by import side effects.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from .errors import (
    ConfigError,
    HubError,
    MissingExtraError,
    ModelIntegrityError,
    ModelNotInstalledError,
    UnknownModelError,
)
from .modelpack import WEIGHT_SUFFIXES, ModelPackage, load_package

__all__ = [
    "BUILTIN_DIR",
    "DEFAULT_MODEL",
    "builtin_models",
    "default_model_name",
    "hub_allow_patterns",
    "installed_models",
    "load_model",
    "package_files",
    "pull_from_hub",
    "push_to_hub",
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


def hub_allow_patterns() -> list[str]:
    """What is fetched from a Hub repository: ``card.json``, ``README.md`` and every kind of
    file a card may list (:data:`~wildvision.modelpack.WEIGHT_SUFFIXES`: weights and the
    open-set gate's arrays); never a pickle, whatever else the repository holds."""
    return ["card.json", "README.md", *(f"*{suffix}" for suffix in WEIGHT_SUFFIXES)]


def package_files(package: ModelPackage) -> list[str]:
    """The files that make up ``package``: ``card.json``, ``README.md`` (when present) and
    every file its card lists, in that order (what :func:`push_to_hub` uploads)."""
    names = ["card.json"]
    if (package.path / "README.md").is_file():
        names.append("README.md")
    return names + sorted(package.card.files)


def _upload_patterns(package: ModelPackage) -> list[str]:
    """``allow_patterns`` for ``upload_folder``: the package's own files, by exact name."""
    return [glob.escape(name) for name in package_files(package)]


def _hub_spec(spec: str) -> tuple[str, str | None]:
    """``hf://org/name[@revision]`` -> ``(org/name, revision)``."""
    if not spec.startswith("hf://"):
        raise ConfigError(f"{spec!r}: a Hub repository is written hf://org/name[@revision]")
    repo = spec.removeprefix("hf://")
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    if not repo or repo.count("/") > 1 or not all(repo.split("/")) or revision == "":
        raise ConfigError(f"{spec!r}: a Hub repository is written hf://org/name[@revision]")
    return repo, revision


def _from_hub(spec: str) -> ModelPackage:
    repo, revision = _hub_spec(spec)
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as e:
        raise MissingExtraError("huggingface-hub", "hub", "models from the Hugging Face Hub") from e
    try:
        local = snapshot_download(
            repo_id=repo,
            revision=revision,
            allow_patterns=hub_allow_patterns(),
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


def push_to_hub(package_dir: str | os.PathLike[str], spec: str, *, private: bool = False,
                message: str | None = None) -> str:
    """Upload a model package to a Hugging Face Hub repository (``[hub]`` extra).

    The package is verified first (every listed file against its sha256) and only its own
    files are uploaded (:func:`package_files`): nothing else in the folder, never a pickle.
    Files of the package's kinds that the repository holds and the package does not list (a
    previous version's ``model.int8.onnx``) are deleted in the same commit, so that the
    repository holds exactly this package. The repository is created when missing.

    Args:
        package_dir: the package folder.
        spec: ``hf://org/name`` (``@revision``: a branch, created when missing).
        private: create the repository private.
        message: the commit message (default: ``"<name> <version>"``).

    Returns:
        The URL of the commit.

    Raises:
        ModelIntegrityError: the package does not verify (nothing is uploaded).
        ConfigError: ``spec`` is not ``hf://org/name[@revision]``.
        MissingExtraError: huggingface-hub is not installed.
        HubError: the Hub refused or could not be reached (offline mode included).
    """
    repo, revision = _hub_spec(spec)
    package = load_package(Path(package_dir))
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError as e:
        raise MissingExtraError("huggingface-hub", "hub", "pushing to the Hugging Face Hub") from e
    card = package.card
    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo, branch=revision, repo_type="model", exist_ok=True)
        info = api.upload_folder(
            repo_id=repo, repo_type="model", revision=revision, folder_path=package.path,
            allow_patterns=_upload_patterns(package),
            delete_patterns=hub_allow_patterns(),
            commit_message=message or f"{card.name} {card.version}",
        )
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise HubError(f"pushing {package.path} to hf://{repo} failed: {e}") from e
    return str(info.commit_url)


def pull_from_hub(spec: str, out: str | os.PathLike[str] | None = None) -> ModelPackage:
    """Download a model package from the Hub into the local Hugging Face cache, verify it,
    and optionally copy its files into the folder ``out`` (which must not exist yet; written
    under a temporary name and renamed, so that it is complete or absent).

    Raises:
        UnknownModelError: not in the cache and the Hub cannot be reached, or no such repo.
        ModelIntegrityError: the package does not verify.
        ConfigError: ``out`` exists.
    """
    package = _from_hub(spec)
    if out is None:
        return package
    dest = Path(out)
    if dest.exists():
        raise ConfigError(f"{dest} exists; pull into a new folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for name in package_files(package):
            shutil.copyfile(package.path / name, tmp / name)
        load_package(tmp)  # the copy verifies too
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_package(dest, verify=False)  # just verified


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
