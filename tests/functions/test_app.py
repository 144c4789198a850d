"""The Modal declaration: scaling per stack from one constant, the deploy settings it is
declared with, the container's dependencies read back from the image definition, and
``.local()`` giving the same FastAPI app that uvicorn serves offline. No Modal account needed."""

from __future__ import annotations

import importlib.metadata as md
import inspect
import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import modal
import pytest
from fastapi import FastAPI
from modal._utils.async_utils import synchronizer
from packaging.markers import default_environment
from packaging.requirements import Requirement

from callplane.profiles import MAX_CALL_SECONDS
from functions import app as modal_app
from functions.deploy_settings import DEPLOY_VARS, STACKS

ROOT = Path(__file__).resolve().parents[2]
# The image builder the image is meant for (from 2025.06 on, Modal mounts its client into the
# container instead of installing it, so the image needs only the media group).
BUILDER_VERSION = "2025.06"
# Imported when installed but optional to their importers, and unused by the media path, so
# the image may go without them: sniffio (anyio), python-multipart (starlette's forms), rich
# and pygments (httpx's command line), and OpenTelemetry's SDK and exporters (FastAPI's
# telemetry and redis-py's observability load them only if present; they are here because
# Pulumi's SDK brings them, and psutil with them).
# googleapis-common-protos shares the "google" namespace with protobuf (which livekit needs),
# so an import of google.protobuf is attributed to both distributions.
OPTIONAL_IMPORTS = {
    "sniffio",
    "python-multipart",
    "rich",
    "pygments",
    "click",
    "googleapis-common-protos",
    "psutil",
}
OPTIONAL_PREFIXES = (
    "opentelemetry-sdk",
    "opentelemetry-exporter",
    "opentelemetry-proto",
    "opentelemetry-instrumentation",
    "opentelemetry-semantic",
)
# What the containers run: the media app, the stream server and an agent job.
CONTAINER_MODULES = ("functions.media", "functions.stream_server", "callplane.rooms.agent")


# --------------------------------------------------------------------------- the image, read back


def image_layers(image: modal.Image, builder_version: str = BUILDER_VERSION) -> list[Any]:
    """Every build layer of ``image`` with Dockerfile commands, outermost first, as modal's
    ``DockerfileSpec`` (``commands`` and the ``context_files`` it copies from this machine)."""
    layers: list[Any] = []
    todo: list[Any] = [synchronizer._translate_in(image)]  # type: ignore[no-untyped-call]
    while todo:
        layer = todo.pop(0)
        build = inspect.getclosurevars(layer._load).nonlocals.get("dockerfile_function")
        if build is not None:
            layers.append(build(builder_version))
        todo.extend(dep for dep in layer._deps() if isinstance(dep, type(layer)))
    return layers


def uv_sync_layer() -> Any:
    """The layer that installs the dependencies; exactly one."""
    (layer,) = [
        spec
        for spec in image_layers(modal_app.image)
        if any("uv sync " in c for c in spec.commands)
    ]
    return layer


def web_label(function: Any) -> str:
    """The web label ``function`` is declared with (modal keeps it in the webhook config)."""
    inner: Any = synchronizer._translate_in(function)  # type: ignore[no-untyped-call]
    return str(inner._webhook_config.requested_suffix)


def container_environment() -> dict[str, str]:
    """Marker values of the image's Python (the version from its base layer's ``FROM``)."""
    base = image_layers(modal_app.image)[-1]
    tag = base.commands[0].split("python:", 1)[1]
    full = tag.split("-", 1)[0]
    env = {str(key): str(value) for key, value in default_environment().items()}
    env.update(
        python_version=".".join(full.split(".")[:2]),
        python_full_version=full,
        implementation_name="cpython",
        platform_python_implementation="CPython",
        sys_platform="linux",
        platform_system="Linux",
        os_name="posix",
        platform_machine="x86_64",
    )
    return env


def uv_binary() -> str:
    uv = os.environ.get("UV") or shutil.which("uv")
    assert uv, "uv is needed to read what the image installs (run the tests with `uv run`)"
    return uv


