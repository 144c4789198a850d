"""What Twilio sells per country and on what terms: one table, each fact marked verified or not.

The table is checked before any resource is declared, so that an impossible request (a number
type a country does not sell, a regulated number without its bundle) fails at ``pulumi preview``
and not at purchase. Every fact carries ``verified`` and ``source``: *verified* means it was
checked against a source named there; anything else is the best knowledge available and may be
wrong for your account. A stack overrides any fact with ``callplane:countries`` (see
:func:`apply_overrides`); overridden facts are reported as coming from the stack config.

Twilio remains the final judge: a purchase it refuses (21631 address, 21649 bundle, no
inventory) is turned into an error naming the number entry and the fix
(:mod:`infra.providers.twilio_errors`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = [
    "COUNTRY_RULES",
    "NUMBER_TYPES",
    "AddressRequirement",
    "CountryRule",
    "Fact",
    "NumberType",
    "TypeRule",
    "apply_overrides",
]

NumberType = Literal["local", "mobile", "toll_free"]
AddressRequirement = Literal["none", "any", "local", "foreign"]
NUMBER_TYPES: tuple[NumberType, ...] = ("local", "mobile", "toll_free")

# Public Twilio pages the facts below rest on.
_ERROR_21649 = "https://www.twilio.com/docs/errors/21649"
_BUNDLES_API = "https://www.twilio.com/docs/phone-numbers/regulatory/api/bundles"
_AVAILABLE_NUMBERS = "https://www.twilio.com/docs/phone-numbers/api/availablephonenumber-resource"
_INCOMING_NUMBERS = "https://www.twilio.com/docs/phone-numbers/api/incomingphonenumber-resource"
_BUNDLE_CHANGELOG = (
    "Twilio changelog 'Regulated Number Bundle Provisioning Requirement' (2020-02-12): regulated "
    f"numbers outside US/CA need a bundle ({_ERROR_21649})"
)
# What an account can check for itself before relying on a PK fact.
_PK_CHECK = (
    "GET /2010-04-01/Accounts/{AccountSid}/AvailablePhoneNumbers/PK.json and "
    "GET https://numbers.twilio.com/v2/RegulatoryCompliance/Regulations?IsoCountry=PK"
    "&NumberType=mobile on your account"
)


@dataclass(frozen=True)
class Fact:
    """One claim about a country's numbers, with how sure we are of it."""

    value: Any
    verified: bool
    source: str

    def describe(self) -> str:
        return f"{'verified' if self.verified else 'unverified'}: {self.source}"


def _u(value: Any, source: str) -> Fact:
    return Fact(value, False, source)


def _v(value: Any, source: str) -> Fact:
    return Fact(value, True, source)


@dataclass(frozen=True)
class TypeRule:
    """The terms for one number type in one country."""

    sold: Fact
    bundle_required: Fact = field(default_factory=lambda: _u(False, "no requirement known"))
    address_required: Fact = field(default_factory=lambda: _u("none", "no requirement known"))
    # Whether an approved bundle satisfies the address requirement (a bundle normally contains
    # the end user's address as one of its items).
    bundle_covers_address: Fact = field(
        default_factory=lambda: _u(True, "bundles normally carry the end user's address")
    )
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CountryRule:
    """A country's number types, plus what searches it supports."""

    iso: str
    name: str
    types: Mapping[NumberType, TypeRule]
    area_codes: Fact = field(
        default_factory=lambda: _v(False, f"AreaCode is US/CA only ({_AVAILABLE_NUMBERS})")
    )
    limits: tuple[str, ...] = ()

    def sold_types(self) -> list[NumberType]:
        return [t for t in NUMBER_TYPES if t in self.types and self.types[t].sold.value]

    def rule(self, number_type: NumberType) -> TypeRule:
        """The rule for ``number_type``; a type the table does not mention is not sold."""
        found = self.types.get(number_type)
        if found is None:
            return TypeRule(
                sold=_u(False, f"the table lists no {number_type} numbers for {self.iso}")
            )
        return found


_NANP_AREA = _v(
    True,
    f"AreaCode search and purchase work for US/CA ({_AVAILABLE_NUMBERS}, {_INCOMING_NUMBERS})",
)

