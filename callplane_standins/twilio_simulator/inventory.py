"""The simulator's number inventory: what can be bought, per country and type, and on what terms.

Provisioning code has to cope with three answers Twilio gives outside the easy US case: no
stock for a country or type, a regulatory bundle required (error 21649), an address required
(error 21631). The table below makes each of them reproducible offline, with numbers that are
identical on every run (no randomness) so tests and demos can name them.

**The rules in ``OFFERS`` are the simulator's rules, not verified carrier or Twilio facts.**
They are chosen to exercise each code path: US local and toll-free sell freely, GB local and
mobile sell freely, PK mobile needs a bundle, PK local and toll-free are out of stock, DE local
needs a local address. Numbers come from ranges reserved for drama and fiction where such a
range is known (US 555-01xx, Ofcom's 020 7946 0xxx / 0161 496 0xxx / 07700 900xxx, Germany's
030 23125 xxx); the PK range is arbitrary. None of them is ever dialled.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

from callplane_standins.twilio_simulator.state import AddressRequirement, NumberType, TwilioApiError

__all__ = [
    "NUMBER_TYPE_PATHS",
    "OFFERS",
    "AvailableNumber",
    "Block",
    "Inventory",
    "Offer",
    "country_of",
    "format_friendly",
]

#: URL segment of AvailablePhoneNumbers / IncomingPhoneNumbers sub-resources -> number type.
NUMBER_TYPE_PATHS: dict[str, NumberType] = {
    "Local": "local",
    "Mobile": "mobile",
    "TollFree": "toll_free",
}
_TYPE_SUBRESOURCE: dict[NumberType, str] = {t: t for t in NUMBER_TYPE_PATHS.values()}
_TYPE_PATH: dict[NumberType, str] = {v: k for k, v in NUMBER_TYPE_PATHS.items()}

_BUNDLE_SID = re.compile(r"^BU[0-9a-fA-F]{32}$")
_ADDRESS_SID = re.compile(r"^AD[0-9a-fA-F]{32}$")
_KEYPAD = {
    **dict.fromkeys("abc", "2"),
    **dict.fromkeys("def", "3"),
    **dict.fromkeys("ghi", "4"),
    **dict.fromkeys("jkl", "5"),
    **dict.fromkeys("mno", "6"),
    **dict.fromkeys("pqrs", "7"),
    **dict.fromkeys("tuv", "8"),
    **dict.fromkeys("wxyz", "9"),
}


@dataclass(frozen=True, slots=True)
class Block:
    """A run of ``count`` consecutive numbers: ``prefix`` + ``first`` .. ``first+count-1``,
    each suffix zero-padded to ``digits``, with the geography Twilio reports for them."""

    prefix: str
    first: int
    count: int
    digits: int
    locality: str = ""
    region: str = ""
    postal_code: str = ""
    rate_center: str = ""
    lata: str = ""
    latitude: str = ""
    longitude: str = ""
    area_code: str = ""

    def numbers(self) -> Iterator[str]:
        for i in range(self.first, self.first + self.count):
            yield f"{self.prefix}{i:0{self.digits}d}"

    def __contains__(self, number: object) -> bool:
        if not isinstance(number, str) or not number.startswith(self.prefix):
            return False
        rest = number[len(self.prefix) :]
        return (
            len(rest) == self.digits
            and rest.isdigit()
            and (self.first <= int(rest) < self.first + self.count)
        )


@dataclass(frozen=True, slots=True)
class Offer:
    """What the simulator sells for one (country, number type) and the rules for buying it."""

    country: str
    country_name: str
    number_type: NumberType
    sold: bool = True
    bundle_required: bool = False
    address_requirements: AddressRequirement = "none"
    capabilities: dict[str, bool] = field(
        default_factory=lambda: {"voice": True, "sms": True, "mms": False, "fax": False}
    )
    beta: bool = False
    blocks: tuple[Block, ...] = ()


def _nanp(
    area_code: str,
    city: str,
    state: str,
    zip_code: str,
    rate_center: str,
    lata: str,
    lat: str,
    lon: str,
) -> Block:
    """A US block: the fictional 555-0100..0199 numbers of ``area_code``."""
    return Block(
        f"+1{area_code}555",
        100,
        100,
        4,
        city,
        state,
        zip_code,
        rate_center,
        lata,
        lat,
        lon,
        area_code,
    )


# The simulator's rules (see the module docstring): chosen to exercise provisioning code paths,
# NOT verified facts about Twilio's stock or any country's regulations.
OFFERS: tuple[Offer, ...] = (
    Offer(
        "US",
        "United States",
        "local",
        capabilities={"voice": True, "sms": True, "mms": True, "fax": True},
        blocks=(
            _nanp("415", "San Francisco", "CA", "94103", "SNFC CNTRL", "722", "37.77", "-122.42"),
            _nanp("212", "New York", "NY", "10001", "NWYRCYZN01", "132", "40.71", "-74.01"),
            _nanp("312", "Chicago", "IL", "60601", "CHCG", "358", "41.88", "-87.63"),
        ),
    ),
    Offer(
        "US",
        "United States",
        "toll_free",
        capabilities={"voice": True, "sms": True, "mms": False, "fax": False},
        blocks=(Block("+1800555", 100, 100, 4), Block("+1888555", 100, 100, 4)),
    ),
    Offer("US", "United States", "mobile", sold=False),
    Offer(
        "GB",
        "United Kingdom",
        "local",
        capabilities={"voice": True, "sms": False, "mms": False, "fax": False},
        blocks=(
            Block("+44207946", 0, 1000, 4, "London", "", "", "", "", "51.5072", "-0.1276"),
            Block("+44161496", 0, 1000, 4, "Manchester", "", "", "", "", "53.4808", "-2.2426"),
        ),
    ),
    Offer("GB", "United Kingdom", "mobile", blocks=(Block("+447700900", 0, 1000, 3),)),
    Offer("GB", "United Kingdom", "toll_free", sold=False),
    Offer(
        "PK",
        "Pakistan",
        "mobile",
        bundle_required=True,
        capabilities={"voice": True, "sms": True, "mms": False, "fax": False},
        beta=True,
        blocks=(Block("+9230055501", 0, 100, 2),),
    ),
    Offer("PK", "Pakistan", "local", sold=False),
    Offer("PK", "Pakistan", "toll_free", sold=False),
    Offer(
        "DE",
        "Germany",
        "local",
        address_requirements="local",
        capabilities={"voice": True, "sms": False, "mms": False, "fax": True},
        blocks=(Block("+493023125", 0, 1000, 3, "Berlin", "", "", "", "", "52.52", "13.405"),),
    ),
    Offer("DE", "Germany", "mobile", sold=False),
)

# Calling-code prefixes -> ISO country, for the geo fields of callers who are not simulator
# numbers. Longest prefix wins; unknown prefixes give "".
_CALLING_CODES: dict[str, str] = {
    "1": "US",
    "44": "GB",
    "49": "DE",
    "92": "PK",
    "33": "FR",
    "34": "ES",
    "39": "IT",
    "61": "AU",
    "81": "JP",
    "91": "IN",
    "353": "IE",
}


def country_of(phone_number: str) -> str:
    """ISO country of an E.164 number by calling code (``""`` if unknown)."""
    digits = phone_number.lstrip("+")
    for n in (3, 2, 1):
        iso = _CALLING_CODES.get(digits[:n])
        if iso:
            return iso
    return ""


def format_friendly(phone_number: str) -> str:
    """Twilio's ``friendly_name`` for a number: ``(415) 555-0100`` for NANP, E.164 otherwise."""
    if phone_number.startswith("+1") and len(phone_number) == 12:
        d = phone_number[2:]
        return f"({d[:3]}) {d[3:6]}-{d[6:]}"
    return phone_number


