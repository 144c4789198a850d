"""edge_worker.core and edge_worker.config: routing, signatures, TwiML (cross-checked against the
twilio SDK's VoiceResponse), status callbacks, config errors, and the Cloudflare entry's glue."""

from __future__ import annotations

import email.message
import json
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import urlencode

import pytest
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped,unused-ignore]
from twilio.twiml.voice_response import Connect, VoiceResponse  # type: ignore[import-untyped,unused-ignore]

from callplane.security import stream_key, stream_key_matches, verify_stream_token
from edge_worker import worker
from edge_worker.config import EdgeConfig, EdgeConfigError, NumberRoute
from edge_worker.core import MAX_BODY_BYTES, EdgeRequest, EdgeResponse, Headers, handle

AUTH_TOKEN = "twilio-auth-token-for-tests"
SECRET = "stream-secret-for-tests-0123456789"
PUBLIC = "https://edge.example.com"
CALL = "CA" + "a" * 32
NOW = 1_700_000_000.0

CONFIG_DATA: dict[str, Any] = {
    "public_url": PUBLIC,
    "twilio_auth_token": AUTH_TOKEN,
    "stream_secret": SECRET,
    "media_urls": {"us": "wss://media-us.example.com", "eu": "wss://media-eu.example.com:8443"},
    "numbers": {
        "+15550001111": {"profile": "support", "region": "us"},
        "+442071234567": {"profile": "sales", "region": "eu"},
        "+15550002222": {"profile": "default-region"},
    },
    "default_region": "us",
}


@pytest.fixture
def config() -> EdgeConfig:
    return EdgeConfig.from_json(json.dumps(CONFIG_DATA))


def voice_form(to: str = "+15550001111", **extra: str) -> dict[str, str]:
    form = {
        "AccountSid": "AC" + "0" * 32,
        "ApiVersion": "2010-04-01",
        "CallSid": CALL,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": "+15557654321",
        "FromCountry": "US",
        "To": to,
        "Called": to,
    }
    form.update(extra)
    return form


def signed_post(
    path: str,
    form: dict[str, str],
    *,
    query: str = "",
    signed_url: str | None = None,
    header: str = "X-Twilio-Signature",
) -> EdgeRequest:
    url = signed_url or PUBLIC + path + (f"?{query}" if query else "")
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, form)
    headers = {"Content-Type": "application/x-www-form-urlencoded", header: signature}
    return EdgeRequest("POST", path, query, headers, urlencode(form).encode())


def with_headers(request: EdgeRequest, **changes: str) -> EdgeRequest:
    """The same request with headers set (names given with '_' for '-')."""
    headers = dict(request.headers)
    for name, value in changes.items():
        headers[name.replace("_", "-").lower()] = value
    return EdgeRequest(request.method, request.path, request.query, headers, request.body)


def xml_tree(document: bytes | str) -> tuple[str, dict[str, str], str | None, list[Any]]:
    def walk(el: ET.Element) -> tuple[str, dict[str, str], str | None, list[Any]]:
        return el.tag, dict(el.attrib), el.text, [walk(child) for child in el]

    return walk(ET.fromstring(document))


def sdk_stream(url: str, parameters: list[tuple[str, str]]) -> str:
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=url)
    for name, value in parameters:
        stream.parameter(name=name, value=value)
    response.append(connect)
    return str(response)


def stream_parameters(body: bytes) -> tuple[str, list[tuple[str, str]]]:
    stream = ET.fromstring(body).find("./Connect/Stream")
    assert stream is not None, body
    return stream.attrib["url"], [(p.attrib["name"], p.attrib["value"]) for p in stream]


# --------------------------------------------------------------------------- voice webhook


