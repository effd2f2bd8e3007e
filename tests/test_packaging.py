"""Packaging and import hygiene: what the wheel contains, what importing costs, and the test
suite's own no-network guard."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO_ROOT, NetworkBlockedError

HEAVY = ("torch", "torchvision", "timm", "onnxruntime", "onnx", "huggingface_hub", "ray",
         "fastapi", "uvicorn", "matplotlib", "albumentations", "pyarrow", "sklearn")


def _run(code: str, cwd: Path) -> dict[str, list[str]]:
    """Run ``code`` in a fresh interpreter; it prints a JSON object on its last line."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, cwd=cwd, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    result: dict[str, list[str]] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_import_is_light(tmp_path: Path) -> None:
    """``import wildvision`` needs no torch; ``wildvision.cli`` (with every plugin's parser
    registered) does not import onnxruntime or any other heavy dependency until a command runs."""
    res = _run(
        f"""
        import json, sys
        heavy = {HEAVY!r}
        loaded = lambda: sorted({{m.split(".")[0] for m in sys.modules}} & set(heavy))
        import wildvision
        after_package = loaded()
        import wildvision.cli
        after_cli = loaded()
        wildvision.cli.build_parser()
        after_parser = loaded()
        wildvision.cli.main(["--version"])
        print()
        print(json.dumps({{"package": after_package, "cli": after_cli, "parser": after_parser,
                          "version": loaded()}}))
        """,
        tmp_path,
    )
    assert res == {"package": [], "cli": [], "parser": [], "version": []}


def test_training_and_datasets_are_not_packages(tmp_path: Path) -> None:
    for folder in ("training", "datasets"):
        root = REPO_ROOT / folder
        assert root.is_dir(), root
        inits = sorted(str(p.relative_to(REPO_ROOT)) for p in root.rglob("__init__.py"))
        assert inits == [], f"{folder}/ must not be a Python package: {inits}"
    # outside the repository (as an installed user would be), neither name resolves to ours
    res = _run(
        """
        import importlib.util, json
        out = {}
        for name in ("training", "datasets", "tests", "benchmarks"):
            spec = importlib.util.find_spec(name)
            locs = [] if spec is None else list(spec.submodule_search_locations or [spec.origin])
            out[name] = [str(x) for x in locs]
        print(json.dumps(out))
        """,
        tmp_path,
    )
    for name, locations in res.items():
        assert not any(loc.startswith(str(REPO_ROOT)) for loc in locations), (name, locations)


