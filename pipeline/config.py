"""The building blocks of the settings: :class:`Duration` and :class:`Section`.

Every setting is a variable ``CXP_<NAME>``; settings are grouped in sections (Kafka, ClickHouse, one per
metric core, ...) whose variables share a prefix: the ``kafka`` section's field ``url`` is
``CXP_KAFKA_URL``. A field whose variable does not follow the prefix names it with ``Field(alias=...)``.
Durations are parsed once, here, into :class:`Duration`; code reads ``.ms`` or ``.seconds``.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict
from pydantic_core import core_schema

ENV_PREFIX = "CXP_"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
# The only names that go into generated SQL unquoted (database, cluster): checked once, for every caller.
SQL_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_identifier(what: str, name: str) -> str:
    """``name`` if it is a plain SQL identifier, else a ValueError that says what is allowed."""
    if not SQL_IDENTIFIER.fullmatch(name):
        raise ValueError(f"invalid {what} {name!r}: use letters, digits and _ (not starting with a digit)")
    return name


class Duration:
    """A span of time written as ``90s``, ``5m``, ``24h``, ``7d``, ``2w`` or ``250ms`` (a bare number is
    seconds). ``str()`` gives the text as written: window labels are that text."""

    __slots__ = ("ms", "text")

    def __init__(self, text: Union[str, int, float, "Duration"]):
        if isinstance(text, Duration):
            self.ms, self.text = text.ms, text.text
            return
        match = _DURATION.match(str(text))
        if not match or isinstance(text, bool):
            raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 24h, 7d)")
        self.ms = int(float(match.group(1)) * _UNIT_MS[match.group(2) or "s"])
        self.text = str(text).strip()

    @property
    def seconds(self) -> float:
        return self.ms / 1000

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Duration({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Duration) and other.ms == self.ms

    def __hash__(self) -> int:
        return hash(self.ms)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls, serialization=core_schema.plain_serializer_function_ser_schema(str))


def duration_ms(text: Union[str, int, float, Duration]) -> int:
    """Milliseconds of a duration text (for values that are not settings, e.g. command-line options)."""
    return Duration(text).ms


def positive(duration: Duration) -> Duration:
    """A field validator's check: above zero."""
    if duration.ms <= 0:
        raise ValueError(f"must be above 0, got {duration}")
    return duration


def split_list(value: Any) -> Any:
    """``a, b,c`` -> ["a", "b", "c"] for list settings given as one variable."""
    return [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else value


def distinct_windows(windows: list[Duration]) -> list[Duration]:
    """A field validator's check for a list of windows: at least one, each above 0, no two of one length
    (``1h,60m`` would export the same series under two labels)."""
    if not windows:
        raise ValueError("needs at least one window, e.g. 1h,24h,7d")
    for window in windows:
        positive(window)
    lengths = [window.ms for window in windows]
    twice = [str(w) for w in windows if lengths.count(w.ms) > 1]
    if twice:
        raise ValueError(f"{', '.join(twice)}: one window length listed twice; list each length once")
    return windows


Windows = Annotated[list[Duration], BeforeValidator(split_list), AfterValidator(distinct_windows)]
Names = Annotated[list[str], BeforeValidator(split_list)]


class Section(BaseModel):
    """A group of settings whose variables are ``CXP_<prefix><field>`` (or the field's alias)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True, validate_default=True)
    prefix: ClassVar[str] = ""

    @classmethod
    def env_name(cls, field_name: str) -> str:
        """The variable of one of this section's fields: ``ChurnSettings.env_name("high")`` is CXP_CHURN_HIGH.
        A check across fields names its variables with it, since its error belongs to no single field."""
        field = cls.model_fields[field_name]
        return ENV_PREFIX + (field.alias or cls.prefix + field_name).upper()

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Lower-case variable name without ``CXP_`` -> the key this section validates it under."""
        return {(field.alias or cls.prefix + name): (field.alias or name) for name, field in cls.model_fields.items()}
