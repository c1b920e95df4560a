"""Settings declared once: a `Knob` says a setting's name, default, bounds and help, and the CLI flags, their
validation and an experiment's `[server]` keys are all derived from it. Transports declare theirs in their
registry entries; the server's own are the fields of ServerConfig and Limits, declared with `setting()`."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Value = bool | int | float | str | tuple | None


@dataclass(frozen=True, slots=True)
class Knob:
    """One setting with its default and bounds: the server's own, a transport's server flag (and `[server]` key),
    or a transport's load-profile key.

    The name is the key in an experiment file or a profile, and `--name-with-dashes` is its CLI flag unless
    `flag` says otherwise (flags that predate the declaration keep their spelling).
    """

    name: str
    default: Value
    help: str
    low: float | None = None  # inclusive, unless low_open
    high: float | None = None  # inclusive
    low_open: bool = False
    flag: str | None = None
    label: str = ""  # how a plot's axis names it, unit included (default: the name)
    phrase: str = ""  # how a one-line description of a load says it, e.g. "poll every {:g} s"
    value_type: type | None = None  # when the default does not say it (a default of None: bool | None)
    experiment: bool = True  # may an experiment's [server] table set it (the runner sets host, port, ...)
    choices: tuple = ()  # the values it may take, when they are few
    required: bool = False  # no default: a file must give it
    # A last check of the typed value, where type and bounds do not say enough (each item an IP address, say):
    # returns the value, or raises ValueError saying what is wrong.
    validate: Callable[[Value], Value] | None = dataclasses.field(default=None, compare=False)

    @property
    def kind(self) -> type:
        return self.value_type or type(self.default)

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def check(self, value: object) -> Value:
        """Return `value` as this knob's type, or raise ValueError naming the knob and the bound."""
        checked = self._typed(value)
        if self.validate is None or checked is None:
            return checked
        try:
            return self.validate(checked)
        except ValueError as error:
            raise ValueError(f"{self.name}: {error}") from None

    def _typed(self, value: object) -> Value:
        kind = self.kind
        if value is None and self.default is None and not self.required:
            return None
        if self.choices:
            if value not in self.choices:
                raise ValueError(f"{self.name} must be one of {', '.join(map(repr, self.choices))}, got {value!r}")
            return value
        if kind is tuple:
            if isinstance(value, str) or not isinstance(value, (list, tuple)) or \
                    not all(isinstance(item, str) for item in value):
                raise ValueError(f"{self.name} must be a list of strings, got {value!r}")
            return tuple(value)
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{self.name} must be true or false, got {value!r}")
            return value
        if kind is str:
            if not isinstance(value, str):
                raise ValueError(f"{self.name} must be a string, got {value!r}")
            return value
        # bool is an int in Python; `interval = true` is a mistake, not 1.
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{self.name} must be an integer, got {value!r}")
        if kind is float:  # an integer is a number too, and keeps the type it was written with
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{self.name} must be a finite number, got {value!r}")
        low, high = self.low, self.high
        too_low = low is not None and (value <= low if self.low_open else value < low)
        if too_low or (high is not None and value > high):
            lower = "" if low is None else (f"more than {_number(low)}" if self.low_open else f"at least {_number(low)}")
            upper = "" if high is None else f"at most {_number(high)}"
            raise ValueError(f"{self.name} must be {' and '.join(p for p in (lower, upper) if p)}, got {value}")
        return value

    def cli_args(self, value: Value) -> list[str]:
        """The `python -m servers` arguments that set this knob to `value`."""
        if self.kind is bool:
            return [self.cli_flag if value else "--no-" + self.cli_flag[2:]]
        if self.kind is tuple:
            return [arg for item in value for arg in (self.cli_flag, item)]
        return [self.cli_flag, str(value)]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


SETTING = "rtlab_setting"  # the dataclass field metadata key setting() fills


def setting(help: str, **options: Any) -> dict:
    """Field metadata declaring a setting: `field(default=..., metadata=setting("what it is", low=1))`."""
    return {SETTING: (help, options)}


def field_knobs(cls: type) -> list[Knob]:
    """The Knobs a dataclass's fields declare with setting(), in field order (a field without a default is
    required; its setting() then says its value_type)."""
    knobs = []
    for f in dataclasses.fields(cls):
        if SETTING not in f.metadata:
            continue
        help_text, options = f.metadata[SETTING]
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default, options = None, {"required": True, **options}
        knobs.append(Knob(f.name, default, help_text, **options))
    return knobs


def read_toml(path: Path, error: type[Exception], what: str) -> dict:
    """Read the TOML file at `path`; a missing or malformed file raises `error`, naming the file."""
    try:
        with Path(path).open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise error(f"{path}: no such {what} file") from None
    except tomllib.TOMLDecodeError as problem:
        raise error(f"{path}: not valid TOML: {problem}") from None
