"""The Modal declaration: scaling per stack from one constant, the container's packages, and
``.local()`` giving the same FastAPI app that uvicorn serves offline. No Modal account needed."""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from fastapi import FastAPI
from packaging.requirements import Requirement

from callplane.profiles import MAX_CALL_SECONDS
from functions import app as modal_app

ROOT = Path(__file__).resolve().parents[2]
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


def test_every_stack_has_sane_scaling() -> None:
    assert set(modal_app.SCALING) == {"dev", "staging", "prod"}
    for scaling in modal_app.SCALING.values():
        assert scaling.timeout > MAX_CALL_SECONDS
        assert 0 < scaling.target_inputs <= scaling.max_inputs
    prod = modal_app.SCALING["prod"]
    assert prod.min_containers >= 1, "prod keeps a warm pool: no cold start on a call"


def test_the_function_is_declared_with_the_scaling_of_its_stack() -> None:
    info = modal_app.media.info()
    scaling = modal_app.SCALING[modal_app.STACK]
    assert info.timeout == scaling.timeout
    assert info.regions == [scaling.region]
    assert info.cpu == scaling.cpu and info.memory_mib == scaling.memory_mib
    assert info.concurrency_info is not None
    assert info.concurrency_info.max_inputs == scaling.max_inputs
    assert info.concurrency_info.target_inputs == scaling.target_inputs
    assert info.nonpreemptible is True


def test_the_stream_server_function_scales_like_the_media_app() -> None:
    """Twilio's streams land on ``media_streams`` (picows); each stream is an input, so it
    needs the media app's concurrency, timeout and region."""
    streams, media = modal_app.media_streams.info(), modal_app.media.info()
    assert modal_app.media_streams._is_web_endpoint()
    for field in ("timeout", "regions", "cpu", "memory_mib", "nonpreemptible"):
        assert getattr(streams, field) == getattr(media, field), field
    assert streams.concurrency_info == media.concurrency_info
    assert f"callplane-media-{modal_app.STACK}-streams" == modal_app.STREAMS_LABEL


def test_a_bad_scaling_entry_is_refused_with_the_field() -> None:
    with pytest.raises(ValueError, match=r"target_inputs=50 must be in 1\.\.max_inputs=40"):
        modal_app.Scaling("us-east", 0, 1, 0, 60, max_inputs=40, target_inputs=50)
    with pytest.raises(ValueError, match="must exceed MAX_CALL_SECONDS"):
        modal_app.Scaling("us-east", 0, 1, 0, 60, max_inputs=4, target_inputs=2, timeout=60)


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
        "tools_module": "callplane_dev.sample_agents:SAMPLE_TOOLS",
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


def _closure(requirements: list[str]) -> set[str]:
    """Distribution names the requirements pull in, transitively (as installed here)."""
    seen: set[str] = set()
    todo = [Requirement(r).name.lower() for r in requirements]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in md.requires(name) or []:
            parsed = Requirement(req)
            if parsed.marker is None or parsed.marker.evaluate({"extra": ""}):
                todo.append(parsed.name.lower())
    return {n.replace("_", "-") for n in seen}


def test_the_image_installs_everything_the_media_path_imports() -> None:
    probe = (
        "import sys; before = set(sys.modules); import functions.media; "
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
    provided = _closure(list(modal_app.MEDIA_PACKAGES))
    missing = {
        d for d in third_party - provided - OPTIONAL_IMPORTS if not d.startswith(OPTIONAL_PREFIXES)
    }
    assert missing == set(), "add these to MEDIA_PACKAGES in functions/app.py"
    declared = {
        Requirement(r).name
        for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    assert {Requirement(p).name for p in modal_app.MEDIA_PACKAGES} <= declared


# registered_functions is the only build-time view of an app's function names in modal 1.6
# (deprecated for 1.7, which the lock does not allow yet).
@pytest.mark.filterwarnings("ignore:.*App.registered_functions. is deprecated")
def test_agent_jobs_get_a_container_each_and_the_name_the_launcher_spawns() -> None:
    from functions.dispatch import AGENT_JOB_FUNCTION

    info = modal_app.agent_job.info()
    assert modal_app.app.registered_functions[AGENT_JOB_FUNCTION] is modal_app.agent_job
    assert info.concurrency_info is None or info.concurrency_info.max_inputs == 1
    assert info.timeout == modal_app.SCALING[modal_app.STACK].timeout
    assert info.regions == [modal_app.SCALING[modal_app.STACK].region]
    assert info.nonpreemptible is True
