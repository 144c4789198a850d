"""The Modal app of the media plane: image, secrets and autoscaling, declared once.

``media`` serves :func:`functions.media.create_app` — the very FastAPI app uvicorn serves in
the local stack — as a Modal ASGI function. Each Twilio media stream is one Modal input, so
``@modal.concurrent`` decides how many calls share a container, and the function timeout
bounds the longest call; it sits above :data:`callplane.profiles.MAX_CALL_SECONDS` so that
Modal never cuts a call the agent is still allowed to finish.

What a deploy is for comes from the environment, read by
:class:`~functions.deploy_settings.DeploySettings`: ``CALLPLANE_STACK`` (dev, staging or prod;
required) picks the scaling entry of :data:`SCALING`; the app name, the region and preemption
come with it. ``pulumi up`` sets them all from the stack config; by hand, deploy with
``CALLPLANE_STACK=<stack> modal deploy -m functions.app --env <stack>``, with the media
settings JSON in the Modal secret ``callplane-media`` (key ``CALLPLANE_MEDIA_CONFIG``). The
image carries the same variables, so a container imports the app as it was deployed.

The image installs uv.lock's exact versions of the ``media`` dependency group of
pyproject.toml (``uv sync --frozen --only-group media``): a container runs the dependencies
the tests ran, not whatever their version ranges allow on the day of the build.

Importing this module needs no Modal account (nothing is contacted until a deploy), which is
what the tests rely on; it does need ``CALLPLANE_STACK``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import modal

from callplane.profiles import MAX_CALL_SECONDS
from functions.deploy_settings import DeploySettings

if TYPE_CHECKING:
    from functions.dispatch import ModalLauncher

__all__ = [
    "AGENT_JOB_OPTIONS",
    "APP_NAME",
    "DEPLOY",
    "MEDIA_GROUP",
    "MEDIA_LABEL",
    "SCALING",
    "STACK",
    "STREAMS_LABEL",
    "UV_VERSION",
    "Scaling",
    "agent_job",
    "agent_launcher",
    "app",
    "media",
    "media_streams",
]

SECRET_NAME = "callplane-media"


@dataclass(frozen=True)
class Scaling:
    """How wide the media function runs on one stack.

    ``max_inputs`` calls at most share a container (``target_inputs`` is where the autoscaler
    aims, leaving headroom for a burst); the relay benchmark (``bench/relay.py``) is how these
    figures are sized. Where the containers run and whether Modal may preempt them are deploy
    settings (:class:`functions.deploy_settings.DeploySettings`): they multiply the price.
    """

    min_containers: int
    max_containers: int
    buffer_containers: int
    scaledown_window: int
    max_inputs: int
    target_inputs: int
    cpu: float = 1.0
    memory_mib: int = 1024
    # Modal's function timeout bounds one input, i.e. one call: the longest call plus slack.
    timeout: int = MAX_CALL_SECONDS + 300

    def __post_init__(self) -> None:
        if not 0 < self.target_inputs <= self.max_inputs:
            raise ValueError(
                f"target_inputs={self.target_inputs} must be in 1..max_inputs={self.max_inputs}"
            )
        if not 0 <= self.min_containers <= self.max_containers:
            raise ValueError(
                f"min_containers={self.min_containers} must be in 0..max_containers="
                f"{self.max_containers}"
            )
        if not 2 <= self.scaledown_window <= 3600:
            raise ValueError(f"scaledown_window={self.scaledown_window} must be 2..3600 s")
        if self.timeout <= MAX_CALL_SECONDS:
            raise ValueError(
                f"timeout={self.timeout} must exceed MAX_CALL_SECONDS={MAX_CALL_SECONDS}"
            )

    def function_options(self, deploy: DeploySettings) -> dict[str, Any]:
        """Keyword arguments for ``@app.function``: this scaling, placed as ``deploy`` says."""
        return {
            **deploy.placement_options(),
            "min_containers": self.min_containers,
            "max_containers": self.max_containers,
            "buffer_containers": self.buffer_containers,
            "scaledown_window": self.scaledown_window,
            "timeout": self.timeout,
            "cpu": self.cpu,
            "memory": self.memory_mib,
        }


SCALING: dict[str, Scaling] = {
    # dev scales to zero: the first call after a quiet spell waits for a cold start.
    "dev": Scaling(0, 5, 0, 60, max_inputs=40, target_inputs=25),
    "staging": Scaling(1, 10, 1, 300, max_inputs=40, target_inputs=25),
    "prod": Scaling(2, 100, 2, 600, max_inputs=40, target_inputs=25),
}

DEPLOY = DeploySettings.from_env(os.environ)
"""What this import deploys (or, in a container, was deployed with)."""
STACK = DEPLOY.stack
APP_NAME = DEPLOY.app_name
MEDIA_LABEL = DEPLOY.labels.media
"""The media function's web label: its URL is ``https://<workspace>--<label>.modal.run``."""
STREAMS_LABEL = DEPLOY.labels.streams
"""The stream function's web label: its URL is ``https://<workspace>--<label>.modal.run``."""

