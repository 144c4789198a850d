"""What a deploy of the media app is for: read from the environment, refused when missing or
malformed with the variable, the value and the fix, and the one definition of the web labels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from functions.deploy_settings import (
    ANY_REGION,
    DEFAULT_APP_NAME,
    DEFAULT_NONPREEMPTIBLE,
    DEFAULT_REGION,
    DEPLOY_VARS,
    DeploySettings,
    DeploySettingsError,
    web_labels,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_stack_alone_gives_the_safe_defaults() -> None:
    settings = DeploySettings.from_env({"CALLPLANE_STACK": "prod"})
    assert settings == DeploySettings("prod", DEFAULT_APP_NAME, DEFAULT_REGION, True)
    assert settings.placement_options() == {"region": "us-east", "nonpreemptible": True}
    assert DEFAULT_NONPREEMPTIBLE is True


def test_every_setting_survives_the_trip_through_the_environment() -> None:
    settings = DeploySettings("staging", "acme-voice", region="eu-west", nonpreemptible=False)
    assert tuple(settings.to_env()) == DEPLOY_VARS
    assert DeploySettings.from_env(settings.to_env()) == settings
    assert settings.placement_options() == {"region": "eu-west", "nonpreemptible": False}
    unpinned = DeploySettings("dev", region=ANY_REGION)
    assert DeploySettings.from_env(unpinned.to_env()) == unpinned
    assert unpinned.modal_region is None and unpinned.placement_options()["region"] is None


def test_without_the_stack_the_error_says_how_to_set_it() -> None:
    for environ in ({}, {"CALLPLANE_STACK": ""}):
        with pytest.raises(DeploySettingsError) as err:
            DeploySettings.from_env(environ)
        message = str(err.value)
        assert message.startswith("CALLPLANE_STACK is not set")
        assert "pulumi up" in message
        assert "CALLPLANE_STACK=prod modal deploy -m functions.app --env prod" in message


@pytest.mark.parametrize(
    ("var", "value", "fix"),
    [
        ("CALLPLANE_STACK", "qa", "Fix: use one of dev, staging, prod"),
        ("CALLPLANE_MODAL_APP_NAME", "Acme_Voice", "lower-case letters, digits and single '-'"),
        ("CALLPLANE_MODAL_APP_NAME", "a" * 41, "use 1-40 lower-case letters"),
        ("CALLPLANE_MODAL_REGION", "US East", "e.g. 'us' (broad) or 'us-east' (narrow)"),
        ("CALLPLANE_MODAL_NONPREEMPTIBLE", "maybe", "Fix: use true or false"),
    ],
)
def test_a_bad_setting_names_the_variable_the_value_and_the_fix(
    var: str, value: str, fix: str
) -> None:
    with pytest.raises(DeploySettingsError) as err:
        DeploySettings.from_env({"CALLPLANE_STACK": "dev", var: value})
    assert str(err.value).startswith(f"{var}={value!r}: ")
    assert fix in str(err.value)


def test_settings_made_in_code_are_checked_too() -> None:
    with pytest.raises(DeploySettingsError, match=r"^region='eu west': not a Modal region"):
        DeploySettings("dev", region="eu west")


@pytest.mark.parametrize("value", ["us", "us-east", "eu-west", "us-east-1", "ap-northeast", "any"])
def test_regions_written_as_modal_writes_them_are_accepted(value: str) -> None:
    assert DeploySettings("dev", region=value).region == value


def test_the_web_labels_are_app_and_stack() -> None:
    labels = web_labels("acme-voice", "prod")
    assert (labels.media, labels.streams) == ("acme-voice-prod", "acme-voice-prod-streams")
    assert DeploySettings("prod", "acme-voice").labels == labels


def test_modal_deploy_without_the_stack_fails_with_the_fix(tmp_path: Path) -> None:
    """What a hand-run deploy meets: modal imports the app, which refuses before modal asks for
    a token or contacts anything."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODAL_", "CALLPLANE_"))}
    env.update(HOME=str(tmp_path), MODAL_CONFIG_PATH=str(tmp_path / "none.toml"), COLUMNS="200")
    result = subprocess.run(
        [sys.executable, "-m", "modal", "deploy", "-m", "functions.app", "--env", "prod"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    said = " ".join((result.stdout + result.stderr).split())
    assert "DeploySettingsError: CALLPLANE_STACK is not set" in said
    assert "CALLPLANE_STACK=prod modal deploy -m functions.app --env prod" in said
    assert "Deployed" not in said
