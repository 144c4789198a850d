"""The Twilio simulator's persistent state: numbers, calls and SIP trunks per account.

A developer's offline stack buys numbers once (``pulumi up`` against the simulator) and expects
them to still be there after a restart, exactly as with Twilio. The state is therefore a JSON
file, rewritten atomically (temporary file in the same directory, fsync, rename) after every
change, so a crash mid-write leaves the previous version intact instead of an empty or torn file.

The records use Twilio's own vocabulary (SIDs, E.164 numbers, call statuses) so ``rest.py`` only
has to rename fields to snake_case JSON. Credentials are not persisted: they are given to the
simulator at start-up, as secrets should be.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

__all__ = [
    "FINAL_CALL_STATUSES",
    "AccountState",
    "AddressRequirement",
    "CallDirection",
    "CallResource",
    "CallStatus",
    "NumberType",
    "OriginationUrlRecord",
    "PhoneNumberRecord",
    "SimulatorState",
    "StateStore",
    "TrunkRecord",
    "TwilioApiError",
    "new_sid",
    "utcnow",
]

NumberType = Literal["local", "mobile", "toll_free"]
AddressRequirement = Literal["none", "any", "local", "foreign"]
CallStatus = Literal[
    "queued", "ringing", "in-progress", "completed", "busy", "no-answer", "canceled", "failed"
]
CallDirection = Literal["inbound", "outbound-api", "outbound-dial"]
FINAL_CALL_STATUSES: frozenset[str] = frozenset(
    {"completed", "busy", "no-answer", "canceled", "failed"}
)

# Calls kept per account in the state file; older finished calls are dropped first.
MAX_CALLS_PER_ACCOUNT = 500
STATE_VERSION = 1


class TwilioApiError(Exception):
    """An error Twilio would answer with: HTTP status, Twilio error code and message.

    Raised by the state, the inventory rules and the REST layer alike and rendered by
    ``rest.py`` as Twilio's error JSON, so the ``twilio`` SDK turns it into the same
    ``TwilioRestException`` (same ``status`` and ``code``) production code would see.
    """

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    def to_json(self) -> dict[str, object]:
        """Twilio's error body: ``{code, message, more_info, status}``."""
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }


def new_sid(prefix: str) -> str:
    """A Twilio-style SID: two-letter prefix and 32 lowercase hex digits."""
    return prefix + secrets.token_hex(16)


def utcnow() -> datetime:
    """Timestamps are timezone-aware UTC, rendered as RFC 2822 by the REST layer."""
    return datetime.now(UTC).replace(microsecond=0)


class PhoneNumberRecord(BaseModel):
    """An IncomingPhoneNumber: a number an account bought, and where its calls go."""

    sid: str
    account_sid: str
    phone_number: str
    friendly_name: str
    iso_country: str
    number_type: NumberType
    locality: str = ""
    region: str = ""
    voice_url: str = ""
    voice_method: str = "POST"
    voice_fallback_url: str = ""
    voice_fallback_method: str = "POST"
    status_callback: str = ""
    status_callback_method: str = "POST"
    bundle_sid: str | None = None
    address_sid: str | None = None
    address_requirements: AddressRequirement = "none"
    trunk_sid: str | None = None
    voice_application_sid: str | None = None
    capabilities: dict[str, bool] = Field(default_factory=dict)
    beta: bool = False
    date_created: datetime = Field(default_factory=utcnow)
    date_updated: datetime = Field(default_factory=utcnow)


class CallResource(BaseModel):
    """A Call resource: one leg, inbound (a caller rang a number) or outbound (REST)."""

    sid: str
    account_sid: str
    from_number: str
    to: str
    direction: CallDirection
    status: CallStatus
    phone_number_sid: str | None = None
    parent_call_sid: str | None = None
    date_created: datetime = Field(default_factory=utcnow)
    date_updated: datetime = Field(default_factory=utcnow)
    start_time: datetime | None = None
    end_time: datetime | None = None
    duration: int | None = None
    answered_by: str | None = None
    transferred_to: str | None = None
    hung_up_by: str | None = None
    status_callback: str = ""
    status_callback_method: str = "POST"
    status_callback_events: list[str] = Field(default_factory=list)


class OriginationUrlRecord(BaseModel):
    """Where an Elastic SIP Trunk sends its inbound calls (``/Trunks/{TK}/OriginationUrls``)."""

    sid: str
    account_sid: str
    trunk_sid: str
    sip_url: str
    priority: int
    weight: int
    enabled: bool
    friendly_name: str
    date_created: datetime = Field(default_factory=utcnow)
    date_updated: datetime = Field(default_factory=utcnow)


