"""Property tests of the edge's configuration: any text, and JSON shaped like an edge config
with hostile values in every field, gives an :class:`EdgeConfig` or an
:class:`EdgeConfigError` naming the problem, never another exception; a config it accepts
answers a call."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from edge_worker.config import EdgeConfig, EdgeConfigError
from tests.support.hostile import DEEP, hostile_strings, json_text, json_values, objects_like

urls = st.one_of(
    st.sampled_from(
        [
            "wss://media.example.com",
            "https://edge.example.com",
            "http://[",
            "wss://[::1",
            "wss://host:99999",
            "wss://host:-1",
            "wss://@",
            "wss://host/",
        ]
    ),
    hostile_strings,
)
regions = st.one_of(st.sampled_from(["us", "eu"]), hostile_strings)
routes = objects_like({"profile": st.sampled_from(["support", "x" * 65]), "region": regions})
livekit = objects_like(
    {
        "url": urls,
        "api_key": hostile_strings,
        "api_secret": hostile_strings,
        "agent_name": hostile_strings,
        "token_ttl_s": st.one_of(st.integers(), json_values),
        "web_keys": st.lists(hostile_strings, max_size=3),
        "link_secret": hostile_strings,
        "allowed_origins": st.lists(urls, max_size=3),
        "dispatch_url": urls,
        "dispatch_api_key": hostile_strings,
        "rate_limit_per_minute": st.one_of(st.integers(), json_values),
    }
)
configs = objects_like(
    {
        "public_url": urls,
        "twilio_auth_token": hostile_strings,
        "stream_secret": st.one_of(st.just("stream-secret-0123456789"), hostile_strings),
        "media_urls": st.dictionaries(regions, urls, max_size=3),
        "numbers": st.dictionaries(
            st.one_of(st.sampled_from(["+15550001111", "+0"]), hostile_strings), routes, max_size=3
        ),
        "default_region": regions,
        "livekit": livekit,
    }
)


def built_or_refused(text: str) -> EdgeConfig | EdgeConfigError:
    try:
        return EdgeConfig.from_json(text)
    except EdgeConfigError as refused:
        return refused


@given(st.text(max_size=500))
@example(DEEP)
@example('{"public_url": ' + "1" * 5000 + "}")
@example('{"public_url": NaN}')
def test_any_text_is_a_config_or_an_edge_config_error(text: str) -> None:
    assert isinstance(built_or_refused(text), EdgeConfig | EdgeConfigError)


@given(json_text(configs))
@example(
    '{"public_url":"https://edge.example.com","twilio_auth_token":"t",'
    '"stream_secret":"stream-secret-0123456789","media_urls":{"us":"wss://m.example.com"},'
    '"numbers":{"+15550001111":{"profile":"support","region":["us"]}},"default_region":"us"}'
)
@example(
    '{"public_url":"http://[","twilio_auth_token":"t","stream_secret":"stream-secret-0123456789",'
    '"media_urls":{"us":"wss://m.example.com"},"numbers":{},"default_region":"us"}'
)
def test_config_shaped_documents_with_hostile_values_are_a_config_or_an_error(text: str) -> None:
    result = built_or_refused(text)
    if isinstance(result, EdgeConfigError):
        assert str(result).startswith("edge config: ")
        return
    for number, route in result.numbers.items():
        assert result.media_stream_url(route.region).endswith("/twilio/media"), number
    if result.livekit is not None:
        assert result.livekit.token_ttl_s > 0


@given(json_values)
def test_any_parsed_value_is_a_config_or_an_edge_config_error(data: Any) -> None:
    result: EdgeConfig | EdgeConfigError
    try:
        result = EdgeConfig.from_mapping(data)
    except EdgeConfigError as refused:
        result = refused
    assert isinstance(result, EdgeConfig) or str(result).startswith("edge config: ")
