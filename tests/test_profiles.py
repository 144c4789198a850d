"""Which profile an agent in a LiveKit room runs: one rule for the launcher and the agent job."""

from __future__ import annotations

import pytest

from callplane.profiles import AgentProfile, choose_profile

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
