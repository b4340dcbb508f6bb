"""Rules and attacks named by import path: ``"package.module:function"``.

A config may name a user's own aggregator (``aggregator.name``) or attack (``attack.name``) by the
import path of a function; the registries (:func:`brmtrl.aggregators.resolve_rule`,
:func:`brmtrl.attacks.resolve_attack`) import it the first time the name is used and register it.
This module only finds the function; it imports nothing of brmtrl. Errors are :class:`PluginError`
with one line that says what is wrong (the config check adds the key).
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any, Callable, Mapping, TypeVar

from .errors import PluginError

__all__ = ["PluginError", "is_plugin", "keyword_parameters", "load_callable", "load_object", "positional_arity",
           "resolve_registered"]

_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


def is_plugin(name: Any) -> bool:
    """Whether ``name`` has the form ``package.module:function``."""
    return isinstance(name, str) and bool(_PATH.match(name))


def load_callable(name: str) -> Callable[..., Any]:
    """Import ``package.module`` and return its ``function``."""
    fn = load_object(name)
    if not callable(fn):
        raise PluginError(f"{name!r} is a {type(fn).__name__}, not a function")
    return fn


def load_object(name: str) -> Any:
    """Import ``package.module`` and return its attribute ``name`` (a function, or a declared object)."""
    if not is_plugin(name):
        raise PluginError(f"{name!r} is not of the form 'package.module:function'")
    module_name, attr = name.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any failure to import is the user's to see, in one line
        raise PluginError(f"cannot import module {module_name!r} of {name!r} ({type(exc).__name__}: {exc}); "
                          "is its folder on PYTHONPATH?") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise PluginError(f"module {module_name!r} has no {attr!r} (from {name!r})")
    return fn


def positional_arity(fn: Callable[..., Any], name: str, *, keywords: tuple[str, ...] = ()) -> set[str]:
    """Check that ``fn`` takes one positional argument (the stacked updates, or an update) and that every
    other parameter it requires is among ``keywords``; return which of ``keywords`` it accepts."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return set()
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not positional and not any(p.kind == p.VAR_POSITIONAL for p in params):
        raise PluginError(f"{name!r} must take the updates as its first argument; its signature is {sig}")
    rest = [p for p in params[1:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    missing = [p.name for p in rest if p.default is p.empty and p.name not in keywords]
    if missing:
        raise PluginError(f"{name!r} requires {', '.join(map(repr, missing))}, which brmtrl cannot pass (it passes "
                          f"{', '.join(map(repr, keywords)) or 'nothing'}); give it a default")
    accepts_any = any(p.kind == p.VAR_KEYWORD for p in params)
    return {k for k in keywords if accepts_any or k in sig.parameters}


def keyword_parameters(fn: Callable[..., Any]) -> set[str]:
    """The parameters of ``fn`` after its first that have a default (a config may set them)."""
    try:
        params = list(inspect.signature(fn).parameters.values())[1:]
    except (TypeError, ValueError):
        return set()
    return {p.name for p in params if p.default is not p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


T = TypeVar("T")


def resolve_registered(registry: Mapping[str, T], name: str, build: Callable[[Any], T],
                       unknown: Callable[[], Exception], *, load: Callable[[str], Any] = load_callable) -> T:
    """The entry of ``registry`` named ``name``. A ``"package.module:function"`` name is imported the first
    time (``load``) and ``build(obj)`` registers it, unless importing the module registered a richer entry
    under that name itself; any other unknown name raises ``unknown()``. Every registry of brmtrl (rules,
    pre-aggregation steps, attacks, local update rules) resolves its names this way."""
    if name in registry:
        return registry[name]
    if not is_plugin(name):
        raise unknown()
    obj = load(name)
    if name in registry:
        return registry[name]
    return build(obj)
