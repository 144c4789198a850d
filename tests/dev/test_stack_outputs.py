"""The documents the program exports (edgeConfig, mediaConfig, playground) and the glue that
turns them into the local planes' configs (callplane_dev.stack_outputs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from callplane_dev.stack_outputs import StackOutputError, planes_from_outputs
from infra.config import StackConfig, load
from infra.program import media_settings_json, playground_access
from infra.settings import edge_config_json, edge_livekit

REPO = Path(__file__).resolve().parents[2]


def local_stack(**over: Any) -> StackConfig:
    raw = {
        k.removeprefix("callplane:"): v
        for k, v in yaml.safe_load((REPO / "Pulumi.local.yaml").read_text())["config"].items()
    }
    raw.update(over)
    return load(raw)


def outputs_of(config: StackConfig, numbers: dict[str, str]) -> dict[str, Any]:
    """What ``pulumi stack output --json --show-secrets`` shows for ``config`` once the
    numbers (E.164 -> profile) are bought."""
    media = dict(config.media.urls)
    rows = [(n, p, config.default_region) for n, p in numbers.items()]
    return {
        "kind": config.kind,
        "edgeConfig": edge_config_json(config, rows, media),
        "mediaConfig": media_settings_json(config, media[config.default_region]),
    }


def test_local_outputs_become_edge_and_media_configs_on_the_stack_ports(tmp_path: Path) -> None:
    config = local_stack()
    outputs = outputs_of(config, {"+923001234567": "support", "+14155550100": "sales"})
    planes = planes_from_outputs(
        outputs, realtime_url="ws://127.0.0.1:9/realtime", records_path=tmp_path / "r.sqlite3"
    )
    assert (planes.edge_port, planes.media_port) == (8787, 8788)
    assert planes.edge.numbers["+923001234567"].profile == "support"
    assert planes.edge.stream_secret == planes.media.stream_secret == config.stream_secret
    assert planes.edge.twilio_auth_token == planes.media.twilio_auth_token
    assert planes.media.public_media_url == "ws://127.0.0.1:8788/twilio/media"
    assert planes.media.twilio_api_base_url == "http://127.0.0.1:8089"
    assert planes.media.edge_voice_url == "http://127.0.0.1:8787/twilio/voice"
    assert planes.media.realtime_url == "ws://127.0.0.1:9/realtime"
    assert planes.media.records_path == tmp_path / "r.sqlite3"
    # The local stack defines no profiles: the numbers' profiles come from the samples.
    assert set(planes.media.profiles) == {"support", "sales"}
    assert planes.media.profiles["support"].greeting
    # The edge's web path: LiveKit as ws://, the stack's web key, dispatch to the media app.
    assert planes.edge.livekit is not None
    assert planes.edge.livekit.url == "ws://127.0.0.1:7880"
    assert planes.edge.livekit.web_keys == ("local-web-key-not-for-production",)
    assert planes.edge.livekit.dispatch_url == "http://127.0.0.1:8788/agents/dispatch"


def test_a_profile_the_stack_defines_wins_over_the_sample(tmp_path: Path) -> None:
    config = local_stack(
        profiles={"support": {"instructions": "Stack's own."}, "sales": {"instructions": "Sell."}}
    )
    outputs = outputs_of(config, {"+923001234567": "support"})
    planes = planes_from_outputs(outputs, realtime_url="ws://x/r", records_path=tmp_path / "r")
    assert planes.media.profiles["support"].instructions == "Stack's own."


def test_unknown_profile_masked_outputs_and_cloud_stacks_are_refused(tmp_path: Path) -> None:
    config = local_stack()
    kw: dict[str, Any] = {"realtime_url": "ws://x/r", "records_path": tmp_path / "r"}
    unknown = outputs_of(config, {"+923001234567": "billing"})
    with pytest.raises(StackOutputError, match=r"profile 'billing'.*callplane:profiles\.billing"):
        planes_from_outputs(unknown, **kw)
    masked = {**outputs_of(config, {}), "edgeConfig": "[secret]"}
    with pytest.raises(StackOutputError, match="--show-secrets"):
        planes_from_outputs(masked, **kw)
    no_media = {k: v for k, v in outputs_of(config, {}).items() if k != "mediaConfig"}
    with pytest.raises(StackOutputError, match="callplane:mediaApiKey"):
        planes_from_outputs(no_media, **kw)
    with pytest.raises(StackOutputError, match="not 'local'"):
        planes_from_outputs({**outputs_of(config, {}), "kind": "cloud"}, **kw)


def test_playground_access_says_how_to_get_in() -> None:
    with_key = local_stack()
    assert "playgroundLink" in playground_access(with_key)
    without = local_stack(webKey=None)
    text = playground_access(without)
    assert "refuses every request" in text and "pulumi config set --secret callplane:webKey" in text
    assert "no callplane:livekit" in playground_access(local_stack(livekit=None))


def test_edge_livekit_section_carries_the_stack_keys_but_not_without_livekit() -> None:
    config = local_stack(linkSecret="l" * 20, mediaApiKey=None)
    section = edge_livekit(config, "ws://127.0.0.1:8788")
    assert section is not None
    assert section["api_secret"] == "secret" and section["link_secret"] == "l" * 20
    assert "dispatch_url" not in section  # no media key, no dispatch
    assert edge_livekit(local_stack(livekit=None, livekitApiSecret=None), "ws://h") is None
    doc = json.loads(edge_config_json(config, [], {"local": "ws://127.0.0.1:8788"}))
    assert doc["livekit"]["web_keys"] == ["local-web-key-not-for-production"]
