"""The load profile: one TOML file that drives every transport identically, validated into a frozen dataclass."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PROFILE_PATH = Path(__file__).with_name("default_profile.toml")
ARRIVALS = ("poisson", "fixed")
# The server's default text limit (servers.core.Limits.text_chars); a longer text would be refused with 413.
MAX_MESSAGE_BYTES = 4096
# The server's cap on wait= (servers.config.ServerConfig.long_poll_max_wait_s); longer is silently shortened.
MAX_LONG_POLL_WAIT_S = 30.0


class ProfileError(ValueError):
    """A profile that cannot drive a run; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class Profile:
    """What every simulated chat member does, the same for every transport.

    Every key is required in a profile file, so a file says everything about its run.
    """

    users: int  # chat members at full load
    spawn_rate: float  # members started per second while ramping up
    rooms: int  # rooms the members are spread over evenly (member i joins room i % rooms)
    messages_per_second: float  # sends per member per second (0: members only listen)
    message_bytes: int  # length of each message text, ASCII, so characters = bytes
    arrival: str  # "poisson" (exponential gaps) or "fixed" (equal gaps, random phase per member)
    poll_interval_s: float  # short polling: from the start of one poll to the start of the next
    long_poll_wait_s: float  # long polling: wait= sent with each poll (the server caps it at 30)
    duration_s: int  # whole run, warm-up included; Locust's --run-time
    warmup_s: float  # first part of the run left out of the HDR histogram and named "[warm-up]" in Locust

    def __post_init__(self) -> None:
        _check_int("users", self.users, 1, 100_000)
        _check_number("spawn_rate", self.spawn_rate, low=0, low_open=True, high=10_000)
        _check_int("rooms", self.rooms, 1, 100_000)
        if self.rooms > self.users:
            raise ProfileError(f"rooms must not exceed users ({self.users}), got {self.rooms}: a room would be empty")
        _check_number("messages_per_second", self.messages_per_second, low=0, high=1000)
        _check_int("message_bytes", self.message_bytes, 1, MAX_MESSAGE_BYTES)
        if self.arrival not in ARRIVALS:
            raise ProfileError(f"arrival must be one of {', '.join(map(repr, ARRIVALS))}, got {self.arrival!r}")
        _check_number("poll_interval_s", self.poll_interval_s, low=0, low_open=True, high=3600)
        _check_number("long_poll_wait_s", self.long_poll_wait_s, low=0, low_open=True, high=MAX_LONG_POLL_WAIT_S)
        _check_int("duration_s", self.duration_s, 1, 7 * 24 * 3600)
        _check_number("warmup_s", self.warmup_s, low=0, high=math.inf)
        if self.warmup_s >= self.duration_s:
            raise ProfileError(f"warmup_s must be shorter than duration_s ({self.duration_s}), got {self.warmup_s}")

    def room_for(self, member_index: int) -> str:
        """Return the room of the member-th member: members are dealt round-robin, so rooms differ by at most one."""
        return f"room-{member_index % self.rooms}"

    def replace(self, **changes: object) -> Profile:
        """Return a copy with `changes` applied and validated again."""
        unknown = sorted(set(changes) - set(KEYS))
        if unknown:
            raise ProfileError(f"unknown profile key: {unknown[0]}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Profile))


def profile_from_dict(data: dict, source: str = "profile") -> Profile:
    """Validate a decoded profile; every key is required and no other is allowed."""
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile is a table of keys")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ProfileError(f"{source}: unknown key {unknown[0]!r}; the keys are {', '.join(KEYS)}")
    missing = [key for key in KEYS if key not in data]
    if missing:
        raise ProfileError(f"{source}: missing key {missing[0]!r}")
    try:
        return Profile(**data)
    except ProfileError as error:
        raise ProfileError(f"{source}: {error}") from None


def load_profile(path: str | Path) -> Profile:
    """Read and validate the TOML profile at `path`."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such profile file") from None
    except tomllib.TOMLDecodeError as error:
        raise ProfileError(f"{path}: not valid TOML: {error}") from None
    return profile_from_dict(data, str(path))


def _check_int(key: str, value: object, low: int, high: int) -> None:
    # bool is an int in Python; `users = true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProfileError(f"{key} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ProfileError(f"{key} must be from {low} to {high}, got {value}")


def _check_number(key: str, value: object, *, low: float, high: float, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProfileError(f"{key} must be a finite number, got {value!r}")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        bound = f"more than {low}" if low_open else f"at least {low}"
        upper = "" if math.isinf(high) else f" and at most {high}"
        raise ProfileError(f"{key} must be {bound}{upper}, got {value}")
