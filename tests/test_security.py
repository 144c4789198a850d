"""callplane.security: Twilio signatures cross-checked against the official SDK, stream tokens,
replay protection, and the stdlib-only rule for the files the Cloudflare Worker bundles."""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import json
import random
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped,unused-ignore]

from callplane.security import (
    ReplayGuard,
    StreamClaims,
    StreamTokenError,
    is_stream_key,
    mint_stream_token,
    stream_key,
    stream_key_matches,
    stream_url,
    twilio_signature,
    twilio_url_variants,
    validate_twilio_signature,
    verify_stream_token,
)

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "12345"
SECRET = "stream-secret-for-tests-0123456789"
CALL = "CA" + "1" * 32


class MultiDict(dict[str, list[str]]):
    """What the SDK expects for repeated keys: a mapping with ``getall`` (as Flask's)."""

    def getall(self, key: str) -> list[str]:
        return self[key]


def sdk_params(params: Mapping[str, str | Sequence[str]]) -> dict[str, str] | MultiDict:
    if all(isinstance(v, str) for v in params.values()):
        return {k: str(v) for k, v in params.items()}
    return MultiDict({k: [v] if isinstance(v, str) else list(v) for k, v in params.items()})


ALPHABET = "abcXYZ019 +-_=&?/%:é日本ü😀\u00a0'\"<>"


def random_text(rng: random.Random, max_len: int = 12) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, max_len)))


def random_params(rng: random.Random) -> dict[str, str | list[str]]:
    params: dict[str, str | list[str]] = {}
    for _ in range(rng.randint(0, 8)):
        key = rng.choice(["To", "From", "CallSid", "Digits", "x", "ä", "Z", ""]) + random_text(
            rng, 3
        )
        if rng.random() < 0.3:
            values = [random_text(rng) for _ in range(rng.randint(1, 4))]
            if rng.random() < 0.5:
                values.append(values[0])  # a repeated identical value
            params[key] = values
        else:
            params[key] = random_text(rng)
    return params


URLS = [
    "https://edge.example.com/twilio/voice",
    "https://edge.example.com:443/twilio/voice",
    "https://edge.example.com/twilio/voice?region=eu&x=%20y",
    "https://edge.example.com:443/twilio/status?a=1",
    "http://127.0.0.1:8080/twilio/voice",
    "http://localhost/twilio/voice",
    "http://localhost:80/twilio/voice",
    "wss://media.example.com/twilio/media",
    "https://user@edge.example.com/p",
    "https://[2001:db8::1]/twilio/voice",
]


# --------------------------------------------------------------------------- signatures


def test_reference_vectors() -> None:
    params = {
        "CallSid": "CA123",
        "From": "+15550002222",
        "To": "+15550001111",
        "AccountSid": "AC00000000000000000000000000000000",
    }
    url = "https://bridge.example/twilio/voice?foo=bar"
    assert twilio_signature("12345", url, params) == "AiSnQz1EUi20pXxxdI7BKJLzq1A="
    assert validate_twilio_signature("12345", url, params, "AiSnQz1EUi20pXxxdI7BKJLzq1A=")
    wss = "wss://bridge.example.com/twilio/media"
    assert twilio_signature("12345", wss) == "hGVJmeOLwZmJhPeWsyRDIvgH8Zc="
    assert validate_twilio_signature("12345", wss, {}, "hGVJmeOLwZmJhPeWsyRDIvgH8Zc=")


@pytest.mark.parametrize("url", URLS)
def test_signature_matches_sdk_on_many_param_sets(url: str) -> None:
    rng = random.Random(url)
    sdk = RequestValidator(TOKEN)
    for _ in range(60):
        params = random_params(rng)
        ours = twilio_signature(TOKEN, url, params)
        assert ours == sdk.compute_signature(url, sdk_params(params))
        assert validate_twilio_signature(TOKEN, url, params, ours)
        assert sdk.validate(url, sdk_params(params), ours)
        if params:
            tampered = dict(params)
            key = next(iter(tampered))
            tampered[key] = str(tampered[key]) + "!"
            assert not validate_twilio_signature(TOKEN, url, tampered, ours)
            assert not sdk.validate(url, sdk_params(tampered), ours)


