"""The load profile: one TOML file that drives every transport identically, validated into a frozen dataclass."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from servers import registry

DEFAULT_PROFILE_PATH = Path(__file__).with_name("default_profile.toml")
ARRIVALS = ("poisson", "fixed")
# The server's default text limit (servers.core.Limits.text_chars); a longer text would be refused with 413.
MAX_MESSAGE_BYTES = 4096


class ProfileError(ValueError):
    """A profile that cannot drive a run; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class Profile:
    """What every simulated chat member does, the same for every transport.

    The common keys are required in a profile file, so a file says everything about its run. Each
    transport's own keys (its knobs in servers.registry, e.g. poll_interval_s) may be given too, and
    take their defaults otherwise; `knobs` holds every registered one.
    """

    users: int  # chat members at full load
    spawn_rate: float  # members started per second while ramping up
    rooms: int  # rooms the members are spread over evenly (member i joins room i % rooms)
    messages_per_second: float  # sends per member per second (0: members only listen)
    message_bytes: int  # length of each message text, ASCII, so characters = bytes
    arrival: str  # "poisson" (exponential gaps) or "fixed" (equal gaps, random phase per member)
    duration_s: int  # whole run, warm-up included; Locust's --run-time
    warmup_s: float  # first part of the run left out of the HDR histogram and named "[warm-up]" in Locust
    knobs: dict[str, object] = field(default_factory=dict)  # the transports' own keys, defaults filled in

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
        _check_int("duration_s", self.duration_s, 1, 7 * 24 * 3600)
        _check_number("warmup_s", self.warmup_s, low=0, high=math.inf)
        if self.warmup_s >= self.duration_s:
            raise ProfileError(f"warmup_s must be shorter than duration_s ({self.duration_s}), got {self.warmup_s}")
        known = registry.profile_knobs()
        unknown = sorted(set(self.knobs) - set(known))
        if unknown:
            raise ProfileError(f"unknown profile key: {unknown[0]}; the keys are {', '.join(keys())}")
        knobs = {}
        for name, knob in known.items():
            try:
                knobs[name] = knob.check(self.knobs.get(name, knob.default))
            except ValueError as error:
                raise ProfileError(str(error)) from None
        object.__setattr__(self, "knobs", knobs)

    def knob(self, name: str) -> object:
        """The value of a transport's profile key (its registered default when the file did not give it)."""
        return self.knobs[name]

    def room_for(self, member_index: int) -> str:
        """Return the room of the member-th member: members are dealt round-robin, so rooms differ by at most one."""
        return f"room-{member_index % self.rooms}"

    def replace(self, **changes: object) -> Profile:
        """Return a copy with `changes` (common keys or transports' keys) applied and validated again."""
        unknown = sorted(set(changes) - set(keys()))
        if unknown:
            raise ProfileError(f"unknown profile key: {unknown[0]}")
        common = {k: v for k, v in changes.items() if k in COMMON_KEYS}
        knobs = {**self.knobs, **{k: v for k, v in changes.items() if k not in COMMON_KEYS}}
        return dataclasses.replace(self, **common, knobs=knobs)

    def as_dict(self) -> dict:
        """Every key, common and transports', flat: what a profile file holds."""
        return {**{key: getattr(self, key) for key in COMMON_KEYS}, **self.knobs}


COMMON_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Profile) if f.name != "knobs")


def keys() -> tuple[str, ...]:
    """Every key a profile may hold: the common ones (all required), then every registered transport's own."""
    return (*COMMON_KEYS, *registry.profile_knobs())


def profile_from_dict(data: dict, source: str = "profile") -> Profile:
    """Validate a decoded profile: every common key is required; a transport's own key is optional."""
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile is a table of keys")
    unknown = sorted(set(data) - set(keys()))
    if unknown:
        raise ProfileError(f"{source}: unknown key {unknown[0]!r}; the keys are {', '.join(keys())}")
    missing = [key for key in COMMON_KEYS if key not in data]
    if missing:
        raise ProfileError(f"{source}: missing key {missing[0]!r}")
    try:
        return Profile(**{k: data[k] for k in COMMON_KEYS}, knobs={k: v for k, v in data.items() if k not in COMMON_KEYS})
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
