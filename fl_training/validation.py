"""Checks of loosely typed parameter values, with messages that name the parameter.

Values may come from a command line, a Flower run config, a web form or a JSON
API: numbers may arrive as floats (``3.0``) or numpy scalars. Every check
returns the value in its proper Python type or raises
:class:`InvalidParameterError` saying what was wrong and what would be valid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


class InvalidParameterError(ValueError):
    """A parameter is out of range or of the wrong type; the message names it and its valid values."""


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def whole_number(name: str, value: Any, low: int, high: int) -> int:
    """Return ``value`` as an int if it is a whole number in ``[low, high]``.

    Parameters
    ----------
    name : str
        Parameter name used in the error message.
    value : Any
        Candidate (floats such as ``3.0`` are accepted; bools, NaN, infinity
        and strings are not).
    low, high : int
        Inclusive bounds.

    Returns
    -------
    int
        The value.

    Raises
    ------
    InvalidParameterError
        If it is not a finite whole number within the bounds.
    """
    if not (_is_real(value) and math.isfinite(value) and int(value) == value and low <= value <= high):
        raise InvalidParameterError(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
    return int(value)


def real_number(name: str, value: Any, low: float, high: float) -> float:
    """Return ``value`` as a float if it is finite and in ``[low, high]``.

    Parameters
    ----------
    name : str
        Parameter name used in the error message.
    value : Any
        Candidate (bools, NaN, infinity and strings are refused).
    low, high : float
        Inclusive bounds.

    Returns
    -------
    float
        The value.

    Raises
    ------
    InvalidParameterError
        If it is not a finite number within the bounds.
    """
    if not (_is_real(value) and math.isfinite(value) and low <= value <= high):
        raise InvalidParameterError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}.")
    return float(value)


def one_of(name: str, value: Any, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``.

    Parameters
    ----------
    name : str
        Parameter name used in the error message.
    value : Any
        Candidate.
    choices : sequence of str
        The accepted values, in the order the message lists them.

    Returns
    -------
    str
        The value.

    Raises
    ------
    InvalidParameterError
        If it is not among ``choices``.
    """
    if not isinstance(value, str) or value not in choices:
        raise InvalidParameterError(f"{name} must be one of {', '.join(choices)}, got {value!r}.")
    return value
