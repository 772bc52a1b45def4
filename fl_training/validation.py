"""Constraints on loosely typed settings, with messages that name the setting.

Values may come from a command line, a Flower run config, a web form or a JSON
API: numbers may arrive as floats (``3.0``) or numpy scalars. A module that owns
some settings declares them once in a table of constraints (as scikit-learn's
estimators declare ``_parameter_constraints``) and checks a request against it
once, where the request comes in; sliders, the command line and the docs read
their bounds from the same table. A check returns the value in its proper Python
type or raises :class:`SettingError` saying what was wrong and what would be valid.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class SettingError(ValueError):
    """A setting is out of range or of the wrong type; the message names it and its valid values."""


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


class Constraint(Protocol):
    """What every entry of a constraints table does."""

    def check(self, name: str, value: Any) -> Any:
        """Return ``value`` in its proper type, or raise :class:`SettingError` naming ``name``."""


@dataclass(frozen=True)
class Whole:
    """A whole number in ``[low, high]`` (``3.0`` is accepted; bools, NaN, infinity and strings are not).

    ``advice`` is added to the message, e.g. what a good value would be.
    """

    low: int
    high: int
    advice: str = ""

    def check(self, name: str, value: Any) -> int:
        if not (_is_real(value) and math.isfinite(value) and int(value) == value
                and self.low <= value <= self.high):
            raise SettingError(_message(
                f"{name} must be a whole number from {self.low} to {self.high}, got {value!r}.", self.advice))
        return int(value)


@dataclass(frozen=True)
class Real:
    """A finite number in ``[low, high]``."""

    low: float
    high: float
    advice: str = ""

    def check(self, name: str, value: Any) -> float:
        if not (_is_real(value) and math.isfinite(value) and self.low <= value <= self.high):
            raise SettingError(_message(
                f"{name} must be a number from {self.low:g} to {self.high:g}, got {value!r}.", self.advice))
        return float(value)


@dataclass(frozen=True)
class OneOf:
    """One of ``choices`` (strings, listed in this order by the message)."""

    choices: tuple[str, ...]

    def check(self, name: str, value: Any) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise SettingError(f"{name} must be one of {', '.join(self.choices)}, got {value!r}.")
        return value


@dataclass(frozen=True)
class Text:
    """A string of at most ``max_length`` characters, without control characters (e.g. a path)."""

    max_length: int

    def check(self, name: str, value: Any) -> str:
        if not isinstance(value, str) or len(value) > self.max_length or not value.isprintable():
            raise SettingError(f"{name} must be text of at most {self.max_length} printable characters, "
                               f"got {value!r:.80}.")
        return value


@dataclass(frozen=True)
class Flag:
    """``True`` or ``False`` (numpy bools too; not 0/1, not strings)."""

    def check(self, name: str, value: Any) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            raise SettingError(f"{name} must be true or false, got {value!r}.")
        return bool(value)


def bound_from_env(variable: str, default: int, unit: str = "") -> int:
    """A work bound a run on one's own machine may raise: ``$variable`` if set, else ``default``.

    ``unit`` (e.g. ``"sample-epochs"``) names what the bound counts, in the error message.

    Raises
    ------
    ValueError
        If the variable is set to anything but a positive whole number.
    """
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ValueError(
            f"{variable} must be a positive whole number{' of ' + unit if unit else ''} (the default is "
            f"{default}), got {raw[:40]!r}."
        )
    return int(raw)


def _message(text: str, advice: str) -> str:
    return f"{text} {advice}" if advice else text


def check_settings(constraints: Mapping[str, Constraint], values: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``values`` against a table of constraints.

    Parameters
    ----------
    constraints : mapping of str to Constraint
        The settings a module owns.
    values : mapping
        Candidate values by name; names outside the table are refused.

    Returns
    -------
    dict
        The values in their proper types.

    Raises
    ------
    SettingError
        Naming the first unknown or invalid setting and its valid values.
    """
    unknown = sorted(set(values) - set(constraints))
    if unknown:
        raise SettingError(
            f"Unknown setting {', '.join(map(repr, unknown))}; use any of {', '.join(constraints)}."
        )
    return {name: constraints[name].check(name, value) for name, value in values.items()}


def whole_number(name: str, value: Any, low: int, high: int) -> int:
    """Return ``value`` as an int if it is a whole number in ``[low, high]`` (bounds known at run time)."""
    return Whole(low, high).check(name, value)


def one_of(name: str, value: Any, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices`` (a choice known only at run time)."""
    return OneOf(tuple(choices)).check(name, value)
