"""Webhook delivery: signed HTTP requests to the application, made the way Twilio makes them.

Voice webhooks (fetching TwiML) and every status callback go through :class:`WebhookClient`, so
signing, the user agent, connection reuse and Twilio's single retry on a failed connection are
the same for all of them:

* a POST sends the parameters form-encoded and ``X-Twilio-Signature`` signs URL + parameters;
  a GET appends them to the query string and signs the resulting URL alone;
* a request whose connection fails is retried once on a fresh connection; a timeout or an HTTP
  error is not retried.

See https://www.twilio.com/docs/usage/webhooks/webhooks-security and
https://www.twilio.com/docs/usage/webhooks/webhooks-connection-overrides.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from urllib.parse import urlencode, urlsplit

import aiohttp
from twilio.request_validator import RequestValidator

__all__ = ["KEEPALIVE_S", "USER_AGENT", "WEBHOOK_RETRIES", "WebhookClient", "WebhookError", "sign"]

log = logging.getLogger("callplane.twilio")

USER_AGENT = "TwilioProxy/1.1"
WEBHOOK_RETRIES = 1
"""Retries of a webhook whose connection failed (Twilio's default retry count)."""
KEEPALIVE_S = 2.0
"""How long an idle webhook connection is kept for reuse."""


class WebhookError(Exception):
    """A webhook or callback request failed (connection error, timeout or non-2xx)."""


def sign(auth_token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """``X-Twilio-Signature`` for a request to ``url`` with form ``params``.

    Uses the ``twilio`` SDK's own algorithm so what the simulator signs is exactly what the
    SDK's ``RequestValidator`` (and therefore production code) accepts.
    """
    signature: str = RequestValidator(auth_token).compute_signature(url, dict(params or {}))
    return signature


class WebhookClient:
    """The HTTP client of every webhook and callback; one per carrier, closed with it.

    Two sessions: one that keeps connections alive for reuse, and one that never does, for the
    retry (a retry on a connection the server may just have closed would fail the same way).
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._fresh_session: aiohttp.ClientSession | None = None

    def _sessions(self) -> tuple[aiohttp.ClientSession, aiohttp.ClientSession]:
        if self._session is None or self._fresh_session is None:
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            # Idle connections are dropped well before servers commonly close them (uvicorn and
            # Node after 5 s), and a retry always opens a fresh connection.
            self._session = aiohttp.ClientSession(
                timeout=timeout, connector=aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_S)
            )
            self._fresh_session = aiohttp.ClientSession(
                timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)
            )
        return self._session, self._fresh_session

    async def request(
        self, url: str, method: str, params: Mapping[str, str], auth_token: str
    ) -> str:
        """A signed webhook request as Twilio makes it; returns the response body.

        POST sends ``params`` form-encoded and signs URL + params; GET appends them to the
        query string and signs the resulting URL alone.
        """
        sessions = self._sessions()
        method = method.upper() or "POST"
        headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
        data: dict[str, str] | None = None
        if method == "GET":
            sep = "&" if urlsplit(url).query else "?"
            url = f"{url}{sep}{urlencode(params)}"
            headers["X-Twilio-Signature"] = sign(auth_token, url)
        else:
            data = dict(params)
            headers["X-Twilio-Signature"] = sign(auth_token, url, data)
        # Twilio retries a webhook once when the connection fails (connection overrides: retry
        # count ``rc`` defaults to 1), never on a timeout or an HTTP error. It matters on a
        # keep-alive connection the server closes just as the next request goes out: without
        # the retry, a status callback sent after ~5 s of quiet (uvicorn's keep-alive) is lost.
        for attempt in range(1 + WEBHOOK_RETRIES):
            try:
                session = sessions[0] if attempt == 0 else sessions[1]
                async with session.request(method, url, data=data, headers=headers) as resp:
                    body = await resp.text()
                    if not 200 <= resp.status < 300:
                        raise WebhookError(
                            f"{method} {url} returned HTTP {resp.status}: {body[:200]!r}"
                        )
                    return body
            except aiohttp.ClientConnectionError as exc:
                if isinstance(exc, TimeoutError) or attempt == WEBHOOK_RETRIES:
                    raise WebhookError(f"{method} {url} failed: {exc!r}") from exc
                log.info("webhook %s %s: connection failed (%r), retrying once", method, url, exc)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise WebhookError(f"{method} {url} failed: {exc!r}") from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def close(self) -> None:
        """Close both sessions; a later request opens new ones."""
        for session in (self._session, self._fresh_session):
            if session is not None:
                await session.close()
        self._session = self._fresh_session = None
