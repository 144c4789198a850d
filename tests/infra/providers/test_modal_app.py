"""ModalAppProvider at modal's API boundary.

No Modal account exists here, so a real deploy is never exercised. What is: the deploy plan read
back from the real ``modal.App`` definition for each scaling entry (app name, environment,
secret, region, concurrency, timeout, autoscaler options, web label), and a create without a
token, which modal refuses before any network access and the provider turns into the fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from functions.app import SCALING
from infra.providers.modal_app import ModalAppProvider, expected_web_url, plan

REPO = Path(__file__).resolve().parents[3]


def props(scaling: str) -> dict[str, str]:
    return {
        "app_name": "callplane-media",
        "environment": f"env-{scaling}",
        "scaling": scaling,
        "workspace": "team",
        "source_hash": "abc123",
        "media_config": "{}",
    }


@pytest.mark.parametrize("scaling", sorted(SCALING))
def test_plan_reads_what_would_be_deployed(scaling: str) -> None:
    before = os.environ.get("CALLPLANE_STACK")
    deploy = plan(props(scaling))
    s = SCALING[scaling]
    assert deploy.app_name == "callplane-media" and deploy.environment == f"env-{scaling}"
    assert deploy.secret_name == "callplane-media"
    assert deploy.secret_keys == ("CALLPLANE_MEDIA_CONFIG",)
    assert deploy.label == f"callplane-media-{scaling}"
    assert deploy.tag == "abc123"
    assert deploy.regions == (s.region,)
    assert (deploy.max_inputs, deploy.target_inputs) == (s.max_inputs, s.target_inputs)
    assert deploy.timeout == s.timeout
    assert deploy.function_options["min_containers"] == s.min_containers
    assert deploy.function_options["max_containers"] == s.max_containers
    assert deploy.app_tags == {"stack": scaling}
    assert os.environ.get("CALLPLANE_STACK") == before  # restored


def test_expected_web_url_follows_modals_scheme() -> None:
    assert expected_web_url("team", "callplane-media-prod") == (
        "https://team--callplane-media-prod.modal.run"
    )
    assert expected_web_url("team", "x", "staging") == "https://team-staging--x.modal.run"


def test_create_without_a_token_fails_before_the_network_with_the_fix(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "from infra.providers.modal_app import ModalAppProvider\n"
        "try:\n"
        f"    ModalAppProvider().create(json.loads({json.dumps(json.dumps(props('dev')))}))\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env.update(HOME=str(tmp_path), MODAL_CONFIG_PATH=str(tmp_path / "none.toml"))
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.startswith("ProvisioningError callplane:modal: could not create the Modal env")
    assert "AuthError" in out and "MODAL_TOKEN_ID" in out


def test_diff_redeploys_on_code_or_settings_and_replaces_on_environment() -> None:
    p = ModalAppProvider()
    olds = {**props("dev"), "__provider": "a", "web_url": "https://x"}
    assert p.diff("id", olds, {**props("dev"), "__provider": "b"}).changes is False
    assert p.diff("id", olds, {**props("dev"), "source_hash": "new"}).replaces == []
    assert p.diff("id", olds, {**props("dev"), "environment": "other"}).replaces == ["environment"]
