"""The load profile: the shipped default is valid and documented; bad files are refused naming the key."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

from clients.profile import (
    COMMON_KEYS,
    DEFAULT_PROFILE_PATH,
    Profile,
    ProfileError,
    keys,
    load_profile,
    profile_from_dict,
)
from servers import registry


def default_dict() -> dict:
    return load_profile(DEFAULT_PROFILE_PATH).as_dict()


def test_the_default_profile_loads():
    profile = load_profile(DEFAULT_PROFILE_PATH)
    assert isinstance(profile, Profile)
    assert set(profile.as_dict()) == set(keys())


def test_every_key_is_documented_in_docs_locust_md():
    doc = (ROOT / "docs" / "locust.md").read_text()
    for key in keys():
        assert f"`{key}`" in doc, key


def test_a_transports_own_key_may_be_left_out_and_takes_its_registered_default():
    data = {key: value for key, value in default_dict().items() if key in COMMON_KEYS}
    profile = profile_from_dict(data)
    for name, knob in registry.profile_knobs().items():
        assert profile.knob(name) == knob.default
    assert profile.replace(poll_interval_s=0.25).knob("poll_interval_s") == 0.25
    assert set(profile.as_dict()) == set(keys())  # written out whole: a stored run says every value


def test_the_docs_show_the_shipped_default_values():
    doc = (ROOT / "docs" / "locust.md").read_text()
    for key, value in default_dict().items():
        shown = f'"{value}"' if isinstance(value, str) else repr(value)
        assert re.search(rf"`{key}`\s*\|\s*`{re.escape(shown)}`", doc), f"{key} = {shown} not in the docs table"


def test_an_unknown_key_is_refused_by_name(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(DEFAULT_PROFILE_PATH.read_text() + "\nusers_per_room = 3\n")
    with pytest.raises(ProfileError, match="unknown key 'users_per_room'"):
        load_profile(path)


def test_a_missing_key_is_refused_by_name():
    data = default_dict()
    del data["warmup_s"]
    with pytest.raises(ProfileError, match="missing key 'warmup_s'"):
        profile_from_dict(data)


@pytest.mark.parametrize(
    "key, value",
    [
        ("users", 0),
        ("users", 2.5),
        ("users", True),
        ("users", "10"),
        ("spawn_rate", 0),
        ("rooms", 0),
        ("rooms", 1000),  # more rooms than users
        ("messages_per_second", -1),
        ("messages_per_second", float("nan")),
        ("message_bytes", 0),
        ("message_bytes", 5000),
        ("arrival", "bursty"),
        ("poll_interval_s", 0),
        ("long_poll_wait_s", 0),
        ("long_poll_wait_s", 31),
        ("duration_s", 0),
        ("duration_s", 10.5),
        ("warmup_s", -1),
        ("warmup_s", 60),  # not shorter than duration_s
    ],
)
def test_a_bad_value_is_refused_naming_its_key(key, value):
    data = default_dict() | {key: value}
    with pytest.raises(ProfileError, match=rf"^profile: {key} "):
        profile_from_dict(data)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ProfileError, match="no such profile file"):
        load_profile(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("users = = 3\n")
    with pytest.raises(ProfileError, match=r"bad\.toml: not valid TOML"):
        load_profile(bad)


def test_replace_validates_again():
    profile = load_profile(DEFAULT_PROFILE_PATH)
    assert profile.replace(users=10, rooms=2).users == 10
    with pytest.raises(ProfileError, match="rooms"):
        profile.replace(users=1)  # 5 rooms for 1 user
    with pytest.raises(ProfileError, match="unknown profile key: speed"):
        profile.replace(speed=3)


def test_members_are_spread_evenly_over_rooms():
    profile = load_profile(DEFAULT_PROFILE_PATH).replace(users=12, rooms=5)
    rooms = [profile.room_for(i) for i in range(profile.users)]
    sizes = sorted(rooms.count(room) for room in set(rooms))
    assert len(set(rooms)) == 5 and sizes[-1] - sizes[0] <= 1
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", room) for room in rooms)
