"""Profile rules: which profile a LiveKit room's agent runs, where a transfer may go, and
which contexts can fill an outbound call's templates."""

from __future__ import annotations

import pydantic
import pytest

from callplane.profiles import (
    AgentProfile,
    check_outbound_context,
    choose_profile,
    fill_template,
    template_fields,
    transfer_target,
)

PROFILES = {
    "web": AgentProfile(name="web"),
    "quiet": AgentProfile(name="quiet"),
    "lobby": AgentProfile(name="lobby", room="lobby-room"),
}


def test_a_requested_profile_wins() -> None:
    assert choose_profile(PROFILES, "lobby-room", requested="quiet") == "quiet"
    meta = '{"profile": "web"}'
    assert choose_profile(PROFILES, "r", requested="quiet", room_metadata=meta) == "quiet"


def test_then_the_room_metadata_names_it() -> None:
    meta = '{"profile": "quiet"}'
    assert choose_profile(PROFILES, "r", room_metadata=meta) == "quiet"
    assert choose_profile(PROFILES, "lobby-room", room_metadata=meta) == "quiet"


def test_then_the_profile_hosting_the_room_then_the_first() -> None:
    # A hybrid phone room is created by its first caller, without metadata: the launcher
    # (which never sees metadata) and the agent job must both land on the room's profile.
    assert choose_profile(PROFILES, "lobby-room") == "lobby"
    assert choose_profile(PROFILES, "lobby-room", room_metadata="{}") == "lobby"
    assert choose_profile(PROFILES, "anything") == "web"


def test_metadata_of_another_application_is_ignored() -> None:
    for meta in ("", "not json, another app's metadata", '["a list"]', '{"profile": null}'):
        assert choose_profile(PROFILES, "r", room_metadata=meta) == "web"
        assert choose_profile(PROFILES, "lobby-room", room_metadata=meta) == "lobby"


def test_a_name_that_is_not_configured_is_refused_with_where_it_came_from() -> None:
    with pytest.raises(
        ValueError, match=r"^profile='x' is not a configured profile.*\['lobby', 'quiet', 'web'\]"
    ):
        choose_profile(PROFILES, "r", requested="x")
    with pytest.raises(ValueError, match="the room's metadata 'profile'='gone'"):
        choose_profile(PROFILES, "r", room_metadata='{"profile": "gone"}')
    with pytest.raises(ValueError, match="no agent profiles"):
        choose_profile({}, "r")


# --- transfers -----------------------------------------------------------------------------

SUPPORT = AgentProfile(name="support", transfer_targets={"billing": "+15005550006"})


def test_a_department_dials_its_number_whatever_the_letter_case() -> None:
    assert transfer_target(SUPPORT, "billing") == "+15005550006"
    assert transfer_target(SUPPORT, " Billing ") == "+15005550006"
    assert transfer_target(SUPPORT, "+15005550006") == "+15005550006"


def test_a_number_is_dialled_in_e164_form() -> None:
    assert transfer_target(SUPPORT, "+1 (415) 555-0123") == "+14155550123"
    assert transfer_target(AgentProfile(name="bare"), "+442071838750") == "+442071838750"


@pytest.mark.parametrize("to", ["sales", "4155550123", "+0123", "billing department", ""])
def test_anything_else_is_refused_naming_the_departments(to: str) -> None:
    with pytest.raises(ValueError, match="neither a department") as refused:
        transfer_target(SUPPORT, to)
    message = str(refused.value)
    assert f"to={to!r}" in message
    assert "departments: billing" in message and "+14155550123" in message


def test_a_line_without_departments_says_so() -> None:
    with pytest.raises(ValueError, match="departments: none are configured"):
        transfer_target(AgentProfile(name="bare"), "billing")


# --- outbound templates --------------------------------------------------------------------

REMINDERS = AgentProfile(
    name="reminders",
    outbound_greeting="Hello {name}, this is a reminder of your appointment {when}.",
    voicemail="Hello {name}, call us back about {when}. Ref {booking[id]}.",
)


def test_template_fields_cover_indexes_nested_specs_and_skip_literal_braces() -> None:
    assert template_fields("Hi {name}, {{not a field}} {order[id]} {total:>{width}}") == [
        "name",
        "order[id]",
        "total",
        "width",
    ]
    assert template_fields("{name} and {name} again") == ["name"]
    assert template_fields("no fields, {{just braces}}") == []


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("Hello {", "write literal braces as {{ and }}"),
        ("Hello }", "write literal braces as {{ and }}"),
        ("Hello {}", "positional field {}"),
        ("Hello {0}", "positional field {0}"),
        ("Hello {customer.name}", "index into them instead: {customer[name]}"),
        ("Hello {items[0].name}", "index into them instead: {items[0][name]}"),
    ],
)
def test_a_template_no_context_could_fill_is_refused_at_load(template: str, says: str) -> None:
    with pytest.raises(pydantic.ValidationError) as refused:
        AgentProfile(name="x", voicemail=template)
    message = str(refused.value)
    assert says in message and f"voicemail={template!r}" in message


def test_a_context_that_fills_every_template_passes() -> None:
    context = {"name": "Amina", "when": "tomorrow", "booking": {"id": 7}}
    check_outbound_context(REMINDERS, context)
    assert fill_template(REMINDERS.voicemail or "", context) == (
        "Hello Amina, call us back about tomorrow. Ref 7."
    )
    check_outbound_context(AgentProfile(name="no-templates"), {})


def test_a_missing_field_is_refused_naming_it_its_template_and_the_fix() -> None:
    with pytest.raises(ValueError, match="cannot fill") as refused:
        check_outbound_context(REMINDERS, {"name": "Amina", "booking": {}})
    message = str(refused.value)
    assert "context={'name': 'Amina', 'booking': {}}" in message
    assert "profile 'reminders'" in message
    assert f"outbound_greeting {REMINDERS.outbound_greeting!r} needs {{when}}" in message
    assert f"voicemail {REMINDERS.voicemail!r} needs {{when}}, {{booking[id]}}" in message
    assert 'Add "when" and "booking" to the request\'s context' in message


def test_a_value_its_format_spec_cannot_format_is_refused() -> None:
    profile = AgentProfile(name="bills", outbound_greeting="You owe {amount:.2f} dollars.")
    check_outbound_context(profile, {"amount": 12.5})
    with pytest.raises(ValueError, match="cannot format the values given"):
        check_outbound_context(profile, {"amount": "twelve"})


def test_filling_never_leaves_a_raw_field() -> None:
    with pytest.raises(ValueError, match=r"the context has no \{when\}"):
        fill_template(REMINDERS.outbound_greeting or "", {"name": "Amina"})
    assert fill_template("{{literal}} {name}", {"name": "Amina"}) == "{literal} Amina"
