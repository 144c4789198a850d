"""The local stack with the real Pulumi CLI (built by scripts/tools/setup_tools.sh) on a file
backend, against the Twilio simulator (a separate process) and a real livekit-server + Redis.

One ordered scenario, because each step starts from the state the previous one left:
preview refuses PK without a bundle -> up buys PK mobile, US local and GB local and makes the
LiveKit trunk and rule -> a second up and a preview change nothing -> a new edge URL updates the
webhooks in place (same numbers) -> drift made behind Pulumi's back shows in refresh and the next
up restores it -> a simulated call to the PK number reaches the agent through an edge and media
app started from the stack's outputs -> no secret is in the state in plaintext -> destroy keeps
the protected numbers -> the next up adopts them -> Twilio refusing a purchase (21649, no
inventory; armed on the simulator with /_simulator/faults) fails naming the entry, buys nothing
and the next up converges -> an up killed (SIGKILL) during a purchase is rerun without buying a
duplicate -> a number routed over SIP gets a Twilio SIP trunk on the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml
from livekit import api

from callplane_dev.stack_outputs import LocalPlanes
from infra.stack_file import PLACEHOLDERS
from tests.infra.conftest import TOOLS_BIN, LiveKit, tool
from tests.support.ports import free_port, wait_port

REPO = Path(__file__).resolve().parents[2]
SID = "AC10ca10ca10ca10ca10ca10ca10ca10ca"  # Pulumi.local.yaml's simulator account
TOKEN = "e2e-secret-auth-token-7c41"
CALLER = "+15017122661"
BUNDLE_GB = "BU10ca10ca10ca10ca10ca10ca10ca10ca"
pytestmark = pytest.mark.timeout(1200)


class PulumiProject:
    """A project in a temp dir running the repository's program, with one stack on a file
    backend: ``config`` is its ``callplane:`` config, ``secrets`` are set with --secret."""

    def __init__(
        self, root: Path, stack: str, config: dict[str, Any], secrets: dict[str, str]
    ) -> None:
        self.root = root
        self.stack = stack
        (root / "state").mkdir()
        (root / "Pulumi.yaml").write_text(
            yaml.safe_dump(
                {
                    "name": "callplane",
                    "runtime": {
                        "name": "python",
                        "options": {"toolchain": "pip", "virtualenv": sys.prefix},
                    },
                    "main": str(REPO / "infra"),
                }
            )
        )
        self.config = config
        self.write()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PULUMI_")},
            "PATH": f"{TOOLS_BIN}:{os.environ['PATH']}",
            "PULUMI_HOME": str(root / "home"),
            "PULUMI_BACKEND_URL": f"file://{root / 'state'}",
            "PULUMI_CONFIG_PASSPHRASE": "e2e-passphrase",
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PULUMI_DISABLE_REGISTRY_RESOLVE": "true",
            "PULUMI_DIY_BACKEND_NO_LEGACY_WARNING": "true",
        }
        self.run("stack", "init", stack)
        for key, value in secrets.items():
            self.run("config", "set", "--secret", key, value)

    def write(self) -> None:
        path = self.root / f"Pulumi.{self.stack}.yaml"
        old = yaml.safe_load(path.read_text()) if path.exists() else {}
        secure = {
            k: v
            for k, v in (old.get("config") or {}).items()
            if isinstance(v, dict) and "secure" in v
        }
        doc = {**old, "config": {**self.config, **secure}}
        path.write_text(yaml.safe_dump(doc))

    def command(self, *args: str) -> list[str]:
        return [tool("pulumi"), *args, "--non-interactive", "--color", "never"]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.command(*args),
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        # Every command's output, in order, for reading after a run (tmp_path is kept); never
        # a secret: not the value of `config set --secret`, not the output of --show-secrets.
        shown = (*args[:-1], "<secret>") if "--secret" in args else args
        with (self.root / "pulumi.log").open("a") as log:
            log.write(f"$ pulumi {' '.join(shown)}  (exit {proc.returncode})\n")
            if "--show-secrets" not in args:
                log.write(f"{proc.stdout}\n{proc.stderr}\n")
        if check and proc.returncode != 0:
            raise AssertionError(f"pulumi {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def outputs(self, *, secrets: bool = False) -> dict[str, Any]:
        args = ("stack", "output", "--json", *(["--show-secrets"] if secrets else []))
        return json.loads(self.run(*args).stdout)  # type: ignore[no-any-return]

    def state(self) -> dict[str, Any]:
        return json.loads(self.run("stack", "export").stdout)  # type: ignore[no-any-return]


class Project(PulumiProject):
    """The local stack (``Pulumi.local.yaml``) aimed at the simulator and ``livekit``."""

    def __init__(self, root: Path, sim_url: str, livekit: LiveKit) -> None:
        stack = yaml.safe_load((REPO / "Pulumi.local.yaml").read_text())
        config = stack["config"]
        config["callplane:twilio"]["apiBaseUrl"] = sim_url
        config["callplane:livekit"] = {"url": livekit.url, "apiKey": livekit.api_key}
        for key in ("callplane:twilioAuthToken", "callplane:livekitApiSecret"):
            config.pop(key)
        secrets = {
            "callplane:twilioAuthToken": TOKEN,
            "callplane:livekitApiSecret": livekit.api_secret,
        }
        super().__init__(root, "local", config, secrets)


def test_a_cloud_stack_preview_fails_on_a_profile_naming_an_unknown_tool(tmp_path: Path) -> None:
    """Before any provider is asked for credentials, the program refuses the stack."""
    config = yaml.safe_load((REPO / "Pulumi.dev.yaml").read_text())["config"]
    config["callplane:profiles"]["support"]["tools"] = ["end_call", "book_flight"]
    secrets = {f"callplane:{key}": value for key, value in PLACEHOLDERS.items()}
    project = PulumiProject(tmp_path, "dev", config, secrets)
    failed = project.run("preview", check=False)
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert "callplane:profiles.support.tools names 'book_flight'" in output, output
    assert "Fix: define it with @callplane.tools.tool" in output
    # Refused by the program before any resource: no provider was reached for credentials.
    assert "Modal" not in output and "cloudflare:apiToken" not in output


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("sim")
    port = free_port()
    env = {**os.environ, "TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "callplane_standins.twilio_simulator",
            "--state",
            str(work / "twilio.json"),
            "--port",
            str(port),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc, "the Twilio simulator")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def sim_client(sim_url: str) -> Any:
    from twilio.rest import Client

    client = Client(SID, TOKEN)
    client.api.base_url = sim_url
    client.trunking.base_url = sim_url
    return client


def sim_numbers(sim_url: str) -> dict[str, Any]:
    return {n.phone_number: n for n in sim_client(sim_url).incoming_phone_numbers.list()}


def arm(sim_url: str, **fault: Any) -> None:
    """Arm a fault on the simulator process (callplane_standins/twilio_simulator/faults.py)."""
    answer = httpx.post(f"{sim_url}/_simulator/faults", json=fault, auth=(SID, TOKEN))
    assert answer.status_code == 201, answer.text


def disarm(sim_url: str) -> None:
    assert httpx.delete(f"{sim_url}/_simulator/faults", auth=(SID, TOKEN)).status_code == 204


def resources(state: dict[str, Any]) -> list[str]:
    return [r["urn"].rsplit("::", 1)[-1] for r in state["deployment"].get("resources", [])]


def call_through_the_stack(
    outputs: dict[str, Any], sim_url: str, number: str, data_dir: Path
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Start the edge and media app from the stack's outputs, ring ``number`` on the
    simulator with a caller who listens to the greeting and hangs up, and return the carrier's
    result and the media app's record of the call."""

    async def go() -> tuple[dict[str, Any], dict[str, Any] | None]:
        async with LocalPlanes(outputs, data_dir=data_dir) as planes:
            async with httpx.AsyncClient(base_url=sim_url, auth=(SID, TOKEN), timeout=90) as http:
                answer = await http.post(
                    "/_simulator/Calls",
                    json={
                        "from": CALLER,
                        "to": number,
                        "script": [{"wait_for_reply": 15}, {"hang_up": True}],
                        "max_duration_s": 60,
                    },
                )
            assert answer.status_code == 200, answer.text
            result: dict[str, Any] = answer.json()
            for _ in range(100):  # the record is saved as the media socket closes
                record = planes.record(result["call_sid"])
                if record is not None:
                    return result, record
                await asyncio.sleep(0.05)
            return result, None

    return asyncio.run(go())