COUNTRY_RULES: dict[str, CountryRule] = {
    "US": CountryRule(
        "US",
        "United States",
        {
            "local": TypeRule(
                sold=_u(True, "Twilio's best-known stock; the simulator sells it"),
                bundle_required=_v(False, _BUNDLE_CHANGELOG),
                address_required=_u("none", "no address is asked for US local numbers"),
            ),
            "toll_free": TypeRule(
                sold=_u(True, "Twilio sells US toll-free numbers"),
                bundle_required=_v(False, _BUNDLE_CHANGELOG),
                notes=("sending SMS from toll-free numbers needs toll-free verification",),
            ),
            "mobile": TypeRule(sold=_u(False, "Twilio does not list US mobile numbers")),
        },
        area_codes=_NANP_AREA,
    ),
    "CA": CountryRule(
        "CA",
        "Canada",
        {
            "local": TypeRule(
                sold=_u(True, "Twilio sells Canadian local numbers"),
                bundle_required=_v(False, _BUNDLE_CHANGELOG),
            ),
            "toll_free": TypeRule(
                sold=_u(True, "Twilio sells Canadian toll-free numbers"),
                bundle_required=_v(False, _BUNDLE_CHANGELOG),
            ),
        },
        area_codes=_NANP_AREA,
    ),
    "GB": CountryRule(
        "GB",
        "United Kingdom",
        {
            "local": TypeRule(
                sold=_u(True, "Twilio sells GB local numbers"),
                bundle_required=_u(True, _BUNDLE_CHANGELOG + "; GB is expected to be regulated"),
                address_required=_u("any", "GB numbers are expected to need an address"),
            ),
            "mobile": TypeRule(
                sold=_u(True, "Twilio sells GB mobile numbers"),
                bundle_required=_u(True, _BUNDLE_CHANGELOG + "; GB is expected to be regulated"),
                address_required=_u("any", "GB numbers are expected to need an address"),
            ),
            "toll_free": TypeRule(
                sold=_u(True, "Twilio sells GB toll-free (0800) numbers"),
                bundle_required=_u(True, _BUNDLE_CHANGELOG + "; GB is expected to be regulated"),
            ),
        },
    ),
    "DE": CountryRule(
        "DE",
        "Germany",
        {
            "local": TypeRule(
                sold=_u(True, "Twilio sells German local numbers"),
                bundle_required=_u(True, _BUNDLE_CHANGELOG + "; DE is expected to be regulated"),
                address_required=_u("local", "German local numbers need an address in the area"),
                bundle_covers_address=_u(False, "21631 is still raised without an AddressSid"),
            ),
            "mobile": TypeRule(
                sold=_u(True, "Twilio sells German mobile numbers"),
                bundle_required=_u(True, _BUNDLE_CHANGELOG + "; DE is expected to be regulated"),
            ),
        },
    ),
    "PK": CountryRule(
        "PK",
        "Pakistan",
        {
            "mobile": TypeRule(
                sold=_u(
                    True, f"assumed, as no public Twilio page lists PK stock; check {_PK_CHECK}"
                ),
                bundle_required=_u(True, f"expected for a regulated country ({_BUNDLES_API})"),
                address_required=_u(
                    "any", "expected with the bundle (https://www.twilio.com/docs/errors/21631)"
                ),
                notes=(
                    "Twilio has historically not stocked +92 numbers: check "
                    "GET /AvailablePhoneNumbers/PK.json on your account first",
                ),
            ),
            "local": TypeRule(sold=_u(False, f"no PK local stock is known; check {_PK_CHECK}")),
            "toll_free": TypeRule(
                sold=_u(False, f"no PK toll-free stock is known; check {_PK_CHECK}")
            ),
        },
        limits=("bundle review takes days; buying before approval fails with 21649",),
    ),
}


def apply_overrides(
    table: Mapping[str, CountryRule], overrides: Mapping[str, Mapping[str, Mapping[str, Any]]]
) -> dict[str, CountryRule]:
    """The table with the stack's ``callplane:countries`` overrides applied.

    ``overrides`` maps ISO country -> number type -> any of ``sold``, ``bundleRequired``,
    ``addressRequired``, ``bundleCoversAddress`` (already validated by
    :class:`infra.config.CountryOverride`). A country missing from the table is added.
    """
    result = dict(table)
    for iso, types in overrides.items():
        base = result.get(iso) or CountryRule(iso, iso, {})
        new_types: dict[NumberType, TypeRule] = dict(base.types)
        for type_name, fields in types.items():
            number_type: NumberType = type_name  # type: ignore[assignment]
            rule = new_types.get(number_type) or TypeRule(sold=_u(False, "not in the table"))
            changes: dict[str, Fact] = {}
            for key, attr in (
                ("sold", "sold"),
                ("bundle_required", "bundle_required"),
                ("address_required", "address_required"),
                ("bundle_covers_address", "bundle_covers_address"),
            ):
                if fields.get(key) is not None:
                    changes[attr] = Fact(
                        fields[key], False, f"stack config callplane:countries.{iso}.{type_name}"
                    )
            new_types[number_type] = replace(rule, **changes)  # type: ignore[arg-type]
        result[iso] = replace(base, types=new_types)
    return result
