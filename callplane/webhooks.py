"""Where a caller-supplied webhook may point: ``https://`` to a host the stack allows, and never
to an address inside the network the media plane runs in.

``POST /calls`` takes a ``webhook_url`` that the media app later POSTs the call's outcome to.
Without a policy that is a server-side request forgery: a caller with the API key could make the
media containers send requests to the cloud's metadata service (``169.254.169.254``), to
``localhost`` or to private addresses. :func:`check_webhook_url` refuses, naming the setting
and the fix:

* a scheme other than ``https`` (``http`` only to loopback, when the stack allows loopback);
* credentials in the URL, or no host;
* a host that is not in ``outbound.webhook_hosts`` (exact names, or ``*.example.com`` for any
  name below ``example.com``; literal addresses must be listed as they are written);
* an address that is not global: loopback, private, link-local, shared (CGNAT), multicast,
  reserved or unspecified, IPv4 embedded in IPv6 included. Literal addresses are checked as
  written; host names are resolved when the request is checked, and every address they resolve
  to must be global.

Local stacks may set ``outbound.webhook_loopback`` so that their tests can receive webhooks on
``127.0.0.1``: loopback addresses (literal, or ``localhost``) are then accepted over ``http`` or
``https``, and nothing else that is not global. The media app checks again when it delivers,
and connects to an address it has just checked (:func:`pinned_request`), so a name that
resolves elsewhere by then is not followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "MAX_WEBHOOK_URL_CHARS",
    "Resolver",
    "WebhookRefused",
    "WebhookTarget",
    "check_host_pattern",
    "check_webhook_url",
    "pinned_request",
    "resolve_host",
]

MAX_WEBHOOK_URL_CHARS = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(host, port) -> addresses`` as text; raises :class:`OSError` when the name does not
resolve."""

_NAME = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LOCALHOST = ("localhost", ".localhost")


class WebhookRefused(ValueError):
    """The webhook URL may not be used; the message names the URL's problem, the setting and
    the fix."""


@dataclass(frozen=True)
class WebhookTarget:
    """A checked webhook URL and the addresses its host had when it was checked."""

    url: str
    host: str
    addresses: tuple[str, ...]