def image_requirements(workdir: Path) -> list[Requirement]:
    """What the image's ``uv sync`` installs, as requirements: its recorded command replayed as
    ``uv export`` (the same selection from the same lock, offline) on the files it copies."""
    layer = uv_sync_layer()
    run = next(c for c in layer.commands if c.startswith("RUN ") and "uv sync " in c)
    argv = shlex.split(run.removeprefix("RUN "))
    project = next(a for a in argv if a.startswith("--project=")).removeprefix("--project=")
    for command in layer.commands:
        if command.startswith("COPY /."):  # a context file: COPY <name> <destination>
            _, name, destination = command.split()
            target = workdir / PurePosixPath(destination).relative_to(project)
            shutil.copyfile(layer.context_files[name], target)
    # sync's options as export spells them; the ones about installing have no counterpart
    translated = {"--no-install-workspace": "--no-emit-workspace", "--compile-bytecode": ""}
    options: list[str] = []
    for option in argv[argv.index("sync") + 1 :]:
        if not option.startswith("--project=") and translated.get(option, option):
            options.append(translated.get(option, option))
    exported = subprocess.run(
        [uv_binary(), "export", f"--project={workdir}", *options, "--offline", "--no-hashes"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    env = container_environment()
    requirements = [
        Requirement(line)
        for line in exported.splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "-"))
    ]
    return [r for r in requirements if r.marker is None or r.marker.evaluate(env)]


def locked_versions() -> dict[str, set[str]]:
    """Every package version uv.lock holds, by name."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    versions: dict[str, set[str]] = {}
    for package in lock["package"]:
        if "version" in package:
            versions.setdefault(package["name"], set()).add(package["version"])
    return versions


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Name -> the exact version the image installs."""
    pins: dict[str, str] = {}
    for requirement in image_requirements(tmp_path_factory.mktemp("image-context")):
        (spec,) = requirement.specifier  # one exact pin, never a range
        assert spec.operator == "==", f"{requirement} is not pinned to one version"
        pins[requirement.name] = spec.version
    return pins


def test_the_image_installs_uv_locks_exact_versions(installed: dict[str, str]) -> None:
    lock = locked_versions()
    # the version uv.lock resolved for each, whatever pyproject.toml's ranges would allow today
    for name in ("websockets", "pydantic", "picows", "livekit", "fastapi", "psycopg"):
        (locked,) = lock[name]
        assert installed[name] == locked, name
    assert {n: v for n, v in installed.items() if v not in lock.get(n, set())} == {}
    layer = uv_sync_layer()
    assert any(c.endswith(" --frozen") or " --frozen " in c for c in layer.commands)
    assert sorted(Path(p).resolve() for p in layer.context_files.values()) == sorted(
        [ROOT / "pyproject.toml", ROOT / "uv.lock"]
    )


def test_the_image_installs_the_media_group_only(installed: dict[str, str]) -> None:
    """Neither the dev tools nor the provisioning and CLI dependencies reach a container."""
    for absent in ("pytest", "ruff", "mypy", "pulumi", "typer", "modal", "pocketsphinx"):
        assert absent not in installed, absent
    run = next(c for c in uv_sync_layer().commands if "uv sync " in c)
    assert f"--only-group={modal_app.MEDIA_GROUP}" in shlex.split(run)
    # the uv that installs the lock is pinned, as the lock is
    assert any(f"uv:{modal_app.UV_VERSION} " in c for c in uv_sync_layer().commands)