def livekit_state(lk: LiveKit) -> tuple[list[Any], list[Any]]:
    import asyncio

    async def go() -> tuple[list[Any], list[Any]]:
        client = api.LiveKitAPI(lk.url, lk.api_key, lk.api_secret)
        try:
            t = await client.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest())
            r = await client.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest())
            return list(t.items), list(r.items)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_local_stack_lifecycle(tmp_path: Path, simulator: str, livekit: LiveKit) -> None:
    project = Project(tmp_path, simulator, livekit)

    # 1. Impossible request: fails at preview, naming the entry and the fix; nothing bought.
    good_numbers = project.config["callplane:numbers"]
    project.config["callplane:numbers"] = [
        {"country": "PK", "type": "mobile", "profile": "support"}
    ]
    project.write()
    failed = project.run("preview", check=False)
    assert failed.returncode != 0
    assert "callplane:numbers[0].bundle is missing" in failed.stdout + failed.stderr
    assert "add bundle: BU" in failed.stdout + failed.stderr
    assert sim_numbers(simulator) == {}
    project.config["callplane:numbers"] = good_numbers
    project.write()

    # 2. up: PK mobile (with bundle), US local, GB local, pointed at the local edge.
    up = project.run("up", "--yes", "--skip-preview")
    assert "+ 8 created" in up.stdout, up.stdout
    out = project.outputs()
    numbers = {n["name"]: n for n in out["numbers"]}
    assert set(numbers) == {"pk-mobile-support", "us-local-sales", "gb-local-support"}
    assert numbers["pk-mobile-support"]["number"].startswith("+92")
    assert numbers["us-local-sales"]["number"].startswith("+1415")
    assert numbers["gb-local-support"]["number"].startswith("+44")
    owned = sim_numbers(simulator)
    assert len(owned) == 3
    assert {n.voice_url for n in owned.values()} == {"http://127.0.0.1:8787/twilio/voice"}
    assert owned[numbers["pk-mobile-support"]["number"]].bundle_sid.startswith("BU")
    trunks, rules = livekit_state(livekit)
    assert sorted(trunks[0].numbers) == sorted(n["number"] for n in out["numbers"])
    assert rules[0].room_config.agents[0].agent_name == "callplane-agent"
    assert out["livekit"]["trunkId"] == trunks[0].sip_trunk_id
    assert out["edgeConfig"] == "[secret]" and out["mediaConfig"] == "[secret]"
    assert out["playground"]["url"] == "http://127.0.0.1:8787/playground/"
    assert "playgroundLink" in out["playground"]["access"]
    assert out["playgroundLink"] == "[secret]"
    link = project.outputs(secrets=True)["playgroundLink"]
    assert link == "http://127.0.0.1:8787/playground/?key=local-web-key-not-for-production"

    # 3. Nothing changed: a second up and a preview are no-ops.
    again = project.run("up", "--yes", "--skip-preview")
    assert "8 unchanged" in again.stdout and "updated" not in again.stdout
    project.run("preview", "--expect-no-changes")

    # 4. A new edge URL updates every webhook in place: same numbers, no replace. (Free ports
    # for the edge and the media app: step 6 serves them there.)
    edge_url = f"http://127.0.0.1:{free_port()}"
    project.config["callplane:edge"] = {"url": edge_url}
    project.config["callplane:media"] = {"urls": {"local": f"ws://127.0.0.1:{free_port()}"}}
    project.write()
    moved = project.run("up", "--yes", "--skip-preview")
    assert "3 updated" in moved.stdout and "replaced" not in moved.stdout, moved.stdout
    after = {n["name"]: n for n in project.outputs()["numbers"]}
    assert {k: v["sid"] for k, v in after.items()} == {k: v["sid"] for k, v in numbers.items()}
    assert {n.voice_url for n in sim_numbers(simulator).values()} == {f"{edge_url}/twilio/voice"}

    # 5. Drift behind Pulumi's back shows in refresh; the next up restores it.
    us = sim_numbers(simulator)[numbers["us-local-sales"]["number"]]
    us.update(voice_url="https://drift.example/hook")
    refresh = project.run("refresh", "--yes", "--skip-preview")
    assert re.search(r"~ .*number-us-local-sales.*updated", refresh.stdout), refresh.stdout
    fix = project.run("up", "--yes", "--skip-preview")
    assert "1 updated" in fix.stdout, fix.stdout
    assert us.fetch().voice_url == f"{edge_url}/twilio/voice"

    # 6. A call to the bought PK number: its webhook (set by Pulumi) reaches an edge started
    # from the stack's outputs, then the media app and the local engine; the agent answers.
    pk_number = numbers["pk-mobile-support"]["number"]
    result, record = call_through_the_stack(
        project.outputs(secrets=True), simulator, pk_number, tmp_path / "planes"
    )
    assert result["status"] == "completed" and result["errors"] == [], result
    assert result["timeline"]["streams"], "the call never reached the media app"
    assert record is not None, "the media app kept no record of the call"
    assert record["to"] == pk_number and record["profile"] == "support"
    assert pk_number.startswith("+92") and record["from"] == CALLER
    greeting = [line["text"] for line in record["transcript"] if line["role"] == "agent"]
    assert greeting and greeting[0], record["transcript"]
    played = [c["played_bytes"] for c in result["timeline"]["chunks"] if c["source"] == "stream"]
    assert sum(played) / 8 > 1000, "the caller heard over a second of the agent (8 bytes/ms)"

    # 7. Secrets stay secret: the state holds no auth token or LiveKit secret in plaintext.
    state = project.run("stack", "export").stdout
    assert TOKEN not in state and livekit.api_secret not in state
    assert "ciphertext" in state

    # 8. destroy: protected numbers stay on the account (Pulumi says [retain]).
    destroy = project.run("destroy", "--yes", "--skip-preview")
    assert destroy.stdout.count("[retain]") >= 3, destroy.stdout
    assert set(sim_numbers(simulator)) == {n["number"] for n in numbers.values()}
    assert livekit_state(livekit) == ([], [])

    # 9. up again after destroy adopts the retained numbers: nothing bought twice.
    project.run("up", "--yes", "--skip-preview")
    assert len(sim_numbers(simulator)) == 3
    assert {n["sid"] for n in project.outputs()["numbers"]} == {n["sid"] for n in numbers.values()}

    # 10. Twilio refuses the purchase with 21649 (a bundle still in review: the config check
    # cannot know): a clear error naming the entry and the fix; nothing bought, nothing in the
    # state; the next up, once Twilio accepts, converges.
    entries = project.config["callplane:numbers"]
    entries.append(
        {
            "country": "PK",
            "type": "mobile",
            "bundle": "BU" + "12" * 16,
            "profile": "sales",
        }
    )
    project.write()
    arm(
        simulator,
        method="POST",
        path="*/IncomingPhoneNumbers.json",
        params={"PhoneNumber": "+92*"},
        status=400,
        code=21649,
        message="The bundle is not approved for this number",
    )
    refused = project.run("up", "--yes", "--skip-preview", check=False)
    text = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert "callplane:numbers[3] (PK mobile for profile sales)" in text, text
    assert "Twilio error 21649" in text and "add bundle: BU" in text
    assert len(sim_numbers(simulator)) == 3
    exported = project.state()
    assert "number-pk-mobile-sales" not in resources(exported)
    assert not exported["deployment"].get("pending_operations")
    disarm(simulator)
    converged = project.run("up", "--yes", "--skip-preview")
    assert "1 created" in converged.stdout, converged.stdout
    assert len(sim_numbers(simulator)) == 4

    # 11. "No inventory" from Twilio: the same, with the no-stock fix.
    entries.append({"country": "GB", "type": "local", "bundle": BUNDLE_GB, "profile": "sales"})
    project.write()
    arm(
        simulator,
        method="GET",
        path="*/AvailablePhoneNumbers/GB/Local.json",
        status=404,
        code=20404,
        message="The requested resource was not found",
    )
    refused = project.run("up", "--yes", "--skip-preview", check=False)
    text = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert "callplane:numbers[4] (GB local for profile sales)" in text, text
    assert "no GB local numbers in stock" in text and "Fix:" in text
    assert len(sim_numbers(simulator)) == 4
    assert "number-gb-local-sales" not in resources(project.state())
    disarm(simulator)
    project.run("up", "--yes", "--skip-preview")
    assert len(sim_numbers(simulator)) == 5

    # 12. An up killed (SIGKILL) while Twilio is answering a purchase: the number is bought but
    # Pulumi never recorded it. The rerun finds it by its friendly name instead of buying again.
    entries.append({"country": "US", "type": "local", "areaCode": 212, "profile": "support"})
    project.write()
    arm(simulator, method="POST", path="*/IncomingPhoneNumbers.json", delay_s=120)
    name = "callplane local us-local-support"
    proc = subprocess.Popen(
        project.command("up", "--yes", "--skip-preview"),
        cwd=project.root,
        env=project.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: pulumi and the plugins it started
    )
    try:
        deadline = time.monotonic() + 120
        bought: list[Any] = []
        while not bought and time.monotonic() < deadline:
            bought = [n for n in sim_numbers(simulator).values() if n.friendly_name == name]
            time.sleep(0.2)
        assert bought, "the purchase did not reach the simulator"
        assert proc.poll() is None, "pulumi finished before it could be killed"
    finally:
        # Pulumi starts the language host and the provider plugin in process groups of their
        # own, so the group kill misses them: take the whole tree as it is at this moment.
        tree = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGKILL)
        for child in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        proc.wait(30)
        psutil.wait_procs(tree, timeout=10)
    disarm(simulator)
    assert len(sim_numbers(simulator)) == 6
    assert "number-us-local-support" not in resources(project.state())
    rerun = project.run("up", "--yes", "--skip-preview", check=False)
    if rerun.returncode != 0 and "locked" in rerun.stdout + rerun.stderr:
        project.run("cancel", "--yes")
        rerun = project.run("up", "--yes", "--skip-preview")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert len(sim_numbers(simulator)) == 6, "the rerun bought a duplicate"
    rows = {n["name"]: n for n in project.outputs()["numbers"]}
    assert rows["us-local-support"]["sid"] == bought[0].sid
    project.run("preview", "--expect-no-changes")

    # 13. A number routed over SIP: a Twilio SIP trunk (trunking API on the simulator) with an
    # origination URL to LiveKit's SIP endpoint, and the number on it.
    project.config["callplane:livekit"] = {
        **project.config["callplane:livekit"],
        "sipUri": "sip:127.0.0.1:5060",
    }
    entries.append(
        {
            "country": "US",
            "type": "local",
            "areaCode": 415,
            "profile": "sales",
            "route": "sip",
            "name": "us-sip-sales",
        }
    )
    project.write()
    sip = project.run("up", "--yes", "--skip-preview")
    assert "2 created" in sip.stdout, sip.stdout
    client = sim_client(simulator)
    (trunk,) = client.trunking.v1.trunks.list()
    assert trunk.friendly_name == "callplane local"
    assert [u.sip_url for u in client.trunking.v1.trunks(trunk.sid).origination_urls.list()] == [
        "sip:127.0.0.1:5060"
    ]
    sip_number = {n["name"]: n for n in project.outputs()["numbers"]}["us-sip-sales"]["number"]
    assert [n.phone_number for n in client.trunking.v1.trunks(trunk.sid).phone_numbers.list()] == [
        sip_number
    ]
    project.run("preview", "--expect-no-changes")
    final = project.run("destroy", "--yes", "--skip-preview")
    assert client.trunking.v1.trunks.list() == [], final.stdout
    assert len(sim_numbers(simulator)) == 7  # protected numbers stay
