"""The Cloudflare Python Worker's bundle, computed from what the edge's entry module imports.

``pulumi up`` uploads exactly :attr:`Bundle.files` (``infra/program.py``), ``python -m infra
edge-bundle DIR --stack NAME`` writes them to a folder, and ``tests/edge_worker/test_pyodide.py``
runs that folder in Pyodide, the interpreter of Cloudflare's Python Workers. The file set is
never a hand list: a list goes stale the day a module gains an import, and the worker then fails
on its first request with an ``ImportError`` that no local test sees.

How the set is found: starting from the entry module (:data:`ENTRY_SOURCE`, generated), every
``import`` and ``from ... import`` is followed transitively, at any depth of the code (imports
inside functions and ``try`` blocks count; ``if TYPE_CHECKING:`` blocks do not, they never run).
A module of the repository's packages (:data:`PACKAGES`) joins the bundle together with the
``__init__.py`` of every package on its path; anything else must be the standard library
(``sys.stdlib_module_names``) or a module the Workers runtime provides itself
(:data:`RUNTIME_MODULES`), because the worker runs the standard library only. Modules that run
only under uvicorn (:data:`UVICORN_ONLY`) must not be reached at all.

The entry module sits at the top of the bundle because workerd imports the main module by its
file name without ``.py`` (``edge_worker/worker.py`` would be the invalid module name
``edge_worker/worker``); it re-exports :class:`edge_worker.worker.Default`, the
``WorkerEntrypoint`` subclass that answers every request.

The playground (``web/dist``, built by ``scripts/build_web.sh``) is not part of the modules: it
is served as Workers static assets under ``/playground/`` (:attr:`Bundle.assets`).
"""

from __future__ import annotations

import ast
import re
import shutil
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from edge_worker.core import PLAYGROUND_PREFIX

__all__ = [
    "ASSETS_DIR",
    "ENTRY_MODULE",
    "ENTRY_SOURCE",
    "PACKAGES",
    "PYODIDE_VERSION",
    "PYTHON_MODULE_TYPE",
    "RUNTIME_MODULES",
    "UVICORN_ONLY",
    "Bundle",
    "BundleError",
    "compatibility_flags",
    "compute_bundle",
    "write_bundle",
]

ENTRY_MODULE = "worker_entry.py"
"""The worker's main module: a top-level file, so that workerd can import it by name."""

ENTRY_SOURCE = '''"""The Cloudflare Python Worker's main module, written by infra/edge_bundle.py.

workerd imports the main module by its file name, so it sits at the top of the bundle; the
handler itself is edge_worker.worker.Default (see edge_worker/README.md).
"""

from edge_worker.worker import Default

__all__ = ["Default"]
'''
"""The entry module's source: it exports ``Default`` and nothing else, the way Cloudflare looks
for a worker's ``WorkerEntrypoint`` classes (its ``__all__``)."""

PACKAGES = ("edge_worker", "callplane")
"""The repository's packages the edge may import from; only their reachable modules are bundled."""

RUNTIME_MODULES = frozenset({"workers", "js"})
"""Modules the Python Workers runtime provides to every worker (its SDK and the JS globals)."""

UVICORN_ONLY: Mapping[str, str] = {
    "edge_worker/asgi.py": "the local ASGI adapter, which runs under uvicorn only",
}
"""Edge modules that must never reach the Cloudflare bundle, with why."""

PYTHON_MODULE_TYPE = "text/x-python"
"""The content type Cloudflare's upload API takes for a Python module."""

ASSETS_DIR = "assets"
"""The folder, next to the modules, that :func:`write_bundle` puts the static assets in."""

PYODIDE_VERSION = "0.28.2"
"""The Pyodide that :func:`compatibility_flags` selects on Cloudflare (Python 3.13) and that the
tests run the bundle in (``tests/edge_worker/pyodide/package.json`` pins the same version)."""

_PYODIDE_FLAG = "python_workers_20250116"  # Cloudflare's name for its Pyodide 0.28.2 runtime
_NO_GLOBAL_HANDLERS = "python_no_global_handlers"
_NO_GLOBAL_HANDLERS_DEFAULT_FROM = "2025-08-14"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class BundleError(ValueError):
    """The edge's code cannot be bundled; the message names the file, the import and the fix."""


