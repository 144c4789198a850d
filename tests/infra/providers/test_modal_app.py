"""ModalAppProvider at modal's API boundary.

No Modal account exists here, so a real deploy is never exercised. What is: the deploy plan read
back from the real ``modal.App`` definition for each scaling entry and for non-default deploy
settings (app name, environment, secret, region, preemption, concurrency, timeout, autoscaler
options, web labels, the app name agent jobs are looked up by), the check of the deployed web
URLs against the edge's, and a create without a token, which modal refuses before any network
access and the provider turns into the fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import functions.app
from functions.app import SCALING
from functions.deploy_settings import DEPLOY_VARS, DeploySettings
from infra.providers.common import ProvisioningError
from infra.providers.modal_app import (
    DeployPlan,
    ModalApi,
    ModalAppProvider,
    check_web_urls,
    expected_web_url,
    load_app,
    plan,
)

REPO = Path(__file__).resolve().parents[3]


def props(scaling: str, app_name: str = "callplane-media", **over: Any) -> dict[str, Any]:
    return {
        "app_name": app_name,
        "environment": f"env-{scaling}",
        "scaling": scaling,
        "region": "us-east",
        "nonpreemptible": True,
        "workspace": "team",
        "source_hash": "abc123",
        "media_config": "{}",
        "expected_urls": {
            "media": expected_web_url("team", f"{app_name}-{scaling}"),
            "media_streams": expected_web_url("team", f"{app_name}-{scaling}-streams"),
        },
        **over,
    }


@pytest.mark.parametrize("scaling", sorted(SCALING))
def test_plan_reads_what_would_be_deployed(scaling: str) -> None:
    before = {name: os.environ.get(name) for name in DEPLOY_VARS}
    deploy = plan(props(scaling))
    s = SCALING[scaling]
    assert deploy.app_name == "callplane-media" and deploy.environment == f"env-{scaling}"
    assert deploy.secret_name == "callplane-media"
    assert deploy.secret_keys == ("CALLPLANE_MEDIA_CONFIG",)
    assert deploy.label == f"callplane-media-{scaling}"
    assert deploy.streams_label == f"callplane-media-{scaling}-streams"
    assert deploy.launcher_app_name == "callplane-media"
    assert deploy.tag == "abc123"
    assert deploy.regions == ("us-east",) and deploy.nonpreemptible is True
    assert (deploy.max_inputs, deploy.target_inputs) == (s.max_inputs, s.target_inputs)
    assert deploy.timeout == s.timeout
    assert deploy.function_options["min_containers"] == s.min_containers
    assert deploy.function_options["max_containers"] == s.max_containers
    assert deploy.app_tags == {"stack": scaling}
    assert {name: os.environ.get(name) for name in DEPLOY_VARS} == before  # restored


def test_a_non_default_app_name_region_and_preemption_reach_every_function() -> None:
    """callplane:modal.appName names the app, begins both web labels and is the app agent jobs
    are looked up in; region and nonpreemptible place every function, agent jobs included."""
    settings = DeploySettings("prod", "acme-voice", region="eu-west", nonpreemptible=False)
    deploy = plan(props("prod", "acme-voice", region="eu-west", nonpreemptible=False))
    assert deploy.settings == settings
    assert deploy.app_name == "acme-voice" == deploy.launcher_app_name
    assert (deploy.label, deploy.streams_label) == ("acme-voice-prod", "acme-voice-prod-streams")
    assert deploy.regions == ("eu-west",) and deploy.nonpreemptible is False
    assert deploy.function_options["region"] == "eu-west"
    assert deploy.function_options["nonpreemptible"] is False
    with load_app(settings) as module:
        for function in (module.media, module.media_streams, module.agent_job):
            info = function.info()
            assert (info.regions, info.nonpreemptible) == (["eu-west"], False)
        assert module.AGENT_JOB_OPTIONS["region"] == "eu-west"
        assert module.app.name == "acme-voice"
    with load_app(DeploySettings("dev", region="any")) as module:
        assert module.media.info().regions in (None, [])  # unpinned: Modal places it


def test_load_app_leaves_an_earlier_import_as_it_was() -> None:
    earlier, settings = sys.modules["functions.app"], functions.app.DEPLOY
    with load_app(DeploySettings("prod", "acme-voice")) as module:
        assert module is not earlier and module.APP_NAME == "acme-voice"
    assert sys.modules["functions.app"] is earlier and functions.app is earlier
    assert earlier.DEPLOY is settings and settings.app_name == earlier.APP_NAME


def test_a_bad_deploy_setting_is_refused_with_the_key() -> None:
    with pytest.raises(ProvisioningError, match=r"region='US East': not a Modal region"):
        plan(props("dev", region="US East"))


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
    for key, value in (("region", "eu-west"), ("nonpreemptible", False)):
        changed = p.diff("id", olds, {**props("dev"), key: value})
        assert changed.changes is True and changed.replaces == [], key
    renamed = p.diff("id", olds, props("dev", "acme-voice"))
    assert renamed.replaces == ["app_name"]  # the old app is stopped, the new one deployed


# --------------------------------------------------------------------------- deployed URLs

EXPECTED = {
    "media": "https://team--callplane-media-prod.modal.run",
    "media_streams": "https://team--callplane-media-prod-streams.modal.run",
}


def test_web_urls_where_the_edge_expects_them_pass() -> None:
    check_web_urls(EXPECTED, dict(EXPECTED), "team")


def test_an_environment_web_suffix_names_both_urls_and_the_setting() -> None:
    deployed = {k: v.replace("team--", "team-prod--") for k, v in EXPECTED.items()}
    with pytest.raises(ProvisioningError) as err:
        check_web_urls(EXPECTED, deployed, "team")
    message = str(err.value)
    for function in ("media", "media_streams"):
        assert f"Modal serves the {function} function at {deployed[function]}" in message
        assert f"the edge was configured with {EXPECTED[function]}" in message
    assert message.count("Fix: set callplane:modal.webSuffix to 'prod'") == 2


def test_a_web_suffix_the_environment_does_not_have_is_named() -> None:
    expected = {"media": "https://team-dev--callplane-media-dev.modal.run"}
    deployed = {"media": "https://team--callplane-media-dev.modal.run"}
    with pytest.raises(ProvisioningError, match=r"remove callplane:modal\.webSuffix"):
        check_web_urls(expected, deployed, "team")


def test_another_workspace_and_a_shortened_label_are_named() -> None:
    with pytest.raises(ProvisioningError, match=r"set callplane:modal\.workspace .* 'other'"):
        check_web_urls(
            EXPECTED, {**EXPECTED, "media": EXPECTED["media"].replace("team", "other")}, "team"
        )
    shortened = {
        **EXPECTED,
        "media_streams": "https://team--callplane-media-prod-s-1a2b3c.modal.run",
    }
    with pytest.raises(ProvisioningError) as err:
        check_web_urls(EXPECTED, shortened, "team")
    assert "did not keep the label 'callplane-media-prod-streams'" in str(err.value)
    assert "shorter callplane:modal.appName" in str(err.value)
    assert "the media function" not in str(err.value)  # only the function that moved


def test_a_function_without_a_web_url_is_named() -> None:
    with pytest.raises(ProvisioningError, match="no web URL for the media_streams function"):
        check_web_urls(EXPECTED, {"media": EXPECTED["media"], "media_streams": None}, "team")


class ServedAt(ModalApi):
    """Modal's side of a deploy, answering with the URLs a real deploy would report."""

    def __init__(self, urls: Mapping[str, str | None]) -> None:
        self.urls = dict(urls)
        self.deployed: list[DeployPlan] = []

    def ensure_environment(self, name: str) -> None:
        pass

    def put_secret(self, name: str, environment: str, values: dict[str, str]) -> None:
        pass

    def deploy(self, deploy: DeployPlan) -> dict[str, str | None]:
        self.deployed.append(deploy)
        return self.urls


def test_create_exports_the_deployed_urls_and_refuses_urls_the_edge_does_not_use() -> None:
    api = ServedAt(dict(EXPECTED))
    created = ModalAppProvider(api).create(props("prod"))
    assert created.outs is not None
    assert created.outs["web_url"] == EXPECTED["media"]
    assert created.outs["web_urls"] == EXPECTED
    (deployed,) = api.deployed
    assert deployed.label == "callplane-media-prod"
    elsewhere = {k: v.replace("team--", "team-prod--") for k, v in EXPECTED.items()}
    with pytest.raises(ProvisioningError, match="webSuffix to 'prod'"):
        ModalAppProvider(ServedAt(elsewhere)).update("id", props("prod"), props("prod"))
