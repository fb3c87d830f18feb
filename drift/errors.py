"""The project's error for bad input and its one-line check; imported by every layer, imports nothing.

Every message names the field, the value and the rule: ``train.lr=-1.0: must be > 0``.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A config value breaks a rule. The message names the field, the value and the rule."""


def fail(field_name: str, value: Any, rule: str) -> None:
    """Raise ConfigError('<field>=<value!r>: <rule>')."""
    raise ConfigError(f"{field_name}={value!r}: {rule}")


def check(cond: bool, field_name: str, value: Any, rule: str) -> None:
    """fail(field_name, value, rule) unless ``cond``."""
    if not cond:
        fail(field_name, value, rule)