def test_known_number_gets_a_stream_matching_the_sdk(config: EdgeConfig) -> None:
    response = handle(config, signed_post("/twilio/voice", voice_form()), now=NOW)
    assert response.status == 200
    assert response.headers["content-type"] == "text/xml"
    assert response.headers["cache-control"] == "no-store"
    url, parameters = stream_parameters(response.body)
    # the token is the only parameter: everything else the media plane needs is signed into it
    assert [name for name, _ in parameters] == ["token"]
    token = dict(parameters)["token"]
    assert url == "wss://media-us.example.com/twilio/media/" + stream_key(token)
    expected = sdk_stream(url, parameters)
    assert xml_tree(response.body) == xml_tree(expected)
    assert response.body.decode() == expected  # byte for byte, declaration included
    claims = verify_stream_token(SECRET, token, CALL, now=NOW + 59)
    assert (claims.profile, claims.region, claims.expires_at) == ("support", "us", NOW + 60)
    assert (claims.from_, claims.to, claims.country) == ("+15557654321", "+15550001111", "US")
    assert (claims.direction, claims.answered_by) == ("inbound", "")


def test_every_answer_has_its_own_stream_url(config: EdgeConfig) -> None:
    """The same signed webhook twice (a replay): two tokens, two URLs, neither key fitting the
    other token, so an upgrade signed for one URL admits neither of the other's streams."""
    request = signed_post("/twilio/voice", voice_form())
    first, second = (stream_parameters(handle(config, request, now=NOW).body) for _ in range(2))
    (first_url, [(_, first_token)]), (second_url, [(_, second_token)]) = first, second
    assert first_url != second_url
    first_key, second_key = first_url.rsplit("/", 1)[1], second_url.rsplit("/", 1)[1]
    assert stream_key_matches(first_key, first_token)
    assert not stream_key_matches(first_key, second_token)
    assert not stream_key_matches(second_key, first_token)
    # both are for the same call: the media plane admits one stream per CallSid, ever
    assert verify_stream_token(SECRET, first_token, CALL, now=NOW).call_sid == CALL
    assert verify_stream_token(SECRET, second_token, CALL, now=NOW).call_sid == CALL


def test_an_outbound_call_signs_our_number_the_callee_and_the_machine_detection(
    config: EdgeConfig,
) -> None:
    form = voice_form(
        "+15559876543",
        From="+442071234567",  # our number places the call: it picks the route
        Direction="outbound-api",
        ToCountry="PK",
        AnsweredBy="machine_end_beep",
    )
    response = handle(config, signed_post("/twilio/voice", form), now=NOW)
    url, parameters = stream_parameters(response.body)
    assert url.startswith("wss://media-eu.example.com:8443/twilio/media/")
    assert [name for name, _ in parameters] == ["token"]
    claims = verify_stream_token(SECRET, dict(parameters)["token"], CALL, now=NOW)
    assert (claims.profile, claims.region) == ("sales", "eu")
    assert (claims.from_, claims.to, claims.country) == ("+442071234567", "+15559876543", "PK")
    assert (claims.direction, claims.answered_by) == ("outbound", "machine_end_beep")


def test_region_and_default_region_pick_the_media_url(config: EdgeConfig) -> None:
    eu = handle(config, signed_post("/twilio/voice", voice_form("+442071234567")), now=NOW)
    url, parameters = stream_parameters(eu.body)
    assert url.startswith("wss://media-eu.example.com:8443/twilio/media/")
    claims = verify_stream_token(SECRET, dict(parameters)["token"], CALL, now=NOW)
    assert (claims.profile, claims.region) == ("sales", "eu")
    default = handle(config, signed_post("/twilio/voice", voice_form("+15550002222")), now=NOW)
    url, parameters = stream_parameters(default.body)
    assert url.startswith("wss://media-us.example.com/twilio/media/")
    claims = verify_stream_token(SECRET, dict(parameters)["token"], CALL, now=NOW)
    assert (claims.profile, claims.region) == ("default-region", "us")


def test_an_anonymous_caller_is_signed_as_empty(config: EdgeConfig) -> None:
    form = voice_form()
    del form["From"], form["FromCountry"]
    response = handle(config, signed_post("/twilio/voice", form), now=NOW)
    url, parameters = stream_parameters(response.body)
    assert response.body.decode() == sdk_stream(url, parameters)
    claims = verify_stream_token(SECRET, dict(parameters)["token"], CALL, now=NOW)
    assert (claims.from_, claims.to, claims.country) == ("", "+15550001111", "")


