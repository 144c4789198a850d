"""Property tests of the edge's JWT decoding: any string as a token, and tokens whose header and
claims hold anything (signed with the right secret, so the checks after the signature run too),
give the claims or a :class:`JWTError`, never another exception; a webhook body of any bytes
under a valid signature gives the event, a JWTError or the documented ValueError."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from edge_worker.livekit_jwt import JWTError, decode_hs256, encode_hs256, verify_webhook
from tests.support.hostile import DEEP, json_text, json_values, objects_like, utf8

KEY = "APIkeyForProperties"
SECRET = "livekit-secret-for-properties-0123"
NOW = 1_700_000_000.0

BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
segments = st.one_of(st.text(alphabet=BASE64URL, max_size=60), st.text(max_size=30))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign(header: str, payload: str, secret: str = SECRET) -> str:
    """A token over these exact JSON texts, signed as LiveKit signs."""
    signing_input = b64url(utf8(header)) + "." + b64url(utf8(payload))
    digest = hmac.new(secret.encode(), signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + b64url(digest)


def decoded_or_refused(token: str) -> dict[str, Any] | JWTError:
    try:
        return decode_hs256(token, SECRET, issuer=KEY, now=NOW)
    except JWTError as refused:
        return refused


@given(st.one_of(st.text(max_size=300), st.lists(segments, min_size=3, max_size=3).map(".".join)))
@example("é.é.é")
@example("a.b." + "c" * 9000)
def test_any_string_is_a_token_or_a_jwt_error(token: str) -> None:
    assert isinstance(decoded_or_refused(token), JWTError | dict)


headers = json_text(objects_like({"alg": st.just("HS256"), "typ": st.just("JWT")}))
claims = json_text(
    objects_like(
        {
            "iss": st.just(KEY),
            "exp": st.one_of(st.just(NOW + 60), st.just("@@number@@"), json_values),
            "nbf": st.one_of(st.just(NOW - 60), st.just("@@number@@"), json_values),
            "sha256": st.text(max_size=50),
        }
    )
)


@given(headers, claims)
@example('{"alg":"HS256"}', '{"iss":"' + KEY + '","exp":1e999}')
@example('{"alg":"HS256"}', '{"iss":"' + KEY + '","exp":NaN}')
@example('{"alg":"HS256"}', '{"iss":"' + KEY + '","exp":' + "9" * 5000 + "}")
@example('{"alg":' + "1" * 5000 + "}", "{}")
@example(DEEP, "{}")
@example('{"alg":"HS256"}', DEEP)
def test_signed_tokens_with_any_header_and_claims_decode_or_are_refused(
    header: str, payload: str
) -> None:
    result = decoded_or_refused(sign(header, payload))
    if isinstance(result, dict):  # accepted: the checks held
        assert result["iss"] == KEY
        assert isinstance(result["exp"], int | float) and result["exp"] + 60 >= NOW
    assert isinstance(decoded_or_refused(sign(header, payload, "another-secret")), JWTError)


@given(st.one_of(st.binary(max_size=500), json_text(json_values).map(utf8)))
@example(DEEP.encode())
@example(b'{"event":' + b"1" * 5000 + b"}")
def test_a_signed_webhook_body_of_any_bytes_is_an_event_or_refused(body: bytes) -> None:
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    token = encode_hs256({"iss": KEY, "exp": NOW + 60, "sha256": digest}, SECRET)
    event: dict[str, Any] | str
    try:
        event = verify_webhook(body, token, api_key=KEY, api_secret=SECRET, now=NOW)
    except JWTError:
        raise AssertionError("the signature is right") from None
    except ValueError as refused:  # the documented refusal of a body that is not an object
        event = str(refused)
    assert isinstance(event, dict) or event.startswith(
        ("the webhook body is not", "the webhook body nests", "the webhook body is ")
    ), event