@pytest.mark.parametrize("algorithm", ["HMAC_SHA1", "HMAC_SHA256"])
def test_algorithms_match_sdk(algorithm: str) -> None:
    rng = random.Random(algorithm)
    sdk = RequestValidator("shared-key-secret")
    for _ in range(20):
        params = random_params(rng)
        url = rng.choice(URLS)
        ours = twilio_signature(
            "shared-key-secret",
            url,
            params,
            algorithm="HMAC_SHA256" if algorithm == "HMAC_SHA256" else "HMAC_SHA1",
        )
        assert ours == sdk.compute_signature(url, sdk_params(params), algorithm=algorithm)


def test_unknown_algorithm_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="HMAC_MD5"):
        twilio_signature(TOKEN, "https://x", None, algorithm="HMAC_MD5")  # type: ignore[arg-type]


def test_repeated_keys_use_distinct_sorted_values() -> None:
    url = "https://edge.example.com/hook"
    expected = base64.b64encode(
        hmac.new(TOKEN.encode(), (url + "Da" + "Db" + "Zz").encode(), hashlib.sha1).digest()
    ).decode()
    assert twilio_signature(TOKEN, url, {"Z": "z", "D": ["b", "a", "b"]}) == expected
    sdk = RequestValidator(TOKEN).compute_signature(url, MultiDict({"Z": ["z"], "D": ["b", "a"]}))
    assert expected == sdk


@pytest.mark.parametrize(
    ("signed_url", "presented_url"),
    [
        ("https://edge.example.com/v", "https://edge.example.com:443/v"),
        ("https://edge.example.com:443/v", "https://edge.example.com/v"),
        ("http://edge.example.com:80/v?x=1", "http://edge.example.com/v?x=1"),
        ("http://edge.example.com/v", "http://edge.example.com:80/v"),
    ],
)
def test_port_variants_agree_with_sdk(signed_url: str, presented_url: str) -> None:
    params = {"CallSid": CALL, "To": "+15550001111"}
    signature = RequestValidator(TOKEN).compute_signature(signed_url, params)
    assert validate_twilio_signature(TOKEN, presented_url, params, signature)
    assert RequestValidator(TOKEN).validate(presented_url, params, signature)


def test_wss_default_port_is_443_where_the_sdk_assumes_80() -> None:
    """A deliberate difference: the SDK's with-port variant of a wss URL is ``:80``."""
    signature = twilio_signature(TOKEN, "wss://media.example.com:443/twilio/media")
    assert validate_twilio_signature(TOKEN, "wss://media.example.com/twilio/media", {}, signature)
    assert not RequestValidator(TOKEN).validate(
        "wss://media.example.com/twilio/media", {}, signature
    )
    assert twilio_url_variants("wss://m.example/twilio/media") == [
        "wss://m.example/twilio/media",
        "wss://m.example:443/twilio/media",
    ]


def test_non_default_port_is_never_stripped() -> None:
    """A deliberate difference: the SDK also accepts the URL with a non-default port removed."""
    signature = twilio_signature(TOKEN, "https://edge.example.com/v", {})
    assert not validate_twilio_signature(TOKEN, "https://edge.example.com:8443/v", {}, signature)
    assert RequestValidator(TOKEN).validate("https://edge.example.com:8443/v", {}, signature)
    assert twilio_url_variants("http://127.0.0.1:8080/x") == ["http://127.0.0.1:8080/x"]


@pytest.mark.parametrize(
    ("url", "variants"),
    [
        ("https://a.example/x", ["https://a.example/x", "https://a.example:443/x"]),
        ("https://a.example:443/x?q", ["https://a.example:443/x?q", "https://a.example/x?q"]),
        ("ws://h:80", ["ws://h:80", "ws://h"]),
        ("ws://h", ["ws://h", "ws://h:80"]),
        ("HTTPS://a.example/x", ["HTTPS://a.example/x", "HTTPS://a.example:443/x"]),
        ("https://u:p@a.example/x", ["https://u:p@a.example/x", "https://u:p@a.example:443/x"]),
        ("https://[::1]:443/x", ["https://[::1]:443/x", "https://[::1]/x"]),
        ("https://a.example?x=1:2", ["https://a.example?x=1:2", "https://a.example:443?x=1:2"]),
        ("ftp://a.example/x", ["ftp://a.example/x"]),
        ("not a url", ["not a url"]),
    ],
)
def test_url_variants(url: str, variants: list[str]) -> None:
    assert twilio_url_variants(url) == variants


