"""The load profile: one TOML file that drives every transport identically, validated into a frozen dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from servers import registry
from servers.settings import field_knobs, read_toml, setting

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

    users: int = field(metadata=setting("chat members at full load (Locust's --users)", value_type=int, low=1,
                                        high=100_000))
    spawn_rate: float = field(metadata=setting("members started per second while ramping up", value_type=float,
                                               low=0, low_open=True, high=10_000))
    rooms: int = field(metadata=setting("rooms the members are dealt over, round robin (member i joins room i % rooms)",
                                        value_type=int, low=1, high=100_000))
    messages_per_second: float = field(metadata=setting("sends per member per second (0: members only listen)",
                                                        value_type=float, low=0, high=1000))
    message_bytes: int = field(metadata=setting("length of each message text, ASCII, so characters = bytes",
                                                value_type=int, low=1, high=MAX_MESSAGE_BYTES))
    arrival: str = field(metadata=setting('"poisson" (exponential gaps) or "fixed" (equal gaps, a random phase '
                                          "per member)", value_type=str, choices=ARRIVALS))
    duration_s: int = field(metadata=setting("the whole run, warm-up included (Locust's --run-time)", value_type=int,
                                             low=1, high=7 * 24 * 3600))
    warmup_s: float = field(metadata=setting('the first part of the run, left out of the HDR histogram and named '
                                             '"[warm-up]" in Locust', value_type=float, low=0))
    join_deadline_s: float = field(default=30.0, metadata=setting(
        "the warm-up ends once every member has joined (and warmup_s has passed), at the latest this long after the "
        "start, and never later than halfway between warmup_s and duration_s; members still connecting then are "
        "counted (members_joined_late) and the row flagged", value_type=float, low=0))
    reconnect_every_s: float = field(default=0.0, metadata=setting(
        "each member leaves and rejoins (a new connection, resuming after the last id it saw) on average this often, "
        "at random (exponential gaps); 0: never", value_type=float, low=0))
    room_size: int = field(default=0, metadata=setting(
        "members per room: when > 0, rooms follows the users (rooms = users / room_size, rounded up), so a sweep "
        "of users adds rooms of this size instead of growing the rooms; 0: `rooms` as given", value_type=int,
        low=0, high=100_000))
    knobs: dict[str, object] = field(default_factory=dict)  # the transports' own keys, defaults filled in

    def __post_init__(self) -> None:
        for knob in COMMON:
            try:
                object.__setattr__(self, knob.name, knob.check(getattr(self, knob.name)))
            except ValueError as error:
                raise ProfileError(str(error)) from None
        if self.room_size:
            object.__setattr__(self, "rooms", -(-self.users // self.room_size))
        if self.rooms > self.users:
            raise ProfileError(f"rooms must not exceed users ({self.users}), got {self.rooms}: a room would be empty")
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

    def join_deadline(self) -> float:
        """Seconds from the start after which the measured window opens whether or not every member has joined:
        join_deadline_s, but at least warmup_s and at most halfway from warmup_s to duration_s (so a window of at
        least half its planned length remains)."""
        return max(self.warmup_s, min(self.join_deadline_s, (self.warmup_s + self.duration_s) / 2))

    def knob(self, name: str) -> object:
        """The value of a transport's profile key (its registered default when the file did not give it)."""
        return self.knobs[name]

    def room_for(self, member_index: int) -> str:
        """Return the room of the member-th member: members are dealt round-robin, so rooms differ by at most one."""
        return f"room-{member_index % self.rooms}"

    def room_sizes(self) -> list[int]:
        """The members of each room at full load (round robin: they differ by at most one)."""
        small, extra = divmod(self.users, self.rooms)
        return [small + 1] * extra + [small] * (self.rooms - extra)

    def offered_deliveries_per_s(self) -> float:
        """The deliveries per second this profile asks for: each member's sends reach every other member of its
        room (the DELIVER count; a member's own echo is not one), rooms at full load."""
        return self.messages_per_second * sum(n * (n - 1) for n in self.room_sizes())

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


COMMON = field_knobs(Profile)  # the keys every profile holds, declared on the fields above
COMMON_KEYS: tuple[str, ...] = tuple(knob.name for knob in COMMON)


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
    missing = [knob.name for knob in COMMON if knob.required and knob.name not in data]
    if missing:
        raise ProfileError(f"{source}: missing key {missing[0]!r}")
    try:
        return Profile(**{k: data[k] for k in COMMON_KEYS if k in data}, knobs={k: v for k, v in data.items() if k not in COMMON_KEYS})
    except ProfileError as error:
        raise ProfileError(f"{source}: {error}") from None


def load_profile(path: str | Path) -> Profile:
    """Read and validate the TOML profile at `path`."""
    return profile_from_dict(read_toml(Path(path), ProfileError, "profile"), str(path))