@pytest.mark.parametrize("to", ["+15559999999", "", "sip:agent@example.com"])
def test_unknown_number_is_rejected(config: EdgeConfig, to: str) -> None:
    form = voice_form(to)
    if not to:
        del form["To"]
    response = handle(config, signed_post("/twilio/voice", form), now=NOW)
    assert response.status == 200
    assert response.headers["content-type"] == "text/xml"
    sdk = VoiceResponse()
    sdk.reject(reason="rejected")
    assert xml_tree(response.body) == xml_tree(str(sdk))
    assert response.body.decode() == str(sdk)


def test_hostile_values_reach_the_token_intact_and_never_the_twiml(config: EdgeConfig) -> None:
    form = voice_form(From='"><Hangup/><x a="&amp;', FromCountry="<&>")
    response = handle(config, signed_post("/twilio/voice", form), now=NOW)
    url, parameters = stream_parameters(response.body)
    assert response.body.decode() == sdk_stream(url, parameters)
    assert b"Hangup" not in response.body and b"&lt;" not in response.body
    claims = verify_stream_token(SECRET, dict(parameters)["token"], CALL, now=NOW)
    assert (claims.from_, claims.country) == ('"><Hangup/><x a="&amp;', "<&>")


@pytest.mark.parametrize(
    ("field", "form"),
    [
        ("From", voice_form(From="+1555\x01")),
        ("To", voice_form(Direction="outbound-api", From="+15550001111", To="+1\x01")),
        ("AnsweredBy", voice_form(AnsweredBy="human\ufffe")),
    ],
)
def test_a_field_xml_cannot_carry_is_a_400_naming_it(
    config: EdgeConfig, field: str, form: dict[str, str]
) -> None:
    """TwiML with a control character in it is not XML, and Twilio could not read it."""
    response = handle(config, signed_post("/twilio/voice", form), now=NOW)
    assert response.status == 400
    assert response.body.decode().startswith(f"{field}=")
    assert b"cannot carry" in response.body


def test_missing_call_sid_is_a_400(config: EdgeConfig) -> None:
    form = voice_form()
    del form["CallSid"]
    response = handle(config, signed_post("/twilio/voice", form), now=NOW)
    assert response.status == 400
    assert b"CallSid" in response.body


# --------------------------------------------------------------------------- signatures


def assert_forbidden(response: EdgeResponse) -> None:
    assert response.status == 403
    assert response.headers["content-type"].startswith("text/plain")
    for secret in (AUTH_TOKEN, SECRET):
        assert secret.encode() not in response.body
    assert b"<Stream" not in response.body


def test_bad_signature_is_403(config: EdgeConfig) -> None:
    forged = "AAAAAAAAAAAAAAAAAAAAAAAAAAA="
    request = with_headers(signed_post("/twilio/voice", voice_form()), X_Twilio_Signature=forged)
    response = handle(config, request, now=NOW)
    assert_forbidden(response)
    assert b"invalid X-Twilio-Signature" in response.body


def test_missing_signature_is_403(config: EdgeConfig) -> None:
    request = signed_post("/twilio/voice", voice_form())
    request.headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response = handle(config, request, now=NOW)
    assert_forbidden(response)
    assert b"missing X-Twilio-Signature" in response.body


def test_tampered_form_is_403(config: EdgeConfig) -> None:
    request = signed_post("/twilio/voice", voice_form())
    request.body = urlencode(voice_form(to="+442071234567")).encode()
    assert_forbidden(handle(config, request, now=NOW))


def test_wrong_auth_token_is_403(config: EdgeConfig) -> None:
    form = voice_form()
    url = PUBLIC + "/twilio/voice"
    signature = RequestValidator("some-other-token").compute_signature(url, form)
    request = EdgeRequest("POST", "/twilio/voice", "", {"X-Twilio-Signature": signature})
    request.body = urlencode(form).encode()
    assert_forbidden(handle(config, request, now=NOW))


def test_signature_covers_the_query_string(config: EdgeConfig) -> None:
    ok = signed_post("/twilio/voice", voice_form(), query="tenant=acme")
    assert handle(config, ok, now=NOW).status == 200
    unsigned_query = signed_post(
        "/twilio/voice", voice_form(), query="tenant=acme", signed_url=PUBLIC + "/twilio/voice"
    )
    assert_forbidden(handle(config, unsigned_query, now=NOW))