@pytest.mark.parametrize("signature", ["", None, "AiSnQz1EUi20pXxxdI7BKJLzq1A", "é" * 28, "x"])
def test_bad_signatures_are_false_not_errors(signature: str | None) -> None:
    assert not validate_twilio_signature(TOKEN, "https://x.example/", {"a": "b"}, signature)


def test_json_body_with_body_sha256_matches_sdk() -> None:
    body = json.dumps({"CallSid": CALL, "StreamEvent": "stream-started", "note": "日本"})
    digest = hashlib.sha256(body.encode()).hexdigest()
    url = f"https://edge.example.com/hook?bodySHA256={digest}"
    signature = twilio_signature(TOKEN, url)
    sdk = RequestValidator(TOKEN)
    assert sdk.validate(url, body, signature)
    assert validate_twilio_signature(TOKEN, url, None, signature, body=body)
    assert validate_twilio_signature(TOKEN, url, None, signature, body=body.encode())
    tampered = body.replace("started", "stopped")
    assert not sdk.validate(url, tampered, signature)
    assert not validate_twilio_signature(TOKEN, url, None, signature, body=tampered)


# --------------------------------------------------------------------------- stream tokens


def mint(now: float = 1_000.0, call_sid: str = CALL, nonce: str | None = None) -> str:
    return mint_stream_token(SECRET, call_sid, "support", "us", now=now, nonce=nonce)


def test_token_round_trip() -> None:
    token = mint(now=1_000.5, nonce="n1")
    assert re.fullmatch(r"cp2\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}", token), token
    claims = verify_stream_token(SECRET, token, CALL, now=1_001.0)
    assert claims == StreamClaims(CALL, "support", "us", expires_at=1_060, nonce="n1")
    assert (claims.from_, claims.to, claims.country) == ("", "", "")
    assert (claims.direction, claims.answered_by) == ("inbound", "")


def test_the_call_facts_from_the_webhook_are_signed_into_the_token() -> None:
    token = mint_stream_token(
        SECRET,
        CALL,
        "reminders",
        "eu",
        now=1_000,
        from_="+442071234567",
        to="+923001234567",
        country="PK",
        direction="outbound",
        answered_by="machine_end_beep",
    )
    claims = verify_stream_token(SECRET, token, CALL, now=1_001)
    assert (claims.from_, claims.to, claims.country) == ("+442071234567", "+923001234567", "PK")
    assert (claims.direction, claims.answered_by) == ("outbound", "machine_end_beep")
    # changing any of them breaks the signature
    version, payload, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    for key, value in (("f", "+15550000000"), ("k", "US"), ("d", "inbound"), ("a", "human")):
        forged = base64.urlsafe_b64encode(json.dumps({**data, key: value}).encode())
        assert refused(f"{version}.{forged.rstrip(b'=').decode()}.{signature}").reason == (
            "bad_signature"
        )


def test_a_stream_url_is_the_media_url_plus_the_tokens_key() -> None:
    first, second = mint(nonce="n1"), mint(nonce="n2")
    url = stream_url("wss://media.example.com/twilio/media", first)
    assert url == "wss://media.example.com/twilio/media/" + first.split(".")[2]
    key = url.rsplit("/", 1)[1]
    assert key == stream_key(first) and is_stream_key(key)
    assert stream_key_matches(key, first)
    # a key admits only its own token: another token for the same call does not fit
    assert stream_key(second) != key and not stream_key_matches(key, second)
    for bad_key in ("", key[:-1], key + "A", key[:-1] + "!", "é" * 43):
        assert not stream_key_matches(bad_key, first) and not is_stream_key(bad_key)
    for bad_token in ("", "garbage", "cp1." + first.split(".", 1)[1], None):
        assert not stream_key_matches(key, bad_token)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stream token"):
        stream_key("cp2.abc.short")


def test_tokens_have_fresh_nonces() -> None:
    nonces = {verify_stream_token(SECRET, mint(), CALL, now=1_000).nonce for _ in range(50)}
    assert len(nonces) == 50