@dataclass(frozen=True, slots=True)
class AvailableNumber:
    """One number in the inventory, with the offer and block it belongs to."""

    phone_number: str
    offer: Offer
    block: Block

    def to_json(self) -> dict[str, object]:
        """An ``available_phone_numbers`` entry in Twilio's field names."""
        b = self.block
        caps = self.offer.capabilities
        return {
            "friendly_name": format_friendly(self.phone_number),
            "phone_number": self.phone_number,
            "lata": b.lata or None,
            "locality": b.locality or None,
            "rate_center": b.rate_center or None,
            "latitude": b.latitude or None,
            "longitude": b.longitude or None,
            "region": b.region or None,
            "postal_code": b.postal_code or None,
            "iso_country": self.offer.country,
            "address_requirements": self.offer.address_requirements,
            "beta": self.offer.beta,
            # AvailablePhoneNumbers has been seen with upper-case SMS/MMS keys.
            "capabilities": {
                "voice": caps.get("voice", False),
                "SMS": caps.get("sms", False),
                "MMS": caps.get("mms", False),
                "fax": caps.get("fax", False),
            },
        }


def _contains_regex(pattern: str) -> re.Pattern[str]:
    """Compile Twilio's ``Contains`` pattern.

    ``*`` matches one digit, ``%`` any run of digits, a leading ``+`` anchors at the start of
    the E.164 number, a trailing ``$`` at its end; letters map to keypad digits.
    """
    p = pattern.strip()
    anchored_start = p.startswith("+")
    anchored_end = p.endswith("$")
    body = p[1 if anchored_start else 0 : -1 if anchored_end else None]
    if not 2 <= len(body) <= 16 or not re.fullmatch(r"[0-9A-Za-z*%]+", body):
        raise TwilioApiError(
            400,
            21203,  # simulator's choice of code for an invalid search parameter
            f"Contains {pattern!r} is not a valid pattern: use 2 to 16 of 0-9, A-Z, '*' (one "
            "digit) and '%' (any digits), optionally starting with '+' or ending with '$'",
        )
    parts = []
    for ch in body.lower():
        if ch == "*":
            parts.append(r"\d")
        elif ch == "%":
            parts.append(r"\d*")
        else:
            parts.append(_KEYPAD.get(ch, ch))
    regex = "".join(parts)
    return re.compile(("^" if anchored_start else "") + regex + ("$" if anchored_end else ""))


