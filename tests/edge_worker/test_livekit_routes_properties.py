"""Property tests of the edge's LiveKit routes: ``POST /token`` bodies of any bytes and JSON
shaped like a token request with hostile values (from a caller with a valid web key, so every
check runs), and LiveKit webhooks whose verified body holds anything, get an answer and raise
nothing: a token, or a 400 naming the problem; an acknowledgement, or a 400 (413 when the body
is over the edge's limit)."""

from __future__ import annotations

import json
import time
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from edge_worker.core import MAX_BODY_BYTES, EdgeRequest, EdgeResponse, handle
from edge_worker.livekit_routes import dispatch_for_event
from edge_worker.wire import DispatchAgent
from tests.edge_worker.test_livekit_webhook import KEY, SECRET
from tests.edge_worker.test_livekit_webhook import make_config as webhook_config
from tests.edge_worker.test_token import ORIGIN, WEB_KEY
from tests.edge_worker.test_token import make_config as token_config
from tests.support.hostile import DEEP, hostile_strings, json_text, json_values, objects_like, utf8
from tests.support.tokens import sign_webhook

NOW = 1_700_000_000.0
TOKEN_CONFIG = token_config()
WEBHOOK_CONFIG = webhook_config()

token_requests = json_text(
    objects_like(
        {
            "room": st.one_of(st.just("demo"), hostile_strings),
            "identity": st.one_of(st.just("alice"), st.just("agent-x"), hostile_strings),
            "name": hostile_strings,
            "profile": st.one_of(st.just("support"), hostile_strings),
            "agent": st.booleans(),
        }
    )
)


def post_token(body: bytes) -> EdgeResponse:
    headers = {
        "authorization": f"Bearer {WEB_KEY}",
        "content-type": "application/json",
        "origin": ORIGIN,
    }
    return handle(TOKEN_CONFIG, EdgeRequest("POST", "/token", "", headers, body), now=NOW)


@given(st.one_of(st.binary(max_size=500), token_requests.map(utf8)))
@example(b'{"room":' + b"1" * 5000 + b"}")
@example(b'{"room":"demo","name":' + b"9" * 5000 + b"}")
@example(DEEP.encode())
@example(b'{"room":"demo","agent":NaN}')
@example(b'\xff\xfe{"room":"demo"}')
def test_a_token_request_with_any_body_gets_a_token_or_a_400_naming_the_problem(
    body: bytes,
) -> None:
    response = post_token(body)
    # 413: a body over the token request's size limit, named in the answer.
    assert response.status in (200, 400, 413), (response.status, response.body[:300])
    if response.status == 200:
        document = json.loads(response.body)
        assert set(document) == {"token", "url", "room", "identity", "expires_at"}
    else:
        assert response.body.startswith(
            (
                b"the body",
                b"the POST /token body",
                b"unknown field",
                b"room=",
                b"identity=",
                b"name=",
                b"profile=",
                b"agent=",
            )
        ), response.body[:300]


webhook_events = json_text(
    objects_like(
        {
            "event": st.sampled_from(["room_started", "participant_joined", "room_finished"]),
            "room": objects_like(
                {
                    "name": st.one_of(st.just("demo"), hostile_strings),
                    "metadata": st.one_of(
                        json_text(objects_like({"profile": hostile_strings, "agent": json_values})),
                        st.just(DEEP),
                        hostile_strings,
                    ),
                }
            ),
            "participant": objects_like(
                {"identity": hostile_strings, "kind": st.sampled_from(["AGENT", "STANDARD", 4])}
            ),
        }
    )
)


@given(st.one_of(st.binary(max_size=500), webhook_events.map(utf8)))
@example(DEEP.encode())
@example(b'{"event":"room_started","room":{"name":"demo","metadata":"' + b"[" * 5000 + b'"}}')
@example(b'{"event":"room_started","room":{"name":"demo","metadata":"{\\"a\\":1e999}"}}')
def test_a_verified_webhook_with_any_body_is_acknowledged_or_refused(body: bytes) -> None:
    headers = {"authorization": sign_webhook(body, KEY, SECRET)}  # signed as of now
    request = EdgeRequest("POST", "/livekit/webhook", "", headers, body)
    response = handle(WEBHOOK_CONFIG, request, now=time.time())
    assert response.status in (200, 400, 413), (response.status, response.body[:300])
    if response.status == 200:
        assert all(isinstance(effect, DispatchAgent) for effect in response.effects)
        assert json.loads(response.body)["ok"] is True
    elif response.status == 400:
        assert response.body.startswith(
            (
                b"webhook refused: the webhook body is not",
                b"webhook refused: the webhook body nests",
            )
        ), response.body[:300]
    else:
        assert len(body) > MAX_BODY_BYTES


@given(json_values)
def test_any_json_value_as_an_event_dispatches_an_agent_or_nothing(event: Any) -> None:
    if isinstance(event, dict):
        effect = dispatch_for_event(event)
        assert effect is None or isinstance(effect, DispatchAgent)
