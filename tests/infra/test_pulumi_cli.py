"""The local stack with the real Pulumi CLI (built by scripts/tools/setup_tools.sh) on a file
backend, against the Twilio simulator (a separate process) and a real livekit-server + Redis.

One ordered scenario, because each step starts from the state the previous one left:
preview refuses PK without a bundle -> up buys PK mobile, US local and GB local and makes the
LiveKit trunk and rule -> a second up and a preview change nothing -> a new edge URL updates the
webhooks in place (same numbers) -> drift made behind Pulumi's back shows in refresh and the next
up restores it -> no secret is in the state in plaintext -> destroy keeps the protected numbers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from livekit import api

from tests.infra.conftest import TOOLS_BIN, LiveKit, free_port, tool, wait_port

REPO = Path(__file__).resolve().parents[2]
SID = "AC10ca10ca10ca10ca10ca10ca10ca10ca"  # Pulumi.local.yaml's simulator account
TOKEN = "e2e-secret-auth-token-7c41"
pytestmark = pytest.mark.timeout(600)


class Project:
    """A copy of the project's stack file in a temp dir, running the repository's program."""

    def __init__(self, root: Path, sim_url: str, livekit: LiveKit) -> None:
        self.root = root
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
        stack = yaml.safe_load((REPO / "Pulumi.local.yaml").read_text())
        config = stack["config"]
        config["callplane:twilio"]["apiBaseUrl"] = sim_url
        config["callplane:livekit"] = {"url": livekit.url, "apiKey": livekit.api_key}
        for key in ("callplane:twilioAuthToken", "callplane:livekitApiSecret"):
            config.pop(key)
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
        self.run("stack", "init", "local")
        self.run("config", "set", "--secret", "callplane:twilioAuthToken", TOKEN)
        self.run("config", "set", "--secret", "callplane:livekitApiSecret", livekit.api_secret)

    def write(self) -> None:
        path = self.root / "Pulumi.local.yaml"
        old = yaml.safe_load(path.read_text()) if path.exists() else {}
        secure = {
            k: v
            for k, v in (old.get("config") or {}).items()
            if isinstance(v, dict) and "secure" in v
        }
        doc = {**old, "config": {**self.config, **secure}}
        path.write_text(yaml.safe_dump(doc))

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [tool("pulumi"), *args, "--non-interactive", "--color", "never"],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"pulumi {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def outputs(self) -> dict[str, Any]:
        return json.loads(self.run("stack", "output", "--json").stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("sim")
    port = free_port()
    env = {**os.environ, "TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "callplane.local.twilio",
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


def sim_numbers(sim_url: str) -> dict[str, Any]:
    from twilio.rest import Client

    client = Client(SID, TOKEN)
    client.api.base_url = sim_url
    return {n.phone_number: n for n in client.incoming_phone_numbers.list()}


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
    project.config["callplane:numbers"] = [{"country": "PK", "type": "mobile", "profile": "x"}]
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
    assert out["edgeConfig"] == "[secret]"

    # 3. Nothing changed: a second up and a preview are no-ops.
    again = project.run("up", "--yes", "--skip-preview")
    assert "8 unchanged" in again.stdout and "updated" not in again.stdout
    project.run("preview", "--expect-no-changes")

    # 4. A new edge URL updates every webhook in place: same numbers, no replace.
    project.config["callplane:edge"] = {"url": "http://127.0.0.1:8790"}
    project.write()
    moved = project.run("up", "--yes", "--skip-preview")
    assert "3 updated" in moved.stdout and "replaced" not in moved.stdout, moved.stdout
    after = {n["name"]: n for n in project.outputs()["numbers"]}
    assert {k: v["sid"] for k, v in after.items()} == {k: v["sid"] for k, v in numbers.items()}
    assert {n.voice_url for n in sim_numbers(simulator).values()} == {
        "http://127.0.0.1:8790/twilio/voice"
    }

    # 5. Drift behind Pulumi's back shows in refresh; the next up restores it.
    us = sim_numbers(simulator)[numbers["us-local-sales"]["number"]]
    us.update(voice_url="https://drift.example/hook")
    refresh = project.run("refresh", "--yes", "--skip-preview")
    assert re.search(r"~ .*number-us-local-sales.*updated", refresh.stdout), refresh.stdout
    fix = project.run("up", "--yes", "--skip-preview")
    assert "1 updated" in fix.stdout, fix.stdout
    assert us.fetch().voice_url == "http://127.0.0.1:8790/twilio/voice"

    # 6. Secrets stay secret: the state holds no auth token or LiveKit secret in plaintext.
    state = project.run("stack", "export").stdout
    assert TOKEN not in state and livekit.api_secret not in state
    assert "ciphertext" in state

    # 7. destroy: protected numbers stay on the account (Pulumi says [retain]).
    destroy = project.run("destroy", "--yes", "--skip-preview")
    assert destroy.stdout.count("[retain]") >= 3, destroy.stdout
    assert set(sim_numbers(simulator)) == {n["number"] for n in numbers.values()}
    assert livekit_state(livekit) == ([], [])

    # 8. up again after destroy adopts the retained numbers: nothing bought twice.
    project.run("up", "--yes", "--skip-preview")
    assert len(sim_numbers(simulator)) == 3
    assert {n["sid"] for n in project.outputs()["numbers"]} == {n["sid"] for n in numbers.values()}
