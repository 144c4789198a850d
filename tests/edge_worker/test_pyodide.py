"""The Cloudflare worker bundle, run in real Pyodide: the interpreter of Cloudflare's Python
Workers (0.28.2, CPython 3.13), under Node, with the edge config ``pulumi up`` would upload.

``pyodide/harness.mjs`` loads exactly the files ``python -m infra edge-bundle`` writes (and
nothing else from the repository) into Pyodide's file system, imports the main module by name
as workerd does, and for each request constructs the bundle's ``Default`` entrypoint with
``(ctx, env)`` and awaits its ``fetch`` with a ``workers.Request`` around a web ``Request``
(``pyodide/workers_sdk.py`` is the ``workers`` module, shaped as Cloudflare documents it).
Pyodide is loaded once per module; nothing reaches the network: the worker's outbound ``fetch``
(agent dispatch) is recorded by the harness and answered with the status a test asks for.

The config is the dev stack's (``Pulumi.dev.yaml``, secrets as placeholders) built by
``infra.settings.edge_config_json`` as the Pulumi program builds it, with a web key and one
number. Signatures come from the services' own SDKs: ``twilio``'s RequestValidator and
``livekit-api``'s AccessToken, TokenVerifier and WebhookReceiver.
"""

from __future__ import annotations

import base64
import json
import queue
import shutil
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from livekit import api
from twilio.request_validator import RequestValidator

from callplane.security import stream_key, verify_stream_token
from infra.config import StackConfig, plan_numbers
from infra.edge_bundle import PYODIDE_VERSION, Bundle, write_bundle
from infra.program import media_urls
from infra.settings import edge_config_json
from infra.stack_file import read_stack_file
from tests.support.tokens import sign_webhook

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "tests" / "edge_worker" / "pyodide" / "harness.mjs"
PYODIDE_PACKAGE = HARNESS.parent / "node_modules" / "pyodide" / "package.json"
NUMBER = "+14155550100"
WEB_KEY = "pyodide-test-web-key-0123456789"
FOREIGN_ORIGIN = "https://elsewhere.example.com"
FORM = "application/x-www-form-urlencoded"
START_TIMEOUT_S = 90.0
REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Deployment:
    """The dev stack's config, its edge config document and the values tests sign with."""

    config: StackConfig
    edge_config: str
    region: str
    profile: str

    @property
    def public_url(self) -> str:
        return self.config.edge.url


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    outbound: list[dict[str, Any]] = field(default_factory=list)
    background_errors: list[str] = field(default_factory=list)


class Worker:
    """One harness process: Pyodide and the bundle loaded once, then one request at a time."""

    def __init__(self, process: subprocess.Popen[str], stderr: Path, env: dict[str, str]) -> None:
        self.process = process
        self.stderr = stderr
        self.env = env
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = self._receive(START_TIMEOUT_S)
        if not self.ready.get("ready"):
            pytest.fail(f"the bundle did not load in Pyodide: {self.ready.get('error')}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _receive(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"the Pyodide harness answered nothing in {timeout} s{self.log()}")
        if line is None:
            pytest.fail(f"the Pyodide harness exited ({self.process.poll()}){self.log()}")
        document: dict[str, Any] = json.loads(line)
        return document

    def log(self) -> str:
        text = self.stderr.read_text(errors="replace")[-4000:] if self.stderr.exists() else ""
        return f"; its stderr:\n{text}" if text else ""

    def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        outbound_status: int = 200,
    ) -> Answer:
        self.next_id += 1
        message = {
            "id": self.next_id,
            "method": method,
            "url": self.env["PUBLIC_URL"] + path,
            "headers": [list(pair) for pair in headers],
            "body": base64.b64encode(body).decode(),
            "env": {"CALLPLANE_EDGE_CONFIG": self.env["CALLPLANE_EDGE_CONFIG"]},
            "outbound_status": outbound_status,
        }
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        answer = self._receive(REQUEST_TIMEOUT_S)
        assert answer["id"] == self.next_id
        if "error" in answer:
            pytest.fail(f"the worker raised in Pyodide: {answer['error']}{self.log()}")
        return Answer(
            status=answer["status"],
            headers={name.lower(): value for name, value in answer["headers"]},
            body=base64.b64decode(answer["body"]),
            outbound=answer["outbound"],
            background_errors=answer["background_errors"],
        )


@pytest.fixture(scope="module")
def deployment() -> Deployment:
    stack = read_stack_file("dev", ROOT)
    config = stack.config.model_copy(update={"web_key": WEB_KEY})
    urls, http_urls, _ = media_urls(config)
    entry = plan_numbers(config)[0].entry
    region = entry.region or config.default_region  # as the program's Telephony assigns it
    document = edge_config_json(config, [(NUMBER, entry.profile, region)], urls, http_urls)
    return Deployment(config, document, region, entry.profile)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Bundle]:
    folder = tmp_path_factory.mktemp("edge") / "bundle"
    return folder, write_bundle(folder, ROOT)


