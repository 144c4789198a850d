"""TwiML parsed into a short list of typed instructions the simulated carrier can follow.

Only the verbs a phone voice agent uses are implemented: ``<Connect><Stream>`` (the media
bridge), ``<Say>``, ``<Dial>`` (transfer), ``<Reject>``, ``<Hangup>`` and ``<Pause>``. Anything
else fails loudly with :class:`TwimlError` instead of being skipped, so a TwiML change that the
simulator cannot honour is noticed in a test rather than silently "passing".
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

__all__ = [
    "Dial",
    "Hangup",
    "Instruction",
    "Pause",
    "Reject",
    "Say",
    "Stream",
    "TwimlError",
    "parse_twiml",
]

# Verbs Twilio has but the simulator does not implement (a clearer error than "unknown").
_TWILIO_VERBS_NOT_SIMULATED = frozenset(
    {
        "Gather",
        "Play",
        "Record",
        "Redirect",
        "Enqueue",
        "Leave",
        "Sms",
        "Message",
        "Start",
        "Stop",
        "Refer",
        "Pay",
        "Prompt",
        "Echo",
        "Queue",
    }
)
_SUPPORTED = "Connect/Stream, Say, Dial, Reject, Hangup, Pause"


class TwimlError(ValueError):
    """The document is not TwiML the simulator can run; the message says what and where.

    The carrier reports it as Twilio error 12100 (document parse failure) and ends the call,
    as Twilio does for an unparseable document.
    """


@dataclass(frozen=True, slots=True)
class Stream:
    """``<Connect><Stream>``: a bidirectional media stream to ``url``.

    ``parameters`` are the nested ``<Parameter name value>`` pairs, delivered to the server in
    ``start.customParameters``.
    """

    url: str
    name: str = ""
    parameters: dict[str, str] = field(default_factory=dict)
    track: str = ""
    status_callback: str = ""
    status_callback_method: str = "POST"


@dataclass(frozen=True, slots=True)
class Say:
    """Text the caller hears (synthesised with espeak-ng by the simulator)."""

    text: str
    voice: str = ""
    language: str = ""
    loop: int = 1


@dataclass(frozen=True, slots=True)
class Dial:
    """Connect the caller to ``number`` (E.164, a SIP URI or a client name): a transfer."""

    number: str
    kind: str = "number"
    caller_id: str = ""
    timeout_s: int = 30


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse the call without answering; ``reason`` is ``rejected`` or ``busy``."""

    reason: str = "rejected"


@dataclass(frozen=True, slots=True)
class Hangup:
    """End the call."""


@dataclass(frozen=True, slots=True)
class Pause:
    """Silence for ``length_s`` seconds."""

    length_s: float = 1.0


Instruction = Stream | Say | Dial | Reject | Hangup | Pause


def _tag(el: ET.Element) -> str:
    # Tolerate a default namespace: "{ns}Response" -> "Response".
    return el.tag.rsplit("}", 1)[-1]


def _int_attr(el: ET.Element, name: str, default: int, low: int, high: int) -> int:
    raw = el.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise TwimlError(f"<{_tag(el)} {name}={raw!r}> must be an integer") from None
    if not low <= value <= high:
        raise TwimlError(f"<{_tag(el)} {name}={raw!r}> must be between {low} and {high}")
    return value


def _no_children(el: ET.Element) -> None:
    for child in el:
        raise TwimlError(f"<{_tag(child)}> cannot be nested in <{_tag(el)}>")


def _parse_stream(el: ET.Element) -> Stream:
    url = (el.get("url") or "").strip()
    if not url:
        raise TwimlError("<Stream> needs a url attribute (wss://…)")
    if not url.startswith(("wss://", "ws://")):
        raise TwimlError(f"<Stream url={url!r}> must be a wss:// URL")
    params: dict[str, str] = {}
    for child in el:
        if _tag(child) != "Parameter":
            raise TwimlError(f"<{_tag(child)}> cannot be nested in <Stream>; use <Parameter>")
        name = child.get("name")
        if not name:
            raise TwimlError("<Parameter> needs a name attribute")
        params[name] = child.get("value", "")
    return Stream(
        url=url,
        name=el.get("name", ""),
        parameters=params,
        track=el.get("track", ""),
        status_callback=el.get("statusCallback", ""),
        status_callback_method=(el.get("statusCallbackMethod") or "POST").upper(),
    )


