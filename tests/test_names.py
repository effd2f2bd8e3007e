"""One name per thing: ``load_model`` (``resolve_model`` deprecated), ``installed_models``
(``builtin_models`` deprecated), and the open-set gate (``OpenSetGate``, whose score is
``familiarity``), with the old names still working."""

from __future__ import annotations

from pathlib import Path

import pytest

import wildvision
from wildvision import openset, registry
from wildvision.modelpack import load_package
from wildvision.predict import Classifier


def test_load_model_is_the_one_function(tiny_model_dir: Path) -> None:
    assert wildvision.load_model is registry.load_model
    pkg = registry.load_model(str(tiny_model_dir))
    with pytest.warns(DeprecationWarning, match="load_model"):
        old = registry.resolve_model(str(tiny_model_dir))
    assert old.card == pkg.card


def test_installed_models_lists_builtin_and_models_path(tiny_model_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "tiny-copy")
    monkeypatch.setenv("WILDVISION_MODELS_PATH", str(tmp_path))
    found = registry.installed_models()
    assert found["tiny-copy"] == tmp_path / "tiny-copy"
    assert next(iter(found)) in {p.name for p in registry.BUILTIN_DIR.iterdir()}  # built-in first
    with pytest.warns(DeprecationWarning, match="installed_models"):
        assert registry.builtin_models() == found


def test_the_open_set_gate_has_one_name(shared_data: Path) -> None:
    assert openset.Familiarity is openset.OpenSetGate
    assert openset.build_familiarity is openset.build_gate
    assert openset.load_familiarity is openset.load_gate
    pkg = load_package(registry.BUILTIN_DIR / "wildvision-base")
    gate = pkg.open_set_gate()
    assert isinstance(gate, openset.OpenSetGate)  # card key "familiarity", familiarity.npz
    assert isinstance(pkg.familiarity(), openset.OpenSetGate)
    clf = Classifier(pkg, threads=1)
    assert isinstance(clf.gate, openset.OpenSetGate) and clf.familiarity is clf.gate
    assert Classifier(pkg, threads=1, open_set=False).gate is None
    photo = sorted((shared_data / "met_ivory").rglob("*.jpg"))[0]
    assert isinstance(clf.classify(str(photo)).familiarity, float)  # the score keeps its name