@pytest.fixture(scope="module")
def worker(
    deployment: Deployment,
    bundle_dir: tuple[Path, Bundle],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Worker]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: run scripts/setup.sh (it installs Node.js)")
    if not PYODIDE_PACKAGE.is_file():
        pytest.fail(
            f"{PYODIDE_PACKAGE.parent} is missing: run scripts/setup.sh, which installs Pyodide "
            "for these tests (npm ci in tests/edge_worker/pyodide)"
        )
    folder, bundle = bundle_dir
    stderr = tmp_path_factory.mktemp("harness") / "stderr.txt"
    with stderr.open("w") as log:
        process = subprocess.Popen(
            [node, str(HARNESS), str(folder), bundle.main_module],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=HARNESS.parent,
        )
    env = {"PUBLIC_URL": deployment.public_url, "CALLPLANE_EDGE_CONFIG": deployment.edge_config}
    try:
        yield Worker(process, stderr, env)
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------- the runtime


def test_pyodide_imports_exactly_the_bundle(
    worker: Worker, bundle_dir: tuple[Path, Bundle]
) -> None:
    _, bundle = bundle_dir
    assert worker.ready["pyodide"] == PYODIDE_VERSION
    assert worker.ready["python"].startswith("3.13.")
    assert worker.ready["files"] == list(bundle.files)  # what the harness put in the file system
    assert worker.ready["imported"] == list(bundle.files)  # and every one of them is imported


# --------------------------------------------------------------------------- Twilio


def voice_form(call_sid: str = "CA" + "1f" * 16) -> dict[str, str]:
    return {
        "CallSid": call_sid,
        "AccountSid": "AC0123456789abcdef0123456789abcdef",
        "From": "+15557654321",
        "To": NUMBER,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "FromCountry": "US",
    }


def twilio_post(
    worker: Worker, path: str, form: dict[str, str], auth_token: str
) -> tuple[Answer, str]:
    url = worker.env["PUBLIC_URL"] + path
    signature = RequestValidator(auth_token).compute_signature(url, form)
    headers = [("Content-Type", FORM), ("X-Twilio-Signature", signature)]
    return worker.request("POST", path, headers, urlencode(form).encode()), url


def test_a_signed_voice_webhook_gets_connect_stream_twiml(
    worker: Worker, deployment: Deployment
) -> None:
    config = deployment.config
    form = voice_form()
    answer, _ = twilio_post(worker, "/twilio/voice", form, config.twilio_auth_token)
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"].startswith("text/xml")
    twiml = ET.fromstring(answer.body)
    stream = twiml.find("./Connect/Stream")
    assert twiml.tag == "Response" and stream is not None
    urls, _, _ = media_urls(config)
    parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert list(parameters) == ["token"]
    token = str(parameters["token"])
    assert stream.get("url") == f"{urls[deployment.region]}/twilio/media/{stream_key(token)}"
    claims = verify_stream_token(config.stream_secret, token, form["CallSid"], now=time.time())
    assert (claims.profile, claims.region) == (deployment.profile, deployment.region)
    assert (claims.to, claims.from_, claims.country) == (NUMBER, "+15557654321", "US")


def test_a_forged_voice_webhook_is_403(worker: Worker) -> None:
    answer, _ = twilio_post(worker, "/twilio/voice", voice_form(), "not-the-auth-token")
    assert answer.status == 403
    assert b"<Stream" not in answer.body and b"signature" in answer.body.lower()


def test_a_signed_status_callback_is_204_with_no_body(
    worker: Worker, deployment: Deployment
) -> None:
    form = {**voice_form(), "CallStatus": "completed", "CallDuration": "7"}
    answer, _ = twilio_post(worker, "/twilio/status", form, deployment.config.twilio_auth_token)
    assert (answer.status, answer.body) == (204, b"")


# --------------------------------------------------------------------------- LiveKit webhooks


def room_started(room: str, profile: str) -> bytes:
    event = {
        "event": "room_started",
        "id": "EV_pyodide",
        "createdAt": str(int(time.time())),
        "room": {"sid": "RM_pyodide", "name": room, "metadata": json.dumps({"profile": profile})},
    }
    return json.dumps(event).encode()


def test_a_livekit_webhook_signed_by_livekit_api_dispatches_an_agent(
    worker: Worker, deployment: Deployment
) -> None:
    config = deployment.config
    assert config.livekit is not None and config.livekit_api_secret is not None
    key, secret = config.livekit.api_key, config.livekit_api_secret
    body = room_started("demo", deployment.profile)
    token = sign_webhook(body, key, secret)
    # The token is what LiveKit sends: livekit-api's own receiver accepts it.
    assert api.WebhookReceiver(api.TokenVerifier(key, secret)).receive(body.decode(), token)
    headers = [("Content-Type", "application/webhook+json"), ("Authorization", token)]
    answer = worker.request("POST", "/livekit/webhook", headers, body)
    assert answer.status == 200, answer.body
    edge = json.loads(deployment.edge_config)["livekit"]
    (dispatch,) = answer.outbound  # sent from ctx.waitUntil with the runtime's fetch
    assert (dispatch["method"], dispatch["url"]) == ("POST", edge["dispatch_url"])
    sent = {name.lower(): value for name, value in dispatch["headers"]}
    assert sent["authorization"] == f"Bearer {config.media_api_key}"
    assert json.loads(dispatch["body"]) == {
        "room": "demo",
        "profile": deployment.profile,
        "reason": "room_started",
    }
    assert answer.background_errors == []