class Inventory:
    """Searches and purchase checks over a table of offers (``OFFERS`` by default).

    Pure and deterministic: what is taken is passed in, so the same call gives the same
    answer on every run.
    """

    def __init__(self, offers: tuple[Offer, ...] = OFFERS) -> None:
        self.offers = offers

    def countries(self) -> list[str]:
        """ISO codes of countries with at least one type in stock, sorted."""
        return sorted({o.country for o in self.offers if o.sold and o.blocks})

    def country_name(self, country: str) -> str | None:
        for o in self.offers:
            if o.country == country:
                return o.country_name
        return None

    def types_in_stock(self, country: str) -> list[NumberType]:
        """Number types sold in ``country`` (what ``subresource_uris`` lists)."""
        return [o.number_type for o in self.offers if o.country == country and o.sold and o.blocks]

    def offer(self, country: str, number_type: NumberType) -> Offer | None:
        for o in self.offers:
            if o.country == country and o.number_type == number_type:
                return o
        return None

    def search(
        self,
        country: str,
        number_type: NumberType,
        *,
        taken: Collection[str] = (),
        area_code: str | None = None,
        contains: str | None = None,
        in_locality: str | None = None,
        exclude_address_required: bool = False,
        limit: int = 50,
    ) -> list[AvailableNumber]:
        """Numbers still for sale that match the filters, in table order.

        Raises TwilioApiError 404 (code 20404) when the country or the type is not sold at all,
        which is how the simulator answers "no inventory"; a sold type whose filters match
        nothing gives an empty list.
        """
        offer = self.offer(country, number_type)
        if offer is None or not offer.sold or not offer.blocks:
            raise TwilioApiError(
                404,
                20404,
                f"The requested resource /AvailablePhoneNumbers/{country}/"
                f"{_TYPE_PATH[number_type]}.json was not found: no {number_type.replace('_', '-')}"
                f" numbers are in stock for {country}",
            )
        if area_code is not None and (not area_code.isdigit() or len(area_code) != 3):
            raise TwilioApiError(
                400, 21203, f"AreaCode {area_code!r} is not valid: it must be 3 digits"
            )
        if area_code is not None and country not in ("US", "CA"):
            raise TwilioApiError(
                400, 21203, f"AreaCode {area_code!r} can only be used for US and CA numbers"
            )
        regex = _contains_regex(contains) if contains else None
        if exclude_address_required and offer.address_requirements != "none":
            return []
        found: list[AvailableNumber] = []
        for block in offer.blocks:
            if area_code is not None and block.area_code != area_code:
                continue
            if in_locality and block.locality.lower() != in_locality.lower():
                continue
            for number in block.numbers():
                if number in taken:
                    continue
                if regex is not None and regex.search(number.lstrip("+")) is None:
                    continue
                found.append(AvailableNumber(number, offer, block))
                if len(found) >= limit:
                    return found
        return found

    def lookup(self, phone_number: str) -> AvailableNumber | None:
        """The inventory entry for ``phone_number`` (sold or not yet), or None."""
        for offer in self.offers:
            if not offer.sold:
                continue
            for block in offer.blocks:
                if phone_number in block:
                    return AvailableNumber(phone_number, offer, block)
        return None

    def check_purchase(
        self, number: AvailableNumber, bundle_sid: str | None, address_sid: str | None
    ) -> None:
        """Apply the offer's regulatory rules; raise Twilio's 21649 / 21631 when unmet.

        The simulator has no Bundles or Addresses resource: any well-formed ``BU…`` SID counts
        as a ``twilio-approved`` bundle and any well-formed ``AD…`` SID as a valid address.
        """
        offer = number.offer
        if bundle_sid is not None and not _BUNDLE_SID.match(bundle_sid):
            raise TwilioApiError(
                400,
                21649,
                f"BundleSid {bundle_sid!r} is not a valid Bundle SID (BU followed by 32 hex "
                "digits)",
            )
        if address_sid is not None and not _ADDRESS_SID.match(address_sid):
            raise TwilioApiError(
                400,
                21631,
                f"AddressSid {address_sid!r} is not a valid Address SID (AD followed by 32 hex "
                "digits)",
            )
        if offer.bundle_required and not bundle_sid:
            raise TwilioApiError(
                400,
                21649,
                f"Phone Number {number.phone_number} requires a Bundle: {offer.country} "
                f"{offer.number_type.replace('_', '-')} numbers need a twilio-approved "
                "regulatory bundle; pass BundleSid",
            )
        if offer.address_requirements != "none" and not address_sid:
            raise TwilioApiError(
                400,
                21631,
                f"Phone Number {number.phone_number} requires an Address: {offer.country} "
                f"{offer.number_type.replace('_', '-')} numbers need an address "
                f"({offer.address_requirements}); pass AddressSid",
            )

    @staticmethod
    def type_path(number_type: NumberType) -> str:
        """``local`` -> ``Local`` etc. (the URL segment)."""
        return _TYPE_PATH[number_type]

    @staticmethod
    def subresource_key(number_type: NumberType) -> str:
        return _TYPE_SUBRESOURCE[number_type]
