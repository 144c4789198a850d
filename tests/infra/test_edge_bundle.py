"""infra/edge_bundle.py: the worker bundle is what the entry module imports, nothing more.

The repository's own bundle is imported in a bare CPython (no site-packages, nothing of the
repository on the path but the bundle), and the modules that import loads are compared with the
bundle's file list; small repositories written per test check each refusal and its message.
Running the bundle in Pyodide is tests/edge_worker/test_pyodide.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from infra.edge_bundle import (
    ENTRY_MODULE,
    PYODIDE_VERSION,
    BundleError,
    compatibility_flags,
    compute_bundle,
    write_bundle,
)

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import worker_entry
local = sorted(
    m.__file__.removeprefix(sys.argv[1] + "/")
    for name, m in sys.modules.items()
    if name.split(".")[0] in ("edge_worker", "callplane", "worker_entry")
)
print(json.dumps({"default": worker_entry.Default.__module__, "files": local}))
"""


def test_the_bundle_imports_alone_and_holds_exactly_what_the_entry_loads(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "bundle", ROOT)
    assert bundle.main_module == ENTRY_MODULE == "worker_entry.py"
    assert "edge_worker/livekit_routes.py" in bundle.files  # reached through core.py only
    assert "edge_worker/asgi.py" not in bundle.files
    written = sorted(
        p.relative_to(tmp_path / "bundle").as_posix()
        for p in (tmp_path / "bundle").rglob("*")
        if p.is_file() and "assets" not in p.relative_to(tmp_path / "bundle").parts
    )
    assert written == list(bundle.files)
    # -I -S: no site-packages, no current directory, no PYTHONPATH: only the stdlib and the bundle.
    probe = subprocess.run(
        [sys.executable, "-I", "-S", "-c", PROBE, str(tmp_path / "bundle")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    loaded = json.loads(probe.stdout)
    assert loaded == {"default": "edge_worker.worker", "files": list(bundle.files)}
    for name, content in bundle.files.items():
        if name != ENTRY_MODULE:
            assert content == (ROOT / name).read_bytes()


def test_the_playground_is_bundled_as_assets_under_its_url_path(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "bundle", ROOT)
    dist = ROOT / "web" / "dist"
    assert bundle.assets == {
        f"playground/{p.relative_to(dist).as_posix()}": p for p in dist.rglob("*") if p.is_file()
    }
    assert "playground/index.html" in bundle.assets
    for name, source in bundle.assets.items():
        assert (tmp_path / "bundle" / "assets" / name).read_bytes() == source.read_bytes()
    assert compute_bundle(ROOT, playground=False).assets == {}


def make_repo(root: Path, files: dict[str, str]) -> Path:
    """A small repository: an edge whose worker.py is given, plus ``files``."""
    tree = {
        "edge_worker/__init__.py": "",
        "edge_worker/worker.py": "class Default:\n    pass\n",
        "callplane/__init__.py": "",
        **files,
    }
    for name, text in tree.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_imports_are_followed_through_functions_relative_imports_and_package_inits(
    tmp_path: Path,
) -> None:
    repo = make_repo(
        tmp_path,
        {
            "edge_worker/worker.py": (
                "from . import helpers\n"
                "from .sub.deep import thing\n"
                "def later():\n"
                "    import callplane.tool\n"
                "    from edge_worker.helpers import NAME\n"
                "class Default:\n"
                "    pass\n"
            ),
            "edge_worker/helpers.py": "import json\nimport workers\nNAME = 1\n",
            "edge_worker/sub/__init__.py": "",
            "edge_worker/sub/deep.py": "from ..helpers import NAME as thing\n",
            "edge_worker/unused.py": "import json\n",
            "callplane/tool.py": "import js\n",
        },
    )
    assert list(compute_bundle(repo, playground=False).files) == [
        "callplane/__init__.py",
        "callplane/tool.py",
        "edge_worker/__init__.py",
        "edge_worker/helpers.py",
        "edge_worker/sub/__init__.py",
        "edge_worker/sub/deep.py",
        "edge_worker/worker.py",
        "worker_entry.py",
    ]


def test_type_checking_imports_are_not_followed(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path,
        {
            "edge_worker/worker.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    import httpx\n"
                "    from edge_worker import asgi\n"
                "class Default:\n"
                "    pass\n"
            ),
        },
    )
    assert "edge_worker/asgi.py" not in compute_bundle(repo, playground=False).files


def test_a_third_party_import_is_refused_naming_file_line_and_fix(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path,
        {
            "edge_worker/worker.py": "from edge_worker.jwt import sign\nclass Default:\n    pass\n",
            "edge_worker/jwt.py": "def sign():\n    import httpx.auth\n",
        },
    )
    with pytest.raises(BundleError) as caught:
        compute_bundle(repo, playground=False)
    message = str(caught.value)
    assert message.startswith("edge_worker/jwt.py, line 2: `import httpx.auth` imports 'httpx'")
    assert "standard library only" in message and "Fix: " in message


def test_reaching_the_uvicorn_adapter_is_refused(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path,
        {
            "edge_worker/worker.py": (
                "from edge_worker.asgi import create_app\nclass Default:\n    pass\n"
            ),
            "edge_worker/asgi.py": "def create_app():\n    pass\n",
        },
    )
    with pytest.raises(BundleError) as caught:
        compute_bundle(repo, playground=False)
    message = str(caught.value)
    assert message.startswith(
        "edge_worker/worker.py, line 1: `from edge_worker.asgi import create_app` brings "
        "edge_worker/asgi.py into the Cloudflare worker"
    )
    assert "uvicorn only" in message and "Fix: " in message


def test_a_missing_module_is_refused(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path, {"edge_worker/worker.py": "import edge_worker.gone\nclass Default:\n    pass\n"}
    )
    with pytest.raises(BundleError, match=r"line 1: `import edge_worker.gone` needs the module"):
        compute_bundle(repo, playground=False)


def test_an_unbuilt_playground_is_refused_with_the_build_command(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {})
    with pytest.raises(BundleError, match=r"web/dist/index.html is missing.*scripts/build_web.sh"):
        compute_bundle(repo)


def test_write_bundle_replaces_a_bundle_but_never_empties_another_folder(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {})
    dest = tmp_path / "out"
    write_bundle(dest, repo, playground=False)
    (dest / "stale.py").write_text("")
    write_bundle(dest, repo, playground=False)
    assert not (dest / "stale.py").exists() and (dest / ENTRY_MODULE).is_file()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match=r"not empty and holds no bundle"):
        write_bundle(other, repo, playground=False)
    assert (other / "notes.txt").read_text() == "mine"


def test_compatibility_flags_pin_the_tested_pyodide_and_the_default_entrypoint() -> None:
    assert PYODIDE_VERSION == "0.28.2"
    assert compatibility_flags("2025-09-01") == ["python_workers", "python_workers_20250116"]
    assert compatibility_flags("2025-03-01") == [
        "python_workers",
        "python_workers_20250116",
        "python_no_global_handlers",
    ]
    with pytest.raises(BundleError, match=r"compatibilityDate='soon' is not a date\. Fix: "):
        compatibility_flags("soon")


def test_cli_writes_the_bundle_and_ends_with_the_main_module(tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    run = subprocess.run(
        [sys.executable, "-m", "infra", "edge-bundle", str(dest), "--stack", "dev"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "worker_entry.py"
    assert "python_workers_20250116" in run.stdout
    assert (dest / "worker_entry.py").is_file() and (dest / "edge_worker" / "core.py").is_file()
    assert (dest / "assets" / "playground" / "index.html").is_file()
    refused = subprocess.run(
        [sys.executable, "-m", "infra", "edge-bundle", str(tmp_path), "--stack", "dev"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 2 and "holds no bundle" in refused.stderr