def test_a_failed_dispatch_is_retried_once_in_the_background(
    worker: Worker, deployment: Deployment
) -> None:
    config = deployment.config
    assert config.livekit is not None and config.livekit_api_secret is not None
    body = room_started("retry", deployment.profile)
    token = sign_webhook(body, config.livekit.api_key, config.livekit_api_secret)
    headers = [("Content-Type", "application/webhook+json"), ("Authorization", token)]
    answer = worker.request("POST", "/livekit/webhook", headers, body, outbound_status=503)
    assert answer.status == 200
    assert [json.loads(o["body"])["room"] for o in answer.outbound] == ["retry", "retry"]
    assert answer.background_errors == []


def test_a_livekit_webhook_signed_with_another_secret_is_401(
    worker: Worker, deployment: Deployment
) -> None:
    config = deployment.config
    assert config.livekit is not None
    body = room_started("demo", deployment.profile)
    token = sign_webhook(body, config.livekit.api_key, "some-other-secret-entirely")
    headers = [("Content-Type", "application/webhook+json"), ("Authorization", token)]
    answer = worker.request("POST", "/livekit/webhook", headers, body)
    assert answer.status == 401 and answer.outbound == []


# --------------------------------------------------------------------------- /token


def token_request(worker: Worker, origin: str) -> Answer:
    headers = [
        ("Content-Type", "application/json"),
        ("Origin", origin),
        ("Authorization", f"Bearer {WEB_KEY}"),
        ("CF-Connecting-IP", "203.0.113.9"),
    ]
    return worker.request("POST", "/token", headers, json.dumps({"room": "demo"}).encode())


def test_the_playground_origin_gets_a_token(worker: Worker, deployment: Deployment) -> None:
    config = deployment.config
    assert config.livekit is not None and config.livekit_api_secret is not None
    origin = deployment.public_url  # the playground is served from the edge's own origin
    answer = token_request(worker, origin)
    assert answer.status == 200, answer.body
    assert answer.headers["access-control-allow-origin"] == origin
    document = json.loads(answer.body)
    claims = api.TokenVerifier(config.livekit.api_key, config.livekit_api_secret).verify(
        document["token"]
    )
    assert claims.video is not None and claims.video.room == "demo" and claims.video.room_join
    assert document["url"] == json.loads(deployment.edge_config)["livekit"]["url"]


def test_a_foreign_origin_gets_403(worker: Worker) -> None:
    answer = token_request(worker, FOREIGN_ORIGIN)
    assert answer.status == 403
    assert FOREIGN_ORIGIN.encode() in answer.body and b"allowed_origins" in answer.body
    assert b"eyJ" not in answer.body  # no JWT
    assert "access-control-allow-origin" not in answer.headers


# --------------------------------------------------------------------------- hostile input


def test_hostile_bodies_are_refused_naming_the_limit_in_pyodide(
    worker: Worker, deployment: Deployment
) -> None:
    """Nesting past the interpreter's recursion limit, on /token before and after the key and
    on a signed webhook, is a 4xx naming the limit in Pyodide too; an oversized declared body is
    refused before it is read."""
    config = deployment.config
    assert config.livekit is not None and config.livekit_api_secret is not None
    deep = b'{"room": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    base = [("Content-Type", "application/json"), ("CF-Connecting-IP", "203.0.113.77")]
    keyed = worker.request("POST", "/token", [*base, ("Authorization", f"Bearer {WEB_KEY}")], deep)
    assert keyed.status == 400 and b"over the JSON nesting limit of 32 levels" in keyed.body
    assert worker.request("POST", "/token", base, deep).status == 401
    body = b'{"event": "room_started", "x": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    token = sign_webhook(body, config.livekit.api_key, config.livekit_api_secret)
    headers = [("Content-Type", "application/webhook+json"), ("Authorization", token)]
    webhook = worker.request("POST", "/livekit/webhook", headers, body)
    assert webhook.status == 400 and b"over the JSON nesting limit" in webhook.body
    assert webhook.outbound == []
    large = worker.request("POST", "/token", [*base, ("Content-Length", "100000000")], b"")
    assert large.status == 413 and b"over the limit of 65536 bytes" in large.body


def test_wrong_keys_do_not_lock_a_valid_key_out_in_pyodide(worker: Worker) -> None:
    address = [("Content-Type", "application/json"), ("CF-Connecting-IP", "203.0.113.78")]
    wrong = [*address, ("Authorization", "Bearer wrong-key-0123456789abcdef")]
    room = json.dumps({"room": "demo"}).encode()
    statuses = [worker.request("POST", "/token", wrong, room).status for _ in range(40)]
    assert statuses[0] == 401 and statuses[-1] == 429, statuses
    valid = worker.request(
        "POST", "/token", [*address, ("Authorization", f"Bearer {WEB_KEY}")], room
    )
    assert valid.status == 200, valid.body
