"""The layout's rules hold: who may import whom, no cycles, and no stand-in in the Modal image.

The rules themselves are import-linter contracts in ``pyproject.toml`` (``[tool.importlinter]``)
and are explained in ``docs/architecture.md``. These tests run them on the tree, show that they
catch a broken rule, and read back what the Modal image of the media plane would upload.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from modal._utils.async_utils import synchronizer
from modal.mount import _Mount

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("callplane", "callplane_standins", "callplane_dev", "functions", "edge_worker", "infra")
OFFLINE_ONLY = ("callplane_standins", "callplane_dev")
# What only the stand-ins need (pyproject's `local` extra): never in a deployed image.
OFFLINE_DEPENDENCIES = ("pocketsphinx",)


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter over the packages under ``root`` with ``root``'s pyproject.toml."""
    script = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(script), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_import_contracts_hold() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"
    ]
    assert f"Contracts: {len(contracts)} kept, 0 broken." in result.stdout


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packages and pyproject.toml, copied, to break rules in without touching the tree."""
    root = tmp_path_factory.mktemp("tree")
    for package in PACKAGES:
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_a_stand_in_import_in_the_library_breaks_a_contract(tree_copy: Path) -> None:
    """Even a function-level import counts: a library module reaching for the local engine."""
    rogue = tree_copy / "callplane" / "rogue.py"
    rogue.write_text(
        "def engine() -> object:\n"
        "    from callplane_standins.realtime_engine import vad\n"
        "    return vad\n"
    )
    try:
        result = lint_imports(tree_copy)
    finally:
        rogue.unlink()
    assert result.returncode == 1
    assert "The production library imports no plane, stand-in or dev-stack code BROKEN" in (
        " ".join(result.stdout.split())
    )
    assert "callplane.rogue -> callplane_standins.realtime_engine.vad" in result.stdout


def test_an_import_cycle_breaks_a_contract(tree_copy: Path) -> None:
    rogue = tree_copy / "callplane" / "records_rogue.py"
    rogue.write_text("def f() -> None:\n    import callplane.pricing\n")
    pricing = tree_copy / "callplane" / "pricing.py"
    original = pricing.read_text()
    pricing.write_text(original + "\n\ndef _g() -> None:\n    import callplane.records_rogue\n")
    try:
        result = lint_imports(tree_copy)
    finally:
        rogue.unlink()
        pricing.write_text(original)
    assert result.returncode == 1
    assert "No cycles are allowed in callplane." in result.stdout


def image_files() -> list[str]:
    """The paths (inside the container) of the local sources the media plane's Modal image
    uploads, as ``functions/app.py`` declares them, read back from the image object."""
    from functions import app

    # the SDK's internal object, which holds the mounts
    image: Any = synchronizer._translate_in(app.image)  # type: ignore[no-untyped-call]
    mounts = [dep for dep in image._deps() if isinstance(dep, _Mount)]
    assert mounts, "the media image declares no local Python sources"
    files: list[str] = []
    for mount in mounts:
        for entry in mount._entries or []:
            files.extend(str(remote) for _, remote in entry.get_files_to_upload())
    return files


def test_the_modal_image_ships_the_library_and_the_planes_only(tmp_path: Path) -> None:
    files = image_files()
    packages = {Path(f).relative_to("/root").parts[0] for f in files}
    assert packages == {"callplane", "functions", "edge_worker"}
    assert not [f for f in files if any(f"/{name}/" in f for name in OFFLINE_ONLY)]
    # and what it installs has none of the stand-ins' dependencies
    from tests.functions.test_app import image_requirements

    installed = {requirement.name for requirement in image_requirements(tmp_path)}
    assert "websockets" in installed
    assert not [dep for dep in OFFLINE_DEPENDENCIES if dep in installed]


def test_every_module_in_the_image_imports_without_the_stand_ins() -> None:
    """Import each uploaded module in a fresh interpreter in which the stand-ins, the dev stack
    and their dependencies cannot be imported: what a Modal container would meet."""
    modules = sorted(
        str(Path(f).relative_to("/root").with_suffix(""))
        .replace("/", ".")
        .removesuffix(".__init__")
        for f in image_files()
        if f.endswith(".py")
    )
    # The Cloudflare entry point imports the Workers runtime's own modules, which exist only
    # inside the Workers runtime.
    modules.remove("edge_worker.worker")
    blocked = [*OFFLINE_ONLY, *OFFLINE_DEPENDENCIES]
    program = (
        "import importlib, json, sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None  # an import of it raises ImportError\n"
        "failed = {}\n"
        f"for module in {modules!r}:\n"
        "    try:\n"
        "        importlib.import_module(module)\n"
        "    except Exception as exc:\n"
        "        failed[module] = repr(exc)\n"
        "print(json.dumps(failed))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert len(modules) > 40
    assert json.loads(result.stdout.splitlines()[-1]) == {}