def test_wheel_contents_config() -> None:
    """setuptools' own reading of pyproject.toml: only ``wildvision*`` packages, typed, with
    the model packages as data, and the Apache-2.0 licence."""
    from setuptools.config.pyprojecttoml import read_configuration

    config = read_configuration(REPO_ROOT / "pyproject.toml")
    tool = config["tool"]["setuptools"]
    packages = tool["packages"]
    assert "wildvision" in packages
    assert all(p == "wildvision" or p.startswith("wildvision.") for p in packages), packages
    data = tool["package-data"]["wildvision"]
    assert "py.typed" in data and any(d.startswith("models/") for d in data)
    # every file a shipped model package's card lists is in the wheel
    import fnmatch

    for card_path in (REPO_ROOT / "wildvision" / "models").glob("*/card.json"):
        listed = json.loads(card_path.read_text(encoding="utf-8"))["files"]
        for name in [*listed, "card.json", "README.md"]:
            rel = f"models/{card_path.parent.name}/{name}"
            assert any(fnmatch.fnmatch(rel, pat) for pat in data), f"{rel} not in package-data"
    assert (REPO_ROOT / "wildvision" / "py.typed").is_file()
    project = config["project"]
    assert project["license"] == "Apache-2.0"
    assert project["scripts"]["wildvision"] == "wildvision.cli:main"
    core = {d.split(">")[0].split("=")[0].strip() for d in project["dependencies"]}
    assert core == {"numpy", "pillow", "onnxruntime", "threadpoolctl"}
    license_text = (REPO_ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in license_text


def test_network_is_blocked_except_loopback() -> None:
    """The autouse fixture in conftest.py: outbound connections fail, loopback works."""
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(
        NetworkBlockedError, match="must not use the network"
    ):
        s.connect(("93.184.216.34", 80))
    with pytest.raises(NetworkBlockedError):
        socket.getaddrinfo("huggingface.co", 443)
    with pytest.raises(NetworkBlockedError):
        socket.create_connection(("example.com", 80), timeout=1)
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        port = server.getsockname()[1]
        with socket.create_connection(("localhost", port), timeout=5) as client:
            conn, _ = server.accept()
            client.sendall(b"ok")
            assert conn.recv(2) == b"ok"
            conn.close()
    finally:
        server.close()
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        a.sendall(b"unix")
        assert b.recv(4) == b"unix"


def test_missing_real_data_fails_under_require_data(tmp_path: Path) -> None:
    """Without ``../shared/data`` a real-data test skips; with ``WILDVISION_REQUIRE_DATA=1``
    (CI) it fails. Run on a copy of this conftest.py in a folder with no data beside it."""
    tests = tmp_path / "repo" / "tests"
    tests.mkdir(parents=True)
    (tests / "conftest.py").write_text((REPO_ROOT / "tests" / "conftest.py").read_text(
        encoding="utf-8"), encoding="utf-8")
    (tests / "test_real.py").write_text(textwrap.dedent("""
        from pathlib import Path
        from conftest import missing_data

        def test_fixture(shared_data: Path) -> None:
            assert shared_data.is_dir()

        def test_helper() -> None:
            missing_data("bigcats/live_tiger not found")
        """), encoding="utf-8")
    assert not (tmp_path / "shared").exists()
    outcomes = {}
    for value in ("", "1"):
        env = {**os.environ, "WILDVISION_REQUIRE_DATA": value}
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "-rsf", str(tests)], capture_output=True, text=True,
                             cwd=tmp_path / "repo", timeout=600, env=env)
        outcomes[value] = (out.returncode, out.stdout.strip().splitlines()[-1])
    assert outcomes[""][0] == 0 and "2 skipped" in outcomes[""][1], outcomes
    # the test fails, the fixture errors: neither is a skip
    assert outcomes["1"][0] == 1 and "1 failed, 1 error" in outcomes["1"][1], outcomes


def test_build_requirements_and_the_export_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SPDX ``license = "Apache-2.0"`` string needs setuptools >= 77 (76 fails to read
    the config); ``export`` has its own light extra with what int8 and Triton import (onnx,
    and sympy for ONNX Runtime's shape inference), and its errors name it."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert isinstance(config["project"]["license"], str)
    st = next(r for r in config["build-system"]["requires"] if r.startswith("setuptools"))
    assert st.startswith("setuptools>=")
    major = int(st.removeprefix("setuptools>=").split(".")[0])
    assert major >= 77, st
    extras = config["project"]["optional-dependencies"]
    export = {d.split(">")[0].split("=")[0] for d in extras["export"]}
    assert export == {"onnx", "sympy"}
    assert "export" in extras["dev"][0]  # wildvision[...] in dev
    from wildvision.errors import MissingExtraError
    from wildvision.export.quantize import _quant_modules

    monkeypatch.setitem(sys.modules, "sympy", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"wildvision\[export\]"):
        _quant_modules()


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    """The README's second command works in the venv the first one made (it installs the test
    tools itself; plain ``python -m pytest`` failed there with 'No module named pytest') and
    runs ruff and mypy --strict too; ``.ci/run`` runs exactly that line."""
    import re

    tomllib = pytest.importorskip("tomllib")
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)\n```", section, re.S)
    assert len(blocks) == 2, blocks
    first, second = blocks
    assert "pip install ." in first and "wildvision classify" in first
    steps = second.split(" && ")
    assert steps[0] == 'pip install -e ".[dev]"', second
    assert {"ruff check .", "mypy wildvision", "python -m pytest"} <= set(steps[1:])
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert second in ci
    assert ci.index("export WILDVISION_REQUIRE_DATA=1") < ci.index(second)
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    dev = {d.split(">")[0].split("=")[0] for d in config["project"]["optional-dependencies"]["dev"]}
    assert {"pytest", "ruff", "mypy"} <= dev
    assert config["tool"]["mypy"]["strict"] is True
