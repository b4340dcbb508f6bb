"""Declared parameter constraints, in the manner of scikit-learn's ``_param_validation``: each says
whether a value is allowed (``check`` returns it, normalised, or raises :class:`TypeError`) and how to
say what is allowed (``describe``), so that one declaration gives both the check and the error a user
reads. :mod:`brmtrl.config` declares every key with one of these."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .plugin import is_plugin as is_plugin_name

__all__ = ["AnyOf", "Boolean", "Interval", "ListOf", "Named", "Options", "Text", "is_plugin_name"]


@dataclass(frozen=True)
class Interval:
    """A number of ``kind`` (int or float) in ``[low, high]``; ``closed`` says which ends are included."""

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"  # "both", "left", "right", "neither"

    def check(self, value: Any) -> Any:
        if isinstance(value, bool):
            raise TypeError
        if self.kind is int:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int):
                raise TypeError
        else:
            if not isinstance(value, (int, float)):
                raise TypeError
            value = float(value)
            if not math.isfinite(value):
                raise TypeError
        lo_ok = self.low is None or (
            value >= self.low if self.closed in ("both", "left") else value > self.low
        )
        hi_ok = self.high is None or (
            value <= self.high if self.closed in ("both", "right") else value < self.high
        )
        if not (lo_ok and hi_ok):
            raise TypeError
        return value

    def describe(self) -> str:
        lo = "-inf" if self.low is None else _fmt(self.low)
        hi = "inf" if self.high is None else _fmt(self.high)
        left = "[" if self.closed in ("both", "left") and self.low is not None else "("
        right = "]" if self.closed in ("both", "right") and self.high is not None else ")"
        return f"{'an int' if self.kind is int else 'a float'} in the range {left}{lo}, {hi}{right}"


@dataclass(frozen=True)
class Options:
    """One of a fixed set of strings."""

    values: tuple[str, ...]

    def check(self, value: Any) -> Any:
        if not isinstance(value, str) or value not in self.values:
            raise TypeError
        return value

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


@dataclass(frozen=True)
class Boolean:
    def check(self, value: Any) -> Any:
        if not isinstance(value, bool):
            raise TypeError
        return value

    def describe(self) -> str:
        return "a boolean (true or false)"


@dataclass(frozen=True)
class Text:
    """A string; ``pattern`` (a regex) restricts it, ``empty_ok`` allows "" (meaning unset)."""

    pattern: str | None = None
    what: str = "a string"
    empty_ok: bool = True

    def check(self, value: Any) -> Any:
        if not isinstance(value, str):
            raise TypeError
        if value == "" and self.empty_ok:
            return value
        if value == "" or (self.pattern and not re.fullmatch(self.pattern, value)):
            raise TypeError
        return value

    def describe(self) -> str:
        return self.what


@dataclass(frozen=True)
class Named:
    """A built-in name (``options``) or a plug-in's import path ``"package.module:function"`` (checked
    further once the config is read: the module must import and the function fit)."""

    options: tuple[Any, ...]

    def check(self, value: Any) -> Any:
        if value in self.options or is_plugin_name(value):
            return value
        raise TypeError

    def describe(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options) + " or 'package.module:function'"


@dataclass(frozen=True)
class AnyOf:
    """Satisfies one of several constraints (``aggregator.f``: an int >= 0 or "auto")."""

    choices: tuple[Any, ...]

    def check(self, value: Any) -> Any:
        for c in self.choices:
            try:
                return c.check(value)
            except TypeError:
                continue
        raise TypeError

    def describe(self) -> str:
        return " or ".join(c.describe() for c in self.choices)


@dataclass(frozen=True)
class ListOf:
    """A list whose items each satisfy ``item`` (``transfer.shots``: ints >= 1; ``aggregator.pre``: names),
    at least ``min_len`` long, without repeats when ``unique``. Returned as a list of checked items."""

    item: Any
    min_len: int = 0
    unique: bool = False

    def check(self, value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or len(value) < self.min_len:
            raise TypeError
        out = [self.item.check(v) for v in value]
        if self.unique and len(set(map(repr, out))) != len(out):
            raise TypeError
        return out

    def describe(self) -> str:
        words = ["a list of"] + ([f"at least {self.min_len}"] if self.min_len else []) + \
            (["distinct"] if self.unique else []) + [f"items, each {self.item.describe()}"]
        return " ".join(words)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)

