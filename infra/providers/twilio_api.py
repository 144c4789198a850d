"""The ``twilio`` SDK client for providers, and Twilio errors turned into fixes."""

from __future__ import annotations

from typing import Any

from infra.providers.common import ProvisioningError

__all__ = ["explain", "is_not_found", "twilio_client"]

_TIMEOUT_S = 30.0


def twilio_client(account_sid: str, auth_token: str, api_base_url: str | None = None) -> Any:
    """A ``twilio.rest.Client``; with ``api_base_url`` every domain it uses (``api`` for numbers,
    ``trunking`` for SIP trunks) is aimed there: the local stack's Twilio simulator."""
    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client

    client = Client(account_sid, auth_token, http_client=TwilioHttpClient(timeout=_TIMEOUT_S))
    if api_base_url:
        client.api.base_url = api_base_url
        client.trunking.base_url = api_base_url
    return client


def _status(exc: BaseException) -> int | None:
    """The HTTP status of a Twilio failure: ``TwilioRestException.status``, or the response a
    paging ``TwilioException('Unable to fetch page', response)`` carries."""
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status
    for arg in exc.args:
        code = getattr(arg, "status_code", None)
        if isinstance(code, int):
            return code
    return None


def is_not_found(exc: BaseException) -> bool:
    return _status(exc) == 404 or getattr(exc, "code", None) == 20404


def explain(exc: BaseException, entry: str, doing: str) -> ProvisioningError:
    """A Twilio failure as a message naming the config entry, what failed and the fix."""
    code = getattr(exc, "code", None)
    message = getattr(exc, "msg", None) or str(exc)
    if code == 21649:
        fix = (
            "add bundle: BU… to this entry with the SID of a twilio-approved regulatory bundle "
            "for this country and number type (Console > Phone Numbers > Regulatory Compliance "
            "> Bundles); a bundle still in review is refused the same way"
        )
    elif code == 21631:
        fix = (
            "add address: AD… to this entry with an Address that meets the number's address "
            "requirement (Console > Phone Numbers > Regulatory Compliance > Addresses)"
        )
    elif code == 20003 or _status(exc) == 401:
        fix = (
            "check callplane:twilio.accountSid and the secret callplane:twilioAuthToken (pulumi "
            "config set --secret callplane:twilioAuthToken <token>)"
        )
    elif code in (21421, 21422, 21452):
        fix = "the number is not available any more; run pulumi up again to pick another"
    elif code is None and _status(exc) is None:
        fix = (
            "check that Twilio (or the local simulator at callplane:twilio.apiBaseUrl) is reachable"
        )
    else:
        fix = f"see https://www.twilio.com/docs/errors/{code}" if code else "see Twilio's message"
    label = f"Twilio error {code}" if code else type(exc).__name__
    return ProvisioningError(f"{entry}: could not {doing}: {label}: {message}. Fix: {fix}")