def test_signature_with_default_port_and_any_header_case(config: EdgeConfig) -> None:
    request = signed_post(
        "/twilio/voice",
        voice_form(),
        signed_url="https://edge.example.com:443/twilio/voice",
        header="X-TWILIO-SIGNATURE",
    )
    assert handle(config, request, now=NOW).status == 200


def test_signature_over_another_host_is_403(config: EdgeConfig) -> None:
    request = signed_post(
        "/twilio/voice", voice_form(), signed_url="https://attacker.example/twilio/voice"
    )
    request = with_headers(request, X_Forwarded_Host="attacker.example", Host="attacker.example")
    assert_forbidden(handle(config, request, now=NOW))


# --------------------------------------------------------------------------- status callbacks


def test_status_callback_reaches_on_status(config: EdgeConfig) -> None:
    seen: list[dict[str, str]] = []
    form = {"CallSid": CALL, "CallStatus": "completed", "CallDuration": "42"}
    response = handle(config, signed_post("/twilio/status", form), now=NOW, on_status=seen.append)
    assert (response.status, response.body) == (204, b"")
    assert seen == [form]


def test_status_callback_without_handler_is_fine(config: EdgeConfig) -> None:
    form = {"CallSid": CALL, "CallStatus": "ringing"}
    assert handle(config, signed_post("/twilio/status", form), now=NOW).status == 204


def test_status_callback_with_bad_signature_does_not_reach_on_status(config: EdgeConfig) -> None:
    seen: list[dict[str, str]] = []
    request = signed_post("/twilio/status", {"CallSid": CALL, "CallStatus": "completed"})
    request = with_headers(request, X_Twilio_Signature="forged")
    assert_forbidden(handle(config, request, now=NOW, on_status=seen.append))
    assert seen == []


def test_failing_status_handler_is_a_500_without_details(config: EdgeConfig) -> None:
    def explode(fields: dict[str, str]) -> None:
        raise RuntimeError(f"database password is {SECRET}")

    request = signed_post("/twilio/status", {"CallSid": CALL, "CallStatus": "completed"})
    response = handle(config, request, now=NOW, on_status=explode)
    assert response.status == 500
    assert SECRET.encode() not in response.body


# --------------------------------------------------------------------------- other routes


def test_healthz(config: EdgeConfig) -> None:
    response = handle(config, EdgeRequest("GET", "/healthz", "", {}), now=NOW)
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.body) == {"ok": True}
    head = handle(config, EdgeRequest("HEAD", "/healthz", "", {}), now=NOW)
    assert (head.status, head.body) == (200, b"")


@pytest.mark.parametrize("path", ["/", "/twilio/voice/", "/twilio/media", "/TWILIO/VOICE"])
def test_unknown_path_is_404(config: EdgeConfig, path: str) -> None:
    assert handle(config, EdgeRequest("POST", path, "", {}), now=NOW).status == 404


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/twilio/voice", "POST"),
        ("PUT", "/twilio/status", "POST"),
        ("POST", "/healthz", "GET, HEAD"),
    ],
)
def test_wrong_method_is_405(config: EdgeConfig, method: str, path: str, allow: str) -> None:
    response = handle(config, EdgeRequest(method, path, "", {}), now=NOW)
    assert response.status == 405
    assert response.headers["allow"] == allow


@pytest.mark.parametrize("path", ["/twilio/voice", "/twilio/status"])
def test_an_unsigned_body_is_refused_before_it_is_parsed(config: EdgeConfig, path: str) -> None:
    """Not UTF-8 and not a form: with no signature to check it against, it is never read."""
    request = EdgeRequest(
        "POST", path, "", {"Content-Type": "application/x-www-form-urlencoded"}, b"\xff\xfe" * 1000
    )
    response = handle(config, request, now=NOW)
    assert response.status == 403
    assert b"missing X-Twilio-Signature" in response.body


def test_json_body_is_415(config: EdgeConfig) -> None:
    request = EdgeRequest(
        "POST",
        "/twilio/voice",
        "",
        {"Content-Type": "application/json", "X-Twilio-Signature": "x"},
        b"{}",
    )
    response = handle(config, request, now=NOW)
    assert response.status == 415
    assert b"application/x-www-form-urlencoded" in response.body