def test_the_media_group_names_project_dependencies_without_ranges() -> None:
    """pyproject.toml's [project] dependencies hold the ranges; the media group only picks
    names from them, so the two cannot drift apart."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = {Requirement(r).name for r in pyproject["project"]["dependencies"]}
    group = [Requirement(r) for r in pyproject["dependency-groups"][modal_app.MEDIA_GROUP]]
    assert [str(r) for r in group if r.specifier or r.marker] == []
    assert {r.name for r in group} - declared == set()
    # the image trusts uv.lock (--frozen): the lock must record the group as declared here
    check = subprocess.run(
        [uv_binary(), "lock", "--check", "--offline"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, f"uv.lock is stale; run `uv lock`:\n{check.stderr}"


def test_the_image_installs_everything_the_containers_import(installed: dict[str, str]) -> None:
    probe = (
        "import importlib, sys; before = set(sys.modules)\n"
        f"for name in {CONTAINER_MODULES!r}: importlib.import_module(name)\n"
        "print('\\n'.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))"
    )
    imported = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    owners = md.packages_distributions()
    third_party = {
        dist.lower().replace("_", "-")
        for module in imported
        if module not in sys.stdlib_module_names and module in owners
        for dist in owners[module]
    }
    provided = {name.lower().replace("_", "-") for name in installed}
    missing = {
        d for d in third_party - provided - OPTIONAL_IMPORTS if not d.startswith(OPTIONAL_PREFIXES)
    }
    assert missing == set(), "add these to the media group of pyproject.toml"


def test_the_image_carries_the_deploy_settings() -> None:
    """A container imports functions/app.py with the settings it was deployed with."""
    (env_layer,) = [
        spec
        for spec in image_layers(modal_app.image)
        if "ENV CALLPLANE_STACK" in " ".join(spec.commands)
    ]
    carried = dict(c.removeprefix("ENV ").split("=", 1) for c in env_layer.commands[1:])
    assert carried == modal_app.DEPLOY.to_env()
    assert tuple(carried) == DEPLOY_VARS


# --------------------------------------------------------------------------- scaling


def test_every_stack_has_sane_scaling() -> None:
    assert tuple(modal_app.SCALING) == STACKS  # the stacks the deploy settings accept
    for scaling in modal_app.SCALING.values():
        assert scaling.timeout > MAX_CALL_SECONDS
        assert 0 < scaling.target_inputs <= scaling.max_inputs
    prod = modal_app.SCALING["prod"]
    assert prod.min_containers >= 1, "prod keeps a warm pool: no cold start on a call"


def test_the_function_is_declared_with_the_scaling_of_its_stack() -> None:
    info = modal_app.media.info()
    scaling = modal_app.SCALING[modal_app.STACK]
    assert info.timeout == scaling.timeout
    assert info.cpu == scaling.cpu and info.memory_mib == scaling.memory_mib
    assert info.concurrency_info is not None
    assert info.concurrency_info.max_inputs == scaling.max_inputs
    assert info.concurrency_info.target_inputs == scaling.target_inputs
    # placed as the deploy settings say: by default in us-east, never preempted
    assert info.regions == [modal_app.DEPLOY.region] == ["us-east"]
    assert info.nonpreemptible is modal_app.DEPLOY.nonpreemptible is True
    assert modal_app.app.name == modal_app.APP_NAME == "callplane-media"


def test_the_stream_server_function_scales_like_the_media_app() -> None:
    """Twilio's streams land on ``media_streams`` (picows); each stream is an input, so it
    needs the media app's concurrency, timeout and region."""
    streams, media = modal_app.media_streams.info(), modal_app.media.info()
    assert modal_app.media_streams._is_web_endpoint()
    for field in ("timeout", "regions", "cpu", "memory_mib", "nonpreemptible"):
        assert getattr(streams, field) == getattr(media, field), field
    assert streams.concurrency_info == media.concurrency_info
    assert web_label(modal_app.media_streams) == f"callplane-media-{modal_app.STACK}-streams"
    assert web_label(modal_app.media) == f"callplane-media-{modal_app.STACK}"


def test_a_bad_scaling_entry_is_refused_with_the_field() -> None:
    with pytest.raises(ValueError, match=r"target_inputs=50 must be in 1\.\.max_inputs=40"):
        modal_app.Scaling(0, 1, 0, 60, max_inputs=40, target_inputs=50)
    with pytest.raises(ValueError, match="must exceed MAX_CALL_SECONDS"):
        modal_app.Scaling(0, 1, 0, 60, max_inputs=4, target_inputs=2, timeout=60)


def test_local_returns_the_media_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = {
        "public_media_url": "wss://media.example.com/twilio/media",
        "stream_secret": "s" * 32,
        "api_key": "k" * 16,
        "twilio_account_sid": "AC" + "0" * 32,
        "twilio_auth_token": "token",
        "realtime_api_key": "sk-test",
        "profiles": {"support": {"name": "support", "tools": ["get_weather", "end_call"]}},
        "records_path": str(tmp_path / "records.sqlite3"),
        "tools_module": "callplane.samples:SAMPLE_TOOLS",
    }
    monkeypatch.setenv("CALLPLANE_MEDIA_CONFIG", json.dumps(settings))
    served = modal_app.media.local()
    assert isinstance(served, FastAPI)
    paths = {getattr(route, "path", "") for route in served.routes}
    assert {"/twilio/media", "/healthz", "/calls", "/calls/{call_sid}"} <= paths


def test_a_missing_tool_module_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from callplane.media_settings import MediaSettings

    with pytest.raises(ValueError, match=r"tools_module='nope\.tools:TOOLS' cannot be loaded"):
        MediaSettings.model_construct(tools_module="nope.tools:TOOLS").load_tools()


# registered_functions is the only build-time view of an app's function names in modal 1.6
# (deprecated for 1.7, which the lock does not allow yet).
@pytest.mark.filterwarnings("ignore:.*App.registered_functions. is deprecated")
def test_agent_jobs_get_a_container_each_and_the_name_the_launcher_spawns() -> None:
    from functions.dispatch import AGENT_JOB_FUNCTION

    info = modal_app.agent_job.info()
    assert modal_app.app.registered_functions[AGENT_JOB_FUNCTION] is modal_app.agent_job
    assert info.concurrency_info is None or info.concurrency_info.max_inputs == 1
    assert info.timeout == modal_app.SCALING[modal_app.STACK].timeout
    assert info.regions == [modal_app.DEPLOY.region]
    assert info.nonpreemptible is modal_app.DEPLOY.nonpreemptible
    launcher = modal_app.agent_launcher()
    assert (launcher.app_name, launcher.function_name) == (modal_app.APP_NAME, AGENT_JOB_FUNCTION)
