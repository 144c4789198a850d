"""What ``POST /calls`` refuses before anything is dialled: special number types, an oversized
context and a webhook that points anywhere but a public host the stack allows; and the webhook
rules themselves (callplane/webhooks.py), with host names resolved by a stand-in resolver."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from pydantic import ValidationError

from callplane.coordination import connect
from callplane.outbound import (
    DEFAULT_NUMBER_TYPES,
    Dialer,
    OutboundJob,
    OutboundLimits,
    OutboundRequest,
    Refused,
    destination,
)
from callplane.profiles import AgentProfile
from callplane.webhooks import (
    WebhookRefused,
    WebhookTarget,
    check_host_pattern,
    check_webhook_url,
    pinned_request,
)
from tests.support.waiting import until

PERSON = "+14155550123"


class Names:
    """A stand-in DNS: host names to addresses; anything else does not resolve."""

    def __init__(self, table: Mapping[str, Sequence[str]]) -> None:
        self.table = dict(table)
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append((host, port))
        if host not in self.table:
            raise OSError(f"[Errno -2] Name or service not known: {host!r}")
        return self.table[host]


NAMES = Names(
    {
        "hooks.example.com": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
        "api.hooks.example.com": ["93.184.215.15"],
        "rebound.example.com": ["93.184.215.16", "10.0.0.7"],
        "metadata.example.com": ["169.254.169.254"],
        "mapped.example.com": ["::ffff:192.168.1.10"],
        "localhost": ["127.0.0.1", "::1"],
        "sneaky.localhost": ["93.184.215.14"],
    }
)


def dialer(limits: OutboundLimits, placed: list[str], names: Names = NAMES) -> Dialer:
    async def place(job: OutboundJob) -> str:
        placed.append(job.request.to)
        return "CA" + "1" * 32

    async def record_of(call_sid: str) -> dict[str, Any] | None:
        return None

    return Dialer(
        limits,
        {"reminders": AgentProfile(name="reminders")},
        place,
        record_of,
        connect(None).outbound,
        attempt_timeout_s=30,
        resolve=names,
    )


def limits(**changes: Any) -> OutboundLimits:
    base = OutboundLimits(
        allowed_countries=("US", "GB"),
        calling_hours=(0, 24),
        caller_ids={"default": "+15550001111"},
        webhook_hosts=("hooks.example.com", "*.hooks.example.com"),
    )
    return base.model_copy(update=changes)


async def refused_by(dialer: Dialer, **request: Any) -> Refused:
    with pytest.raises(Refused) as caught:
        await dialer.submit(OutboundRequest(**{"to": PERSON, "profile": "reminders", **request}))
    return caught.value


# --------------------------------------------------------------------------- number types


@pytest.mark.parametrize(
    ("number", "kind"),
    [
        ("+19005550100", "PREMIUM_RATE"),  # US 900
        ("+449098790123", "PREMIUM_RATE"),  # GB 09
        ("+15005550006", "PERSONAL_NUMBER"),  # US 500
        ("+447700900123", "UNKNOWN"),  # not a number phonenumbers can place
    ],
)
async def test_special_number_types_are_refused_and_nothing_is_dialled(
    number: str, kind: str
) -> None:
    placed: list[str] = []
    d = dialer(limits(), placed)
    refused = await refused_by(d, to=number)
    assert (refused.limit, refused.status) == ("allowed_number_types", 422)
    assert refused.reason.startswith(f"{number} is a {kind} number (")
    assert "(outbound.allowed_number_types): add" in refused.reason
    assert f"add {kind!r} to allow it" in refused.reason
    await asyncio.sleep(0.05)
    assert placed == [] and d.jobs == {}
    await d.close()


async def test_a_stack_that_allows_premium_rate_calls_it() -> None:
    placed: list[str] = []
    allowed = (*DEFAULT_NUMBER_TYPES, "premium-rate")
    validated = OutboundLimits.model_validate(
        {**limits().model_dump(), "allowed_number_types": allowed}
    )
    assert "PREMIUM_RATE" in validated.allowed_number_types
    d = dialer(validated, placed)
    job = await d.submit(OutboundRequest(to="+19005550100", profile="reminders"))
    await until(lambda: placed == ["+19005550100"], 5, "the premium-rate call to be placed")
    assert job.destination.type == "PREMIUM_RATE"
    await d.close()


def test_ordinary_numbers_have_their_types() -> None:
    assert destination("+14155550123").type == "FIXED_LINE_OR_MOBILE"
    assert destination("+442071838750").type == "FIXED_LINE"
    assert destination("+923001234567").type == "MOBILE"
    assert destination("+18005550100").type == "TOLL_FREE"
    assert set(DEFAULT_NUMBER_TYPES) >= {"FIXED_LINE", "MOBILE", "FIXED_LINE_OR_MOBILE"}


def test_an_unknown_number_type_in_the_settings_names_the_valid_ones() -> None:
    with pytest.raises(ValidationError, match=r"'premium' is not a number type.*PREMIUM_RATE"):
        OutboundLimits(allowed_number_types=("MOBILE", "premium"))
    assert OutboundLimits(allowed_number_types=("toll-free",)).allowed_number_types == (
        "TOLL_FREE",
    )


# --------------------------------------------------------------------------- context size


async def test_a_context_over_the_limit_is_413_naming_it() -> None:
    placed: list[str] = []
    d = dialer(limits(max_context_bytes=64), placed)
    refused = await refused_by(d, context={"note": "x" * 60})
    assert (refused.limit, refused.status) == ("max_context_bytes", 413)
    assert refused.reason.startswith(
        "context is 71 bytes as JSON, over the limit of 64 bytes (outbound.max_context_bytes)"
    )
    # characters count as their UTF-8 bytes: 20 of 'é' is 40 bytes
    assert (await refused_by(d, context={"n": "é" * 30})).limit == "max_context_bytes"
    await d.submit(OutboundRequest(to=PERSON, profile="reminders", context={"n": "é" * 20}))
    await d.close()


# --------------------------------------------------------------------------- webhooks


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://hooks.example.com/done", "is not https"),
        ("ftp://hooks.example.com/done", "is not https"),
        ("https://user:pw@hooks.example.com/done", "carries credentials"),
        ("https:///done", "has no host"),
        ("https://elsewhere.example.org/done", "'elsewhere.example.org' is not one this stack"),
        ("https://example.com/done", "'example.com' is not one this stack"),
        ("https://127.0.0.1/done", "127.0.0.1, which is not a public address"),
        ("https://10.1.2.3/done", "10.1.2.3, which is not a public address"),
        ("https://169.254.169.254/latest/meta-data", "169.254.169.254, which is not a public"),
        ("https://[::1]/done", "::1, which is not a public address"),
        ("https://[fe80::1%25eth0]/done", "fe80::1, which is not a public address"),
        ("https://[::ffff:10.0.0.1]/done", "::ffff:a00:1, which is not a public address"),
        ("https://100.64.0.1/done", "100.64.0.1, which is not a public address"),
        ("https://0.0.0.0/done", "0.0.0.0, which is not a public address"),
        ("https://localhost/done", "'localhost' is not one this stack"),
        ("https://hooks.example.com:99999/done", "is not a URL"),
        ("https://hooks.example.com/" + "x" * 2100, "over the limit of 2048"),
    ],
)
async def test_webhooks_refused_by_their_url(url: str, problem: str) -> None:
    with pytest.raises(WebhookRefused) as refused:
        await check_webhook_url(
            url, hosts=("hooks.example.com", "*.hooks.example.com"), resolve=NAMES
        )
    assert problem in str(refused.value)


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ("rebound.example.com", "resolves to 10.0.0.7, which is not a public address"),
        ("metadata.example.com", "resolves to 169.254.169.254, which is not a public"),
        ("mapped.example.com", "resolves to ::ffff:192.168.1.10, which is not a public"),
        ("gone.example.com", "does not resolve"),
    ],
)
async def test_allowed_names_that_resolve_inside_are_refused(host: str, problem: str) -> None:
    with pytest.raises(WebhookRefused) as refused:
        await check_webhook_url(f"https://{host}/hook", hosts=(host,), resolve=NAMES)
    assert problem in str(refused.value)


async def test_an_allowed_public_host_is_resolved_now_and_kept() -> None:
    names = Names(NAMES.table)
    hosts = ("hooks.example.com", "*.hooks.example.com")
    target = await check_webhook_url(
        "https://hooks.example.com:8443/done?t=1", hosts=hosts, resolve=names
    )
    assert target.addresses == ("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c")
    assert names.asked == [("hooks.example.com", 8443)]
    sub = await check_webhook_url("https://API.hooks.example.com/x", hosts=hosts, resolve=names)
    assert sub.host == "api.hooks.example.com"


async def test_loopback_only_where_the_stack_allows_it() -> None:
    for url in ("http://127.0.0.1:8123/hook", "https://[::1]:8123/hook", "http://localhost/h"):
        target = await check_webhook_url(url, hosts=(), allow_loopback=True, resolve=NAMES)
        assert target.addresses
    # loopback is all it allows: a *.localhost name resolving elsewhere, private or public
    # addresses over http, stay refused
    for url, problem in [
        ("http://sneaky.localhost/h", "not only to loopback addresses"),
        ("http://10.0.0.1/h", "is not https"),
        ("https://10.0.0.1/h", "10.0.0.1, which is not a public address"),
        ("http://hooks.example.com/h", "is not https"),
    ]:
        with pytest.raises(WebhookRefused, match=problem):
            await check_webhook_url(url, hosts=(), allow_loopback=True, resolve=NAMES)


async def test_post_calls_refuses_a_bad_webhook_before_dialling() -> None:
    placed: list[str] = []
    d = dialer(limits(), placed)
    refused = await refused_by(d, webhook_url="https://169.254.169.254/latest")
    assert (refused.limit, refused.status) == ("webhook_hosts", 422)
    none_allowed = dialer(limits(webhook_hosts=()), placed)
    refused = await refused_by(none_allowed, webhook_url="https://hooks.example.com/done")
    assert "(outbound.webhook_hosts: none)" in refused.reason
    job = await d.submit(
        OutboundRequest(to=PERSON, profile="reminders", webhook_url="https://hooks.example.com/d")
    )
    assert job.request.webhook_url == "https://hooks.example.com/d"
    await d.close()
    await none_allowed.close()


def test_the_delivery_goes_to_the_checked_address_under_the_host_s_name() -> None:
    url, headers, extensions = pinned_request(
        WebhookTarget("https://hooks.example.com:8443/done?t=1", "hooks.example.com", ("::1",))
    )
    assert url == "https://[::1]:8443/done?t=1"
    assert headers == {"Host": "hooks.example.com:8443"}
    assert extensions == {"sni_hostname": "hooks.example.com"}
    url, headers, extensions = pinned_request(
        WebhookTarget("http://localhost/h", "localhost", ("127.0.0.1",))
    )
    assert (url, headers, extensions) == ("http://127.0.0.1/h", {"Host": "localhost"}, {})


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("https://hooks.example.com", "is not a host name"),
        ("hooks.example.com/path", "is not a host name"),
        ("*.com", "is not a host name"),
        ("*", "is not a host name"),
        ("10.0.0.1", "is not a public address"),
        ("::1", "is not a public address"),
    ],
)
def test_webhook_hosts_entries_are_checked(pattern: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        check_host_pattern(pattern)
    with pytest.raises(ValidationError, match=problem):
        OutboundLimits(webhook_hosts=(pattern,))
    assert check_host_pattern(" Hooks.Example.COM ") == "hooks.example.com"
    assert check_host_pattern("*.example.com") == "*.example.com"
