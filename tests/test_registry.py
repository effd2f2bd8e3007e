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


def _gated_copy(tiny_model_dir: Path, dst: Path) -> Path:
    """The tiny model with an open-set gate (familiarity.npz listed in its card), as
    ``wildvision export familiarity`` would add one."""
    import numpy as np

    from wildvision.modelcard_md import write_card
    from wildvision.openset import FAMILIARITY_FILE, build_familiarity
    from wildvision.predict import Classifier

    from conftest import photo_like

    shutil.copytree(tiny_model_dir, dst)
    clf = Classifier(dst, return_embedding=True, open_set=False)
    emb = np.stack([clf.classify(photo_like(80, 60, seed=s)).embedding for s in range(12)])
    gate, record = build_familiarity(emb[:8], {"ivory": emb[8:]}, dims=4)
    gate.save(dst / FAMILIARITY_FILE)
    card = load_package(dst, verify=False).card
    write_card(dst, card.with_updates(extra={**card.extra, "familiarity": record}))
    assert FAMILIARITY_FILE in load_package(dst).card.files
    return dst


def test_hub_downloads_every_kind_of_file_a_card_lists(tiny_model_dir: Path,
                                                       tmp_path: Path) -> None:
    """What snapshot_download fetches, through huggingface_hub's own pattern filter: every
    file of a package (the default package's familiarity.npz included; it was left out, so
    hf:// packages with a gate failed 'listed file missing'), and nothing else."""
    hub_utils = pytest.importorskip("huggingface_hub.utils")
    from wildvision.modelpack import WEIGHT_SUFFIXES
    from wildvision.registry import hub_allow_patterns, package_files

    junk = ["model.pt", "weights.pkl", "model.ckpt", "notes.txt", ".gitattributes",
            "pytorch_model.bin"]
    for pkg in (load_model("wildvision-base"),
                load_package(_gated_copy(tiny_model_dir, tmp_path / "gated"))):
        files = package_files(pkg)
        assert files[:2] == ["card.json", "README.md"] and set(files[2:]) == set(pkg.card.files)
        fetched = list(hub_utils.filter_repo_objects([*files, *junk],
                                                     allow_patterns=hub_allow_patterns()))
        assert sorted(fetched) == sorted(files)
        assert "familiarity.npz" in fetched
    names = [f"x{suffix}" for suffix in WEIGHT_SUFFIXES]  # every kind a card may list
    assert list(hub_utils.filter_repo_objects(names, allow_patterns=hub_allow_patterns())) \
        == names


def test_models_pull_from_the_offline_cache(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``wildvision models pull hf://org/name --to DIR`` through snapshot_download (offline,
    against a cache laid out here): DIR gets exactly the package's files, verified, and the
    gate works from it."""
    pytest.importorskip("huggingface_hub")
    gated = _gated_copy(tiny_model_dir, tmp_path / "gated")
    cache = tmp_path / "hf-cache"
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    _hf_cache(cache, "wildvision-test/gated", gated, commit)
    out = tmp_path / "pulled" / "gated"
    code = textwrap.dedent(
        f"""
        import sys
        from wildvision.cli import main
        from wildvision.predict import Classifier
        assert main(["models", "pull", "hf://wildvision-test/gated", "--to", {str(out)!r}]) == 0
        assert main(["models", "pull", "hf://wildvision-test/gated", "--to", {str(out)!r}]) == 2
        assert main(["models", "pull", "hf://nobody/not-cached"]) == 1
        from PIL import Image
        pred = Classifier({str(out)!r}).classify(Image.new("RGB", (40, 30), (200, 10, 10)))
        assert pred.familiarity is not None, pred
        print("OK")
        """
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf-home")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["card.json", "README.md", *load_package(gated).card.files])  # no model.pt
    assert load_package(out).card == load_package(gated).card
    assert "exists" in res.stderr and "not-cached" in res.stderr


def test_models_push_uploads_only_a_verified_package(tiny_model_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    """``wildvision models push DIR hf://org/name``: a package that does not verify is refused
    before any Hub call; the upload selects the package's own files only (huggingface_hub's
    filter, as upload_folder applies it); offline, the Hub call fails with a typed error."""
    hub_utils = pytest.importorskip("huggingface_hub.utils")
    from wildvision.cli import main
    from wildvision.registry import _upload_patterns, package_files

    pkg_dir = _gated_copy(tiny_model_dir, tmp_path / "pkg")
    for junk in ("model.pt", "notes.txt", "sub/model.onnx", ".ipynb_checkpoints/card.json"):
        (pkg_dir / junk).parent.mkdir(parents=True, exist_ok=True)
        (pkg_dir / junk).write_bytes(b"not part of the package")
    pkg = load_package(pkg_dir)
    on_disk = sorted(p.relative_to(pkg_dir).as_posix() for p in pkg_dir.rglob("*")
                     if p.is_file())
    selected = list(hub_utils.filter_repo_objects(on_disk, allow_patterns=_upload_patterns(pkg)))
    assert sorted(selected) == sorted(package_files(pkg))
    # offline (the test suite's HF_HUB_OFFLINE=1): the Hub call itself fails, typed
    assert main(["models", "push", str(pkg_dir), "hf://wildvision-test/pushed"]) == 1
    assert "offline" in capsys.readouterr().err
    # a bad target, and a package that does not verify: refused, nothing tried
    assert main(["models", "push", str(pkg_dir), "wildvision-test/pushed"]) == 2
    assert main(["models", "push", str(pkg_dir), "hf://a/b/c"]) == 2
    capsys.readouterr()
    data = bytearray((pkg_dir / "familiarity.npz").read_bytes())
    data[-10] ^= 0xFF
    (pkg_dir / "familiarity.npz").write_bytes(bytes(data))
    assert main(["models", "push", str(pkg_dir), "hf://wildvision-test/pushed"]) == 1
    err = capsys.readouterr().err
    assert "sha256 mismatch" in err and "offline" not in err