def test_oversized_body_is_413(config: EdgeConfig) -> None:
    request = EdgeRequest("POST", "/twilio/voice", "", {}, b"a" * (MAX_BODY_BYTES + 1))
    assert handle(config, request, now=NOW).status == 413


def test_non_utf8_body_is_400(config: EdgeConfig) -> None:
    request = EdgeRequest("POST", "/twilio/voice", "", {"X-Twilio-Signature": "x"}, b"To=\xff")
    assert handle(config, request, now=NOW).status == 400


def test_headers_are_case_insensitive_and_merge_repeats() -> None:
    headers = Headers([("X-A", "1"), ("x-a", "2"), ("Content-Type", "text/plain")])
    assert headers["x-a"] == headers["X-A"] == "1, 2"
    assert "CONTENT-TYPE" in headers and len(headers) == 2
    assert "text/plain" not in repr(headers)
    request = EdgeRequest("GET", "/", "", {"X-Twilio-Signature": "abc"})
    assert request.headers["x-twilio-signature"] == "abc"


# --------------------------------------------------------------------------- config


def test_config_round_trip(config: EdgeConfig) -> None:
    assert config.numbers["+15550002222"] == NumberRoute("default-region", "us")
    assert config.media_stream_url("eu") == "wss://media-eu.example.com:8443/twilio/media"
    assert AUTH_TOKEN not in repr(config) and SECRET not in repr(config)
    with pytest.raises(TypeError):
        config.numbers["+1555"] = NumberRoute("x", "us")  # type: ignore[index]
    env = {"CALLPLANE_EDGE_CONFIG": json.dumps(CONFIG_DATA)}
    assert EdgeConfig.from_env(env) == config


def with_change(path: str, value: Any) -> str:
    data = json.loads(json.dumps(CONFIG_DATA))
    *parents, last = path.split("/")
    target = data
    for key in parents:
        target = target[key]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return json.dumps(data)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("public_url", "ftp://edge.example.com", ["public_url", "ftp://edge.example.com", "https"]),
        ("public_url", "https://edge.example.com/", ["public_url", "end with '/'"]),
        ("public_url", "https://edge.example.com?x=1", ["public_url", "query string"]),
        ("public_url", "https://:443", ["public_url", "no host"]),
        ("public_url", "https://edge.example.com:99999", ["public_url", "port"]),
        ("public_url", 42, ["public_url", "42"]),
        ("public_url", KeyError, ["missing", "public_url"]),
        ("twilio_auth_token", "", ["twilio_auth_token", "Auth Token"]),
        ("stream_secret", "short", ["stream_secret", "5 characters", "16"]),
        ("media_urls", {}, ["media_urls", "at least one region"]),
        ("media_urls", ["wss://x"], ["media_urls", "object"]),
        ("media_urls/us", "https://media.example.com", ["media_urls['us']", "wss"]),
        ("media_urls/us", "wss://media.example.com/?a=1", ["media_urls['us']", "query"]),
        ("media_urls/bad region", "wss://x.example", ["'bad region'", "letters"]),
        ("default_region", "ap", ["default_region", "'ap'", "['eu', 'us']"]),
        ("numbers/5550001111", {"profile": "x"}, ["'5550001111'", "E.164", "+15550001111"]),
        ("numbers/+15550001111", "support", ["+15550001111", "'support'", "profile"]),
        ("numbers/+15550001111", {"region": "us"}, ["+15550001111", "missing 'profile'"]),
        ("numbers/+15550001111", {"profile": "x", "regoin": "us"}, ["'regoin'", "allowed"]),
        ("numbers/+15550001111", {"profile": "s", "region": "ap"}, ["region='ap'", "media_urls"]),
        ("numbers/+15550001111", {"profile": ""}, [".profile=''", "1-64 characters"]),
        ("numbers", [], ["numbers", "E.164"]),
        ("extra_field", 1, ["'extra_field'", "unknown"]),
    ],
)
def test_config_errors_name_field_value_and_fix(path: str, value: Any, expected: list[str]) -> None:
    with pytest.raises(EdgeConfigError) as info:
        EdgeConfig.from_json(with_change(path, value))
    message = str(info.value)
    for part in expected:
        assert part in message, message
    assert AUTH_TOKEN not in message and SECRET not in message


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "CALLPLANE_EDGE_CONFIG is not set"),
        ({"CALLPLANE_EDGE_CONFIG": "  "}, "CALLPLANE_EDGE_CONFIG is not set"),
        ({"CALLPLANE_EDGE_CONFIG": '{"public_url": '}, "not valid JSON"),
        ({"CALLPLANE_EDGE_CONFIG": "[1]"}, "JSON object"),
    ],
)
def test_config_from_env_errors(environ: dict[str, str], expected: str) -> None:
    with pytest.raises(EdgeConfigError, match=expected):
        EdgeConfig.from_env(environ)