def test_unicode_claims_round_trip() -> None:
    token = mint_stream_token(SECRET, CALL, "kundendienst-ü", "eu", now=0, ttl_s=5)
    claims = verify_stream_token(SECRET, token, CALL, now=4.9)
    assert (claims.profile, claims.region, claims.expires_at) == ("kundendienst-ü", "eu", 5)


def refused(token: str, *, now: float = 1_010.0, call_sid: str = CALL) -> StreamTokenError:
    with pytest.raises(StreamTokenError) as info:
        verify_stream_token(SECRET, token, call_sid, now=now)
    message = str(info.value)
    assert info.value.reason in message and "Fix:" in message
    if len(token) > 8:
        assert token not in message and token.split(".")[-1] not in message
    return info.value


def test_expired() -> None:
    token = mint(now=1_000)
    verify_stream_token(SECRET, token, CALL, now=1_059.99)
    assert refused(token, now=1_060).reason == "expired"
    assert refused(token, now=5_000).reason == "expired"


def test_wrong_call() -> None:
    error = refused(mint(), call_sid="CA" + "2" * 32)
    assert error.reason == "wrong_call"
    assert CALL in str(error)


def test_wrong_secret() -> None:
    token = mint_stream_token("another-secret-0123456789", CALL, "support", "us", now=1_000)
    assert refused(token).reason == "bad_signature"


def test_tampered_payload() -> None:
    version, payload, signature = mint().split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged["e"] = 9_999_999_999
    forged_payload = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    assert refused(f"{version}.{forged_payload}.{signature}").reason == "bad_signature"
    flipped = payload[:10] + ("A" if payload[10] != "A" else "B") + payload[11:]
    assert refused(f"{version}.{flipped}.{signature}").reason == "bad_signature"


def test_tampered_signature() -> None:
    version, payload, signature = mint().split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    assert refused(f"{version}.{payload}.{flipped}").reason == "bad_signature"
    assert refused(f"{version}.{payload}.{signature[:-4]}").reason == "bad_signature"


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "x",
        "cp1",
        "cp1..",
        "cp1.abc",
        "cp3.abc.def",
        "cp1.!!!.abc",
        "cp1.abc.d=f",
        "cp1.a.b",
        "cp1.abc.def.ghi",
        "cp1.é.x",
        "cp1." + "A" * 5000 + ".abc",
        " cp1.abc.def",
    ],
)
def test_garbage_is_malformed(garbage: str) -> None:
    assert refused(garbage).reason == "malformed"


FACTS = {"f": "+15550001111", "t": "+15550002222", "k": "US", "d": "inbound", "a": ""}


def test_a_well_formed_payload_signed_here_is_accepted() -> None:
    """The payloads the test below breaks, whole: only their one defect makes them malformed."""
    payload = {**FACTS, "c": CALL, "p": "s", "r": "us", "e": 1060, "n": "x"}
    claims = verify_stream_token(SECRET, signed(json.dumps(payload).encode()), CALL, now=1_000)
    assert (claims.from_, claims.country, claims.expires_at) == ("+15550001111", "US", 1060)


def signed(payload: bytes) -> str:
    part = "cp2." + base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    mac = hmac.new(SECRET.encode(), part.encode(), hashlib.sha256).digest()
    return part + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"c": "CA1"}',
        json.dumps({**FACTS, "c": CALL, "p": "s", "r": "us", "e": "1060", "n": "x"}).encode(),
        json.dumps({**FACTS, "c": CALL, "p": "s", "r": "us", "e": True, "n": "x"}).encode(),
        json.dumps({**FACTS, "c": CALL, "p": "", "r": "us", "e": 1060, "n": "x"}).encode(),
        json.dumps({**FACTS, "c": CALL, "p": "s", "r": "us", "e": 1060, "n": 7}).encode(),
        # a cp1 payload, without the call's facts, signed as cp2
        json.dumps({"c": CALL, "p": "s", "r": "us", "e": 1060, "n": "x"}).encode(),
        json.dumps(
            {**FACTS, "f": 15550001111, "c": CALL, "p": "s", "r": "us", "e": 1060, "n": "x"}
        ).encode(),
        json.dumps(
            {**FACTS, "d": "sideways", "c": CALL, "p": "s", "r": "us", "e": 1060, "n": "x"}
        ).encode(),
    ],
)
def test_signed_but_malformed_payloads(payload: bytes) -> None:
    assert refused(signed(payload)).reason == "malformed"