def _parse_connect(el: ET.Element) -> Stream:
    children = list(el)
    if len(children) != 1:
        raise TwimlError(f"<Connect> must hold exactly one noun, found {len(children)}")
    noun = children[0]
    if _tag(noun) != "Stream":
        raise TwimlError(
            f"<Connect><{_tag(noun)}> is not simulated; only <Connect><Stream> is supported"
        )
    return _parse_stream(noun)


def _parse_dial(el: ET.Element) -> Dial:
    caller_id = el.get("callerId", "")
    timeout = _int_attr(el, "timeout", 30, 5, 600)
    children = list(el)
    if not children:
        target = (el.text or "").strip()
        if not target:
            raise TwimlError("<Dial> needs a number, as text or a nested <Number>")
        return Dial(target, "number", caller_id, timeout)
    if len(children) != 1:
        raise TwimlError(f"<Dial> with {len(children)} nouns is not simulated; use one")
    noun = children[0]
    kinds = {"Number": "number", "Sip": "sip", "Client": "client"}
    kind = kinds.get(_tag(noun))
    if kind is None:
        raise TwimlError(f"<Dial><{_tag(noun)}> is not simulated; use Number, Sip or Client")
    target = (noun.text or "").strip()
    if not target:
        raise TwimlError(f"<Dial><{_tag(noun)}> is empty")
    return Dial(target, kind, caller_id, timeout)


def _parse_verb(el: ET.Element) -> Instruction:
    tag = _tag(el)
    if tag == "Connect":
        return _parse_connect(el)
    if tag == "Say":
        _no_children_except_text(el)
        return Say(
            text=" ".join("".join(el.itertext()).split()),
            voice=el.get("voice", ""),
            language=el.get("language", ""),
            loop=_int_attr(el, "loop", 1, 0, 1000),
        )
    if tag == "Dial":
        return _parse_dial(el)
    if tag == "Reject":
        _no_children(el)
        reason = el.get("reason", "rejected") or "rejected"
        if reason not in ("rejected", "busy"):
            raise TwimlError(f"<Reject reason={reason!r}> must be 'rejected' or 'busy'")
        return Reject(reason)
    if tag == "Hangup":
        _no_children(el)
        return Hangup()
    if tag == "Pause":
        _no_children(el)
        return Pause(float(_int_attr(el, "length", 1, 0, 3600)))
    if tag in _TWILIO_VERBS_NOT_SIMULATED:
        raise TwimlError(f"<{tag}> is a Twilio verb the simulator does not run ({_SUPPORTED})")
    raise TwimlError(f"<{tag}> is not a TwiML verb (the simulator runs {_SUPPORTED})")


def _no_children_except_text(el: ET.Element) -> None:
    # <Say> may hold SSML elements; the simulator reads their text and ignores the markup.
    for child in el:
        if _tag(child) not in {"break", "emphasis", "p", "s", "prosody", "say-as", "sub", "lang"}:
            raise TwimlError(f"<{_tag(child)}> cannot be nested in <Say>")


def parse_twiml(document: str | bytes) -> list[Instruction]:
    """Parse a TwiML document into instructions, in order.

    Raises TwimlError for malformed XML, a root other than ``<Response>``, an unknown or
    unsupported verb, or invalid attributes, naming the element and value at fault.
    """
    try:
        root = ET.fromstring(document)
    except ET.ParseError as exc:
        raise TwimlError(f"TwiML is not well-formed XML: {exc}") from None
    if _tag(root) != "Response":
        raise TwimlError(f"TwiML root must be <Response>, not <{_tag(root)}>")
    return [_parse_verb(el) for el in root]
