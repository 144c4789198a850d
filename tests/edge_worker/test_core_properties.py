"""Property tests of the edge's request handling: for any request (method, path, query, headers,
body) and for Twilio-signed form posts whose fields hold anything, :func:`edge_worker.core.
handle` answers with a response and raises nothing; no answer is a 5xx; TwiML is well-formed
XML that carries the caller's fields as they were sent."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import urlencode

from hypothesis import example, given
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped,unused-ignore]

from edge_worker.config import EdgeConfig
from edge_worker.core import MAX_BODY_BYTES, EdgeRequest, EdgeResponse, Headers, handle
from tests.edge_worker.test_core import CONFIG_DATA, PUBLIC, voice_form
from tests.support.hostile import hostile_strings

CONFIG = EdgeConfig.from_json(json.dumps(CONFIG_DATA))
NOW = 1_700_000_000.0
ANSWERS = {200, 204, 302, 400, 401, 403, 404, 405, 413, 415, 429, 503}
"""Every status the edge gives for a request that is not right; never a 5xx but 503 for a part
that is not configured."""

PATHS = ["/twilio/voice", "/twilio/status", "/token", "/livekit/webhook", "/healthz", "/"]
methods = st.one_of(st.sampled_from(["GET", "HEAD", "POST", "OPTIONS", "PUT", "post"]), st.text())
paths = st.one_of(
    st.sampled_from([*PATHS, "/playground/", "/playground/../x", "/playground/%00", "//"]),
    st.text(),
)
header_names = st.one_of(
    st.sampled_from(
        ["content-type", "x-twilio-signature", "authorization", "origin", "Content-Type"]
    ),
    st.text(max_size=20),
)
headers = st.lists(st.tuples(header_names, hostile_strings), max_size=6)
bodies = st.one_of(
    st.binary(max_size=2048),
    st.just(b"a=" + b"x" * (MAX_BODY_BYTES + 1)),
    st.sampled_from([b"\xff\xfe", b"a=%ff", b"&&&==&", b"a=1&a=2&b"]),
)


def answered(response: EdgeResponse) -> None:
    assert isinstance(response, EdgeResponse)
    assert response.status in ANSWERS, (response.status, response.body[:300])
    assert isinstance(response.body, bytes)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in response.headers.items())


@given(methods, paths, st.text(max_size=200), headers, bodies)
@example("POST", "/twilio/voice", "", [("content-type", "application/x-www-form-urlencoded;")], b"")
def test_any_request_gets_an_answer_and_nothing_raises(
    method: str, path: str, query: str, header_list: list[tuple[str, str]], body: bytes
) -> None:
    request = EdgeRequest(method, path, query, Headers(header_list), body)
    answered(handle(CONFIG, request, now=NOW))


form_fields = st.dictionaries(
    st.sampled_from(
        ["CallSid", "To", "From", "Direction", "FromCountry", "ToCountry", "AnsweredBy"]
    )
    | st.text(max_size=12),
    st.text(max_size=60) | st.sampled_from(["+15550001111", "outbound-api", "1" * 5000]),
    max_size=8,
)


def signed(path: str, form: dict[str, Any]) -> EdgeRequest:
    signature = RequestValidator(CONFIG_DATA["twilio_auth_token"]).compute_signature(
        PUBLIC + path, form
    )
    body = urlencode(form).encode()
    content = {"content-type": "application/x-www-form-urlencoded", "x-twilio-signature": signature}
    return EdgeRequest("POST", path, "", content, body)


@given(form_fields, st.booleans())
@example({"From": "\x01caller"}, True)
@example({"CallSid": ""}, True)
@example({"Direction": "outbound-api", "From": "+15550001111", "To": "\x02"}, True)
def test_signed_twilio_forms_with_any_fields_get_an_answer_and_well_formed_twiml(
    fields: dict[str, str], on_a_served_number: bool
) -> None:
    form = {**voice_form(), **fields} if on_a_served_number else fields
    for path in ("/twilio/voice", "/twilio/status"):
        response = handle(CONFIG, signed(path, form), now=NOW)
        answered(response)
        if response.status == 200:
            ET.fromstring(response.body)  # TwiML Twilio can read
