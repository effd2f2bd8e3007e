"""Model resolution: folders, installed names, the default model, and Hugging Face Hub repos
through huggingface_hub's real offline cache lookup."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wildvision.errors import ModelIntegrityError, ModelNotInstalledError, UnknownModelError
from wildvision.modelpack import load_package
from wildvision.registry import (
    DEFAULT_MODEL,
    default_model_name,
    installed_models,
    load_model,
)


@pytest.fixture
def models_path(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of installed packages (``$WILDVISION_MODELS_PATH``) holding ``tiny-copy``."""
    root = tmp_path / "models"
    shutil.copytree(tiny_model_dir, root / "tiny-copy")
    (root / "not-a-model").mkdir()
    monkeypatch.setenv("WILDVISION_MODELS_PATH", str(root))
    return root


def test_resolve_folder_path_and_package(tiny_model_dir: Path) -> None:
    by_str = load_model(str(tiny_model_dir))
    by_path = load_model(tiny_model_dir)
    assert by_str.card == by_path.card
    assert by_str.card.name == "tiny-test"
    assert load_model(by_path) is by_path


def test_installed_names(models_path: Path) -> None:
    installed = installed_models()
    assert installed["tiny-copy"] == models_path / "tiny-copy"
    assert "not-a-model" not in installed
    assert load_model("tiny-copy").path == models_path / "tiny-copy"


def test_unknown_model_lists_the_names(models_path: Path) -> None:
    with pytest.raises(UnknownModelError) as info:
        load_model("no-such-model")
    msg = str(info.value)
    assert "'no-such-model'" in msg and "tiny-copy" in msg and "hf://" in msg
    assert isinstance(info.value, LookupError)


def test_an_existing_file_is_not_a_package(tmp_path: Path) -> None:
    f = tmp_path / "model.onnx"
    f.write_bytes(b"onnx")
    with pytest.raises(ModelIntegrityError, match=r"package folder with card\.json"):
        load_model(str(f))


def test_default_model(models_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WILDVISION_DEFAULT_MODEL", raising=False)
    assert default_model_name() == DEFAULT_MODEL == "wildvision-base"
    monkeypatch.setenv("WILDVISION_DEFAULT_MODEL", "no-such-default")
    with pytest.raises(ModelNotInstalledError) as info:
        load_model(None)
    msg = str(info.value)
    assert "'no-such-default' is not installed" in msg and "model=" in msg
    assert "tiny-copy" in msg  # what is installed
    monkeypatch.setenv("WILDVISION_DEFAULT_MODEL", "tiny-copy")
    assert load_model(None).card.name == "tiny-test"


def _hf_cache(root: Path, repo: str, package: Path, commit: str) -> None:
    """Lay out a Hugging Face Hub cache entry as huggingface_hub writes it: content-addressed
    blobs, a snapshot folder of symlinks per commit, and ``refs/main``."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    blobs, snap = repo_dir / "blobs", repo_dir / "snapshots" / commit
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in sorted(package.iterdir()):
        data = f.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (snap / "model.pt").write_bytes(b"a pickle that must never be loaded")
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)


def test_hub_model_from_the_offline_cache(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``hf://org/name`` goes through huggingface_hub.snapshot_download, offline, against a
    cache built here. It runs in a fresh interpreter because huggingface_hub reads
    HF_HUB_CACHE and HF_HUB_OFFLINE once, at import."""
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hf-cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    _hf_cache(cache, "wildvision-test/tiny", tiny_model_dir, commit)
    code = textwrap.dedent(
        f"""
        import sys
        from wildvision.errors import UnknownModelError
        from wildvision.registry import load_model
        pkg = load_model("hf://wildvision-test/tiny")
        assert pkg.card.name == "tiny-test", pkg.card
        assert pkg.path.name == {commit!r}, pkg.path
        pinned = load_model("hf://wildvision-test/tiny@{commit}")
        assert pinned.path == pkg.path
        try:
            load_model("hf://nobody/not-cached")
        except UnknownModelError as e:
            print("UNKNOWN:", e)
        else:
            sys.exit("no error for a repo missing from the cache")
        print("OK", pkg.path)
        """
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf-home")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout
    unknown = next(line for line in out.stdout.splitlines() if line.startswith("UNKNOWN:"))
    assert "nobody/not-cached" in unknown and "offline" in unknown
    # the package loaded from the cache is the tiny model, byte for byte
    snap = cache / "models--wildvision-test--tiny" / "snapshots" / commit
    assert load_package(snap).card == load_package(tiny_model_dir).card