def test_config_built_directly_is_validated_too() -> None:
    with pytest.raises(EdgeConfigError, match="region='nowhere'"):
        EdgeConfig(
            public_url=PUBLIC,
            twilio_auth_token=AUTH_TOKEN,
            stream_secret=SECRET,
            media_urls={"us": "wss://m.example"},
            numbers={"+15550001111": NumberRoute("support", "nowhere")},
            default_region="us",
        )


# --------------------------------------------------------------------------- Cloudflare glue


class FakeCloudflareRequest:
    """The attributes of ``workers.Request`` that the entry uses (``headers`` is an
    ``http.client.HTTPMessage`` there, an ``email.message.Message`` subclass)."""

    def __init__(self, url: str, method: str, headers: dict[str, str], body: bytes) -> None:
        self.url = url
        self.method = method
        self.headers = email.message.Message()
        for name, value in headers.items():
            self.headers[name] = value
        self._body = body

    async def bytes(self) -> bytes:
        return self._body


class FakeEnv:
    CALLPLANE_EDGE_CONFIG = json.dumps(CONFIG_DATA)


async def test_worker_glue_translates_and_delegates() -> None:
    form = voice_form()
    signed = signed_post("/twilio/voice", form, query="a=1")
    request = FakeCloudflareRequest(
        "https://edge.example.com/twilio/voice?a=1", "POST", dict(signed.headers), signed.body
    )
    edge_request = await worker.to_edge_request(request)
    assert (edge_request.method, edge_request.path, edge_request.query) == (
        "POST",
        "/twilio/voice",
        "a=1",
    )
    config = worker.load_config(FakeEnv())
    assert worker.load_config(FakeEnv()) is config  # parsed once per isolate
    response = handle(config, edge_request, now=NOW)
    assert response.status == 200 and b"<Stream" in response.body


async def test_worker_refuses_a_declared_oversized_body_without_reading_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class StandInResponse:
        def __init__(self, body: bytes, status: int, headers: dict[str, str]) -> None:
            self.body, self.status, self.headers = body, status, headers

    class Unreadable(FakeCloudflareRequest):
        async def bytes(self) -> bytes:
            raise AssertionError("the body was read")

    monkeypatch.setattr(worker, "_Response", StandInResponse)
    entry = worker.Default()
    entry.env = FakeEnv()
    for declared in (str(MAX_BODY_BYTES + 1), "100000000", "lots"):
        request = Unreadable(
            "https://edge.example.com/token", "POST", {"Content-Length": declared}, b""
        )
        response = await entry.fetch(request)
        assert response.status == 413
        assert f"over the limit of {MAX_BODY_BYTES} bytes".encode() in response.body


def test_worker_without_secret_says_how_to_set_it() -> None:
    with pytest.raises(RuntimeError, match="wrangler secret put CALLPLANE_EDGE_CONFIG"):
        worker.load_config(object())


async def test_worker_fetch_with_a_stand_in_response(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Default.fetch`` with ``workers.Response`` replaced: the real runtime is not here."""

    class StandInResponse:
        def __init__(self, body: bytes, status: int, headers: dict[str, str]) -> None:
            self.body, self.status, self.headers = body, status, headers

    monkeypatch.setattr(worker, "_Response", StandInResponse)
    entry = worker.Default()
    entry.env = FakeEnv()
    response = await entry.fetch(
        FakeCloudflareRequest("https://edge.example.com/healthz", "GET", {}, b"")
    )
    assert (response.status, json.loads(response.body)) == (200, {"ok": True})