@dataclass(frozen=True)
class Bundle:
    """What ``pulumi up`` uploads for the edge worker.

    ``files``: every module, by path relative to the bundle's root (``worker_entry.py``,
    ``edge_worker/core.py``, ...), sorted; ``main_module``: the entry's key in ``files``;
    ``assets``: the playground's static files by URL path without the leading ``/``
    (``playground/index.html``) and the file they are read from (empty when the stack serves no
    playground)."""

    files: Mapping[str, bytes]
    main_module: str
    assets: Mapping[str, Path]

    def content_type(self, name: str) -> str:
        """The upload content type of ``files[name]`` (the bundle holds Python modules only)."""
        if not name.endswith(".py") or name not in self.files:
            raise KeyError(f"{name!r} is not a module of this bundle: {sorted(self.files)}")
        return PYTHON_MODULE_TYPE


def compatibility_flags(compatibility_date: str) -> list[str]:
    """The worker's compatibility flags for ``compatibility_date``: Python Workers on Pyodide
    :data:`PYODIDE_VERSION` (the runtime the tests run the bundle in, whatever the date would
    pick), with ``Default`` as the entrypoint class (Cloudflare's default only from 2025-08-14)."""
    if not _DATE.fullmatch(compatibility_date):
        raise BundleError(
            f"callplane:edge.cloudflare.compatibilityDate={compatibility_date!r} is not a date. "
            "Fix: set it as YYYY-MM-DD, e.g. 2025-09-01"
        )
    flags = ["python_workers", _PYODIDE_FLAG]
    if compatibility_date < _NO_GLOBAL_HANDLERS_DEFAULT_FROM:
        flags.append(_NO_GLOBAL_HANDLERS)
    return flags


def compute_bundle(root: Path, *, playground: bool = True) -> Bundle:
    """The bundle of the repository at ``root``: the entry module and every module it reaches
    (see the module docstring), and with ``playground`` the built playground as assets.

    Raises :class:`BundleError` for an import that is neither the standard library, nor the
    runtime's, nor a module of :data:`PACKAGES`; for a module that does not exist; for a
    uvicorn-only module reached from the entry; and, with ``playground``, when ``web/dist`` is
    not built."""
    root = root.resolve()
    files: dict[str, bytes] = {ENTRY_MODULE: ENTRY_SOURCE.encode("utf-8")}
    pending: list[str] = [ENTRY_MODULE]
    while pending:
        path = pending.pop()
        source = files[path].decode("utf-8")
        for imported in _imports(path, source):
            for found in _local_files(root, path, imported):
                if found in UVICORN_ONLY:
                    raise BundleError(
                        f"{path}, line {imported.line}: `{imported.statement}` brings {found} "
                        f"into the Cloudflare worker, and {found} is {UVICORN_ONLY[found]}. Fix: "
                        "import what you need from the module that defines it (edge_worker.core, "
                        f".wire, .config, ...), never from {found}"
                    )
                if found not in files:
                    files[found] = (root / found).read_bytes()
                    pending.append(found)
    assets = _playground_assets(root) if playground else {}
    return Bundle(dict(sorted(files.items())), ENTRY_MODULE, assets)


def write_bundle(dest: Path, root: Path, *, playground: bool = True) -> Bundle:
    """Compute the bundle of ``root`` (:func:`compute_bundle`) and write it to ``dest``: the
    modules at the top, exactly the files ``pulumi up`` uploads, and the static assets under
    ``dest/assets/`` (the folder the provider uploads them from). ``dest`` is created, or
    replaced when it holds a bundle written before; a folder with anything else in it is
    refused rather than emptied."""
    bundle = compute_bundle(root, playground=playground)
    if dest.exists():
        if not dest.is_dir():
            raise BundleError(f"{dest} is a file. Fix: give a new or empty folder for the bundle")
        children = list(dest.iterdir())
        if children and not (dest / ENTRY_MODULE).is_file():
            raise BundleError(
                f"{dest} is not empty and holds no bundle (no {ENTRY_MODULE}), so it is left "
                "alone. Fix: give a new or empty folder for the bundle"
            )
        for child in children:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    dest.mkdir(parents=True, exist_ok=True)
    for name, content in bundle.files.items():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    for name, source in bundle.assets.items():
        target = dest / ASSETS_DIR / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return bundle


# --------------------------------------------------------------------------- the import walk


