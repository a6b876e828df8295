"""Declared settings: each with its default, what it means and the values it may take, written once.

A configuration dataclass declares its fields with `setting(...)`; `declared_settings` reads them back as
`SettingSpec` rows and `check_settings` validates an instance against them. The engine's `SegmenterConfig`
is declared this way, and the ROS node's parameter table, `config/seem.yaml` and the README's parameter
table are generated from it (`seem_ros.ros.parameters`). No ROS imports here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

SettingValue = bool | int | float | str | tuple[str, ...]

_SPEC_KEY = "seem_ros.setting"


@dataclass(frozen=True)
class SettingSpec:
    """One documented setting. At most one of float_range, int_range, choices, pattern is set.

    name: the field (and ROS parameter) name. default: its value when not given. description: one sentence
    for users. float_range / int_range: inclusive (low, high). choices: the allowed strings. pattern: a
    regular expression the whole string must match.
    """

    name: str
    default: SettingValue | list[str]
    description: str
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None
    choices: tuple[str, ...] | None = None
    pattern: str | None = None

    def check(self, value: Any) -> str | None:
        """The reason `value` is refused, or None."""
        if self.float_range is not None and not self.float_range[0] <= value <= self.float_range[1]:
            return f"must be in [{self.float_range[0]}, {self.float_range[1]}]"
        if self.int_range is not None and not self.int_range[0] <= value <= self.int_range[1]:
            return f"must be in [{self.int_range[0]}, {self.int_range[1]}]"
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}"
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return f"must match {self.pattern}"
        return None

    def allowed(self) -> str:
        """The allowed values in words for documentation ("Range [0.0, 1.0]." or "One of a, b."); "" if
        any value of the type is allowed or only a pattern restricts it."""
        if self.float_range is not None or self.int_range is not None:
            low, high = self.float_range or self.int_range
            return f"Range [{low}, {high}]."
        if self.choices is not None:
            return f"One of {', '.join(self.choices)}."
        return ""

    def documentation(self) -> str:
        """The description followed by the allowed values."""
        return " ".join(part for part in (self.description, self.allowed()) if part)


def setting(
    default: SettingValue,
    description: str,
    *,
    float_range: tuple[float, float] | None = None,
    int_range: tuple[int, int] | None = None,
    choices: tuple[str, ...] | None = None,
    pattern: str | None = None,
) -> Any:  # noqa: ANN401 - a dataclass field, typed as its value by the dataclass annotation
    """A dataclass field declared with its documentation and allowed values (see `SettingSpec`)."""
    limits = {"float_range": float_range, "int_range": int_range, "choices": choices, "pattern": pattern}
    if sum(value is not None for value in limits.values()) > 1:
        raise ValueError(f"a setting takes at most one of {', '.join(limits)}; got {limits}")
    return field(default=default, metadata={_SPEC_KEY: {"description": description, **limits}})


def declared_settings(config_class: type) -> tuple[SettingSpec, ...]:
    """The settings of a dataclass declared with `setting(...)`, in field order."""
    return tuple(
        SettingSpec(item.name, item.default, **item.metadata[_SPEC_KEY])
        for item in fields(config_class)
        if _SPEC_KEY in item.metadata
    )


def check_settings(config: Any) -> None:  # noqa: ANN401 - any dataclass declared with `setting(...)`
    """Raise ValueError naming the first field of `config` whose value its declaration refuses."""
    for spec in declared_settings(type(config)):
        value = getattr(config, spec.name)
        reason = spec.check(value)
        if reason is not None:
            raise ValueError(f"{spec.name} = {value!r} {reason}. {spec.description}")