class TrunkRecord(BaseModel):
    """An Elastic SIP Trunk (``trunking.twilio.com/v1/Trunks``). Its phone numbers are not
    listed here: a number's own ``trunk_sid`` is the association, as on Twilio, where setting
    ``TrunkSid`` on the number and ``POST /Trunks/{TK}/PhoneNumbers`` are the same thing."""

    sid: str
    account_sid: str
    friendly_name: str = ""
    domain_name: str | None = None
    disaster_recovery_url: str | None = None
    disaster_recovery_method: str | None = None
    transfer_mode: str = "disable-all"
    transfer_caller_id: str = "from-transferee"
    secure: bool = False
    cnam_lookup_enabled: bool = False
    symmetric_rtp_enabled: bool = False
    origination_urls: dict[str, OriginationUrlRecord] = Field(default_factory=dict)
    date_created: datetime = Field(default_factory=utcnow)
    date_updated: datetime = Field(default_factory=utcnow)


class AccountState(BaseModel):
    """Everything one account owns in the simulator."""

    numbers: dict[str, PhoneNumberRecord] = Field(default_factory=dict)
    calls: dict[str, CallResource] = Field(default_factory=dict)
    trunks: dict[str, TrunkRecord] = Field(default_factory=dict)


class SimulatorState(BaseModel):
    """The whole state file."""

    version: int = STATE_VERSION
    accounts: dict[str, AccountState] = Field(default_factory=dict)


class StateStore:
    """The state in memory plus its JSON file; safe to use from the event loop and threads.

    Mutations happen in memory under ``lock``; :meth:`save` writes a consistent snapshot. The
    REST handlers and the carrier call :meth:`save_async`, which runs the file write in a
    thread so the event loop never waits on the disk.
    """

    def __init__(self, path: Path | str, state: SimulatorState | None = None) -> None:
        self.path = Path(path)
        self.state = state or SimulatorState()
        self.lock = threading.RLock()
        self._write_lock = threading.Lock()

    @classmethod
    def load(cls, path: Path | str) -> StateStore:
        """Open the state file at ``path``, or start empty if it does not exist yet.

        A file that exists but cannot be read as simulator state raises ValueError naming the
        path, rather than being silently replaced: numbers a developer bought are not lost.
        """
        p = Path(path)
        if not p.exists():
            return cls(p)
        try:
            state = SimulatorState.model_validate_json(p.read_bytes())
        except (ValidationError, ValueError) as exc:
            raise ValueError(
                f"{p} is not a readable Twilio simulator state file ({exc}); move it away "
                "to start with an empty state"
            ) from exc
        if state.version != STATE_VERSION:
            raise ValueError(
                f"{p} has state version {state.version}; this simulator reads {STATE_VERSION}"
            )
        return cls(p, state)

    def account(self, account_sid: str) -> AccountState:
        """The account's state, created empty on first use."""
        with self.lock:
            acct = self.state.accounts.get(account_sid)
            if acct is None:
                acct = self.state.accounts[account_sid] = AccountState()
            return acct

    def all_numbers(self) -> Iterator[PhoneNumberRecord]:
        """Every number owned by any account (a snapshot list, safe to iterate)."""
        with self.lock:
            numbers = [n for a in self.state.accounts.values() for n in a.numbers.values()]
        return iter(numbers)

    def find_number(self, phone_number: str) -> PhoneNumberRecord | None:
        """The IncomingPhoneNumber holding ``phone_number`` (E.164), whoever owns it."""
        for record in self.all_numbers():
            if record.phone_number == phone_number:
                return record
        return None

    def taken(self) -> set[str]:
        """E.164 numbers already bought, which the inventory must not offer again."""
        return {n.phone_number for n in self.all_numbers()}

    def put_call(self, call: CallResource) -> None:
        """Insert or replace a call record, trimming the oldest finished calls."""
        with self.lock:
            calls = self.account(call.account_sid).calls
            calls[call.sid] = call
            if len(calls) > MAX_CALLS_PER_ACCOUNT:
                finished = [c for c in calls.values() if c.status in FINAL_CALL_STATUSES]
                finished.sort(key=lambda c: c.date_created)
                for old in finished[: len(calls) - MAX_CALLS_PER_ACCOUNT]:
                    del calls[old.sid]

    def find_call(self, call_sid: str) -> CallResource | None:
        with self.lock:
            for acct in self.state.accounts.values():
                call = acct.calls.get(call_sid)
                if call is not None:
                    return call
        return None

    def save(self) -> None:
        """Write the state atomically: temp file in the same directory, fsync, rename."""
        with self._write_lock:
            with self.lock:
                data = self.state.model_dump_json(indent=1)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    async def save_async(self) -> None:
        """:meth:`save` in a worker thread."""
        await asyncio.to_thread(self.save)

    def snapshot(self) -> dict[str, object]:
        """The state as plain JSON data (for debugging and tests)."""
        with self.lock:
            loaded: dict[str, object] = json.loads(self.state.model_dump_json())
        return loaded