def test_non_string_token_is_malformed() -> None:
    with pytest.raises(StreamTokenError) as info:
        verify_stream_token(SECRET, None, CALL, now=0)  # type: ignore[arg-type]
    assert info.value.reason == "malformed"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"secret": ""}, "stream secret"),
        ({"call_sid": ""}, "call_sid"),
        ({"profile": ""}, "profile"),
        ({"region": ""}, "region"),
        ({"ttl_s": 0}, "ttl_s"),
        ({"direction": "sideways"}, "direction"),
        ({"from_": None}, "from_"),
        ({"country": 1}, "country"),
        ({"ttl_s": 7200}, "ttl_s"),
        ({"now": float("nan")}, "now"),
    ],
)
def test_mint_rejects_bad_input(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {
        "secret": SECRET,
        "call_sid": CALL,
        "profile": "support",
        "region": "us",
        "now": 0.0,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        mint_stream_token(**args)  # type: ignore[arg-type]


def test_verify_with_empty_secret_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="stream_secret"):
        verify_stream_token("", mint(), CALL, now=1_000)


# --------------------------------------------------------------------------- replay guard


def test_replay_is_caught() -> None:
    guard = ReplayGuard()
    token = mint()
    claims = verify_stream_token(SECRET, token, CALL, now=1_001)
    guard.check_and_remember(claims, now=1_001)
    again = verify_stream_token(SECRET, token, CALL, now=1_002)
    with pytest.raises(StreamTokenError) as info:
        guard.check_and_remember(again, now=1_002)
    assert info.value.reason == "replayed"
    assert "Fix:" in str(info.value)
    other = verify_stream_token(SECRET, mint(), CALL, now=1_002)
    guard.check_and_remember(other, now=1_002)  # a fresh token for the same call is fine


def test_replay_guard_prunes_expired_nonces() -> None:
    guard = ReplayGuard()
    for i in range(1_000):
        guard.check_and_remember(StreamClaims(CALL, "s", "us", 1_060 + i % 10, f"n{i}"), now=1_000)
    assert len(guard) == 1_000
    guard.check_and_remember(StreamClaims(CALL, "s", "us", 1_200, "late"), now=1_065)
    assert len(guard) == 1 + 400  # expiries 1_066..1_069 remain, plus the new one
    guard.check_and_remember(StreamClaims(CALL, "s", "us", 1_300, "later"), now=1_199)
    assert len(guard) == 2
    # A pruned nonce is no longer remembered, but its token is expired by then anyway.
    with pytest.raises(StreamTokenError) as info:
        guard.check_and_remember(StreamClaims(CALL, "s", "us", 1_060, "n0"), now=1_199)
    assert info.value.reason == "expired"


def test_replay_guard_is_bounded() -> None:
    guard = ReplayGuard(max_entries=100)
    for i in range(1_000):
        guard.check_and_remember(StreamClaims(CALL, "s", "us", 2_000 + i, f"n{i}"), now=1_000)
    assert len(guard) == 100
    with pytest.raises(StreamTokenError, match="replayed"):
        guard.check_and_remember(StreamClaims(CALL, "s", "us", 2_999, "n999"), now=1_000)


def test_replay_guard_rejects_bad_size() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        ReplayGuard(max_entries=0)


# --------------------------------------------------------------------------- stdlib only

STDLIB_ONLY = [
    ROOT / "callplane" / "security.py",
    ROOT / "edge_worker" / "__init__.py",
    ROOT / "edge_worker" / "config.py",
    ROOT / "edge_worker" / "core.py",
]


def imported_modules(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: use absolute imports"
            assert node.module is not None
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", STDLIB_ONLY, ids=lambda p: str(p.relative_to(ROOT)))
def test_bundled_files_import_only_the_standard_library(path: Path) -> None:
    outside = [
        name
        for name in imported_modules(path)
        if name.split(".")[0] not in sys.stdlib_module_names
        and name != "callplane.security"
        and not (name == "edge_worker" or name.startswith("edge_worker."))
    ]
    assert not outside, f"{path.name} imports {outside}; the Cloudflare Worker has only stdlib"
    assert "__future__" in sys.stdlib_module_names