async def resolve_host(host: str, port: int) -> Sequence[str]:
    """Every address ``host`` resolves to now (the event loop's ``getaddrinfo``)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return sorted({str(info[4][0]) for info in infos})


def check_host_pattern(pattern: str) -> str:
    """One entry of ``outbound.webhook_hosts``, lower-cased: a host name, ``*.`` and a domain,
    or a global IP address. Raises ValueError naming the entry and the fix."""
    value = pattern.strip().lower()
    name = value.removeprefix("*.")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        address = None
    if address is not None:
        if not _is_global(address):
            raise ValueError(
                f"webhook_hosts entry {pattern!r} is not a public address: webhooks never go "
                "to loopback, private, link-local or reserved addresses; remove it"
            )
        return value
    if not _NAME.fullmatch(name) or ("." not in name and value.startswith("*.")):
        raise ValueError(
            f"webhook_hosts entry {pattern!r} is not a host name: write 'hooks.example.com', "
            "or '*.example.com' for every name below example.com (no scheme, port or path)"
        )
    return value


async def check_webhook_url(
    url: str,
    *,
    hosts: Sequence[str],
    allow_loopback: bool = False,
    resolve: Resolver = resolve_host,
) -> WebhookTarget:
    """The target of ``url`` if the stack may POST to it, with the addresses checked (see the
    module docstring); :class:`WebhookRefused` naming the problem and the fix otherwise.
    ``hosts`` are ``outbound.webhook_hosts`` (as :func:`check_host_pattern` returns them) and
    ``allow_loopback`` is ``outbound.webhook_loopback``."""
    if len(url) > MAX_WEBHOOK_URL_CHARS:
        raise WebhookRefused(
            f"webhook_url is {len(url)} characters long, over the limit of "
            f"{MAX_WEBHOOK_URL_CHARS}; use a shorter URL"
        )
    shown = url if len(url) <= 120 else url[:117] + "..."
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise WebhookRefused(
            f"webhook_url={shown!r} is not a URL; write https://host/path"
        ) from None
    host = (parts.hostname or "").lower()
    if not host:
        raise WebhookRefused(f"webhook_url={shown!r} has no host; write https://host/path")
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused(
            f"webhook_url={shown!r} carries credentials; put them in the path or a query "
            "token, never before the host"
        )
    if parts.scheme not in ("https", "http"):
        raise WebhookRefused(f"webhook_url={shown!r} is not https; webhooks go over https only")
    literal = _literal(host)
    loopback_name = host == "localhost" or host.endswith(".localhost")
    if allow_loopback and (loopback_name or (literal is not None and _is_loopback(literal))):
        addresses = [str(literal)] if literal is not None else await _resolved(host, port, resolve)
        if not all(_is_loopback(ipaddress.ip_address(a)) for a in addresses):
            raise WebhookRefused(
                f"webhook_url={shown!r}: {host} resolves to {', '.join(addresses)}, not only "
                "to loopback addresses; outbound.webhook_loopback allows loopback and nothing "
                "else"
            )
        return WebhookTarget(url, host, tuple(addresses))
    if parts.scheme != "https":
        raise WebhookRefused(
            f"webhook_url={shown!r} is not https; webhooks go over https only (plain http is "
            "allowed to loopback on stacks that set outbound.webhook_loopback)"
        )
    if literal is not None and not _is_global(literal):
        raise WebhookRefused(
            f"webhook_url={shown!r} points at {literal}, which is not a public address "
            "(loopback, private, link-local, shared or reserved); webhooks only go to public "
            "hosts listed in outbound.webhook_hosts"
        )
    if not _listed(host, hosts):
        listed = ", ".join(hosts) if hosts else "none"
        raise WebhookRefused(
            f"webhook_url={shown!r}: the host {host!r} is not one this stack sends webhooks to "
            f"(outbound.webhook_hosts: {listed}); add it, or '*.' and its domain, to "
            "outbound.webhook_hosts"
        )
    if literal is not None:
        return WebhookTarget(url, host, (str(literal),))
    addresses = await _resolved(host, port, resolve)
    inside = [a for a in addresses if not _is_global(ipaddress.ip_address(a))]
    if inside:
        raise WebhookRefused(
            f"webhook_url={shown!r}: {host} resolves to {', '.join(inside)}, which is not a "
            "public address (loopback, private, link-local, shared or reserved); webhooks only "
            "go to hosts that resolve to public addresses"
        )
    return WebhookTarget(url, host, tuple(addresses))


def pinned_request(target: WebhookTarget) -> tuple[str, dict[str, str], dict[str, str]]:
    """``(url, headers, extensions)`` for an HTTP client to reach ``target`` at the first
    address it was checked with: the host replaced by that address, the original host in
    ``Host``, and for https the original host as the TLS server name (``sni_hostname``, which
    httpx also checks the certificate against)."""
    parts = urlsplit(target.url)
    address = target.addresses[0]
    shown = f"[{address}]" if ":" in address else address
    netloc = shown if parts.port is None else f"{shown}:{parts.port}"
    url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    host = parts.netloc.rpartition("@")[2]
    extensions = {"sni_hostname": target.host} if parts.scheme == "https" else {}
    return url, {"Host": host}, extensions


async def _resolved(host: str, port: int | None, resolve: Resolver) -> list[str]:
    try:
        addresses = list(await resolve(host, port or 443))
    except OSError as exc:
        raise WebhookRefused(
            f"webhook_url: the host {host!r} does not resolve ({exc}); check the name"
        ) from None
    if not addresses:
        raise WebhookRefused(f"webhook_url: the host {host!r} resolves to no address")
    return addresses


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _listed(host: str, hosts: Sequence[str]) -> bool:
    for pattern in hosts:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and host != pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False


def _embedded(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses carried inside an IPv6 one (mapped, 6to4, Teredo, NAT64): each must be
    judged too, or ``::ffff:10.0.0.1`` would pass as a public IPv6 address."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _is_global(address: IPAddress) -> bool:
    if not address.is_global or address.is_multicast:
        return False
    return all(_is_global(inner) for inner in _embedded(address))


def _is_loopback(address: IPAddress) -> bool:
    inner = _embedded(address)
    return address.is_loopback or (bool(inner) and all(a.is_loopback for a in inner))