PROJECT_DIR = Path(__file__).resolve().parent.parent
"""Where pyproject.toml and uv.lock are at deploy (a container has neither, and needs neither)."""
MEDIA_GROUP = "media"
"""pyproject.toml's dependency group of what the containers import."""
UV_VERSION = "0.13.10"
"""The uv that installs uv.lock in the image: the one the lock was written with. Raise it when a
newer uv rewrites uv.lock."""

image = (
    modal.Image.debian_slim(python_version="3.11")
    # `uv sync --frozen`: uv.lock's versions, never a fresh resolution; only the media group, so
    # neither the project's other dependencies (Pulumi, the CLI) nor the dev tools come along.
    .uv_sync(
        str(PROJECT_DIR),
        frozen=True,
        extra_options=f"--only-group={MEDIA_GROUP}",
        uv_version=UV_VERSION,
    )
    # After the dependencies, so a change of settings does not reinstall them.
    .env(DEPLOY.to_env())
    .add_local_python_source("callplane", "functions", "edge_worker")
)

app = modal.App(
    APP_NAME,
    image=image,
    secrets=[modal.Secret.from_name(SECRET_NAME, required_keys=["CALLPLANE_MEDIA_CONFIG"])],
    tags={"stack": STACK},
)

_scaling = SCALING[STACK]


def agent_launcher() -> ModalLauncher:
    """How the media app starts LiveKit agent jobs: as calls of this app's ``agent_job``
    function, looked up by the deployed app's name in the environment the container runs in
    (the stack's)."""
    from functions.dispatch import ModalLauncher

    return ModalLauncher(APP_NAME)


@app.function(**_scaling.function_options(DEPLOY))
@modal.concurrent(max_inputs=_scaling.max_inputs, target_inputs=_scaling.target_inputs)
@modal.asgi_app(label=MEDIA_LABEL)
def media() -> Any:
    """The media app, configured from the ``CALLPLANE_MEDIA_CONFIG`` secret; it spawns LiveKit
    agent jobs through :func:`agent_launcher`."""
    from functions.media import create_app_from_env

    return create_app_from_env(launcher=agent_launcher())


STREAM_PORT = 8000
"""The port the stream server listens on inside its container (Modal's web_server routes to it)."""


@app.function(**_scaling.function_options(DEPLOY))
@modal.concurrent(max_inputs=_scaling.max_inputs, target_inputs=_scaling.target_inputs)
@modal.web_server(STREAM_PORT, startup_timeout=60, label=STREAMS_LABEL)
def media_streams() -> None:
    """Twilio's media streams on the picows stream server (``functions.stream_server``): the
    same stream handling as the media app's ``/twilio/media/<key>`` route at about two thirds
    of its CPU per frame (docs/performance.md). The edge's TwiML points Twilio here; the HTTP routes
    stay on ``media``. Modal's web_server needs the server to listen on all of the container's
    interfaces.
    """
    import subprocess
    import sys

    subprocess.Popen(
        [
            sys.executable,
            "-m",
            "functions.stream_server",
            "--host",
            "0.0.0.0",
            "--port",
            str(STREAM_PORT),
        ]
    )


AGENT_JOB_OPTIONS: dict[str, Any] = {
    # Placed like the calls: a preempted agent job is gone from its room until Modal restarts it.
    **DEPLOY.placement_options(),
    # One room per container: a crash or a busy room never takes another room's agent with it,
    # and the container goes away when its room does.
    "max_containers": _scaling.max_containers * _scaling.max_inputs,
    "scaledown_window": 2,
    "timeout": _scaling.timeout,
    "cpu": 1.0,
    "memory": 1024,
}


@app.function(**AGENT_JOB_OPTIONS)
async def agent_job(room: str, profile: str, job_id: str | None = None) -> dict[str, Any]:
    """One LiveKit room's agent, spawned by the media app's ``/agents/dispatch``; returns the
    room's call record when the last human has left."""
    from callplane.media_settings import MediaSettings
    from callplane.rooms.agent import run_agent

    settings = MediaSettings.from_env()
    record = await run_agent(settings, settings.load_tools(), room, profile, job_id=job_id)
    return record.to_json()