@dataclass(frozen=True)
class _Import:
    module: str  # absolute dotted name
    line: int
    statement: str
    #: ``X.name`` of ``from X import name``: a submodule if such a file exists, else a name
    #: that ``X`` defines.
    maybe_attribute: bool = False


def _imports(path: str, source: str) -> Iterator[_Import]:
    """Every import in ``source`` that runs, by absolute module name; ``from X import a, b``
    yields ``X`` and also ``X.a`` and ``X.b``, which may be submodules."""
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        raise BundleError(f"{path}, line {exc.lineno}: not valid Python ({exc.msg})") from None
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield _Import(alias.name, node.lineno, ast.unparse(node))
        elif isinstance(node, ast.ImportFrom):
            statement = ast.unparse(node)
            base = _absolute(path, node, statement)
            yield _Import(base, node.lineno, statement)
            for alias in node.names:
                if alias.name != "*":
                    yield _Import(f"{base}.{alias.name}", node.lineno, statement, True)


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` (never executed)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(path: str, node: ast.ImportFrom, statement: str) -> str:
    """The absolute module name of ``from <node> import ...`` written in the file ``path``."""
    if node.level == 0:
        return node.module or ""
    parts = path.removesuffix(".py").split("/")
    package = parts[:-1]  # a package's __init__ and its modules share the package's folder
    if node.level > len(package):
        raise BundleError(
            f"{path}, line {node.lineno}: `{statement}` reaches above the top-level package. "
            "Fix: import by absolute name (edge_worker.…, callplane.…)"
        )
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def _local_files(root: Path, path: str, found: _Import) -> list[str]:
    """The bundle files that ``found`` loads: the ``__init__.py`` of each package on its path
    and the module itself. Empty for the standard library and the runtime's modules."""
    parts = found.module.split(".")
    top = parts[0]
    where = f"{path}, line {found.line}: `{found.statement}`"
    if top not in PACKAGES:
        if top in RUNTIME_MODULES or top in sys.stdlib_module_names:
            return []
        raise BundleError(
            f"{where} imports {top!r}, which is neither the standard library nor one of the "
            f"edge's packages ({', '.join(PACKAGES)}). The Cloudflare worker runs on the "
            f"standard library only (plus the runtime's {' and '.join(sorted(RUNTIME_MODULES))} "
            "modules) and gets no third-party packages. Fix: write it with the standard "
            "library, or keep the import in code the edge's entry does not reach (such as the "
            "uvicorn-only edge_worker/asgi.py)"
        )
    files: list[str] = []
    for depth in range(1, len(parts) + 1):
        rel = _module_file(root, parts[:depth])
        if rel is not None:
            files.append(rel)
        elif found.maybe_attribute and depth == len(parts):
            return files  # a name defined by the module imported from, not a submodule
        else:
            name = "/".join(parts[:depth])
            raise BundleError(
                f"{where} needs the module {'.'.join(parts[:depth])}, but {root} has neither "
                f"{name}.py nor {name}/__init__.py. Fix: correct the import, or add the module"
            )
    return files


def _module_file(root: Path, parts: list[str]) -> str | None:
    """The repository-relative file of the module ``parts`` (a package's ``__init__.py``)."""
    base = "/".join(parts)
    for rel in (f"{base}/__init__.py", f"{base}.py"):
        if (root / rel).is_file():
            return rel
    return None


# --------------------------------------------------------------------------- static assets


def _playground_assets(root: Path) -> dict[str, Path]:
    """``web/dist`` as assets under the playground's URL prefix; the build must be there."""
    dist = root / "web" / "dist"
    if not (dist / "index.html").is_file():
        raise BundleError(
            f"{dist / 'index.html'} is missing: the playground is not built, and the worker "
            "would answer 404 on /playground/. Fix: run scripts/build_web.sh (scripts/setup.sh "
            "runs it), then run this again"
        )
    prefix = PLAYGROUND_PREFIX.strip("/")
    assets: dict[str, Path] = {}
    for path in sorted(dist.rglob("*")):
        if path.is_symlink():
            raise BundleError(
                f"{path} is a symbolic link; the playground's assets are copied as regular files "
                "only. Fix: rebuild web/dist with scripts/build_web.sh --force"
            )
        if path.is_file():
            assets[f"{prefix}/{path.relative_to(dist).as_posix()}"] = path
    return assets
