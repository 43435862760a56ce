"""Finds chain plugins through the `custody.chains` entry-point group.

A distribution declares, in its pyproject.toml:

    [project.entry-points."custody.chains"]
    bitcoin = "chains.bitcoin.plugin:BitcoinChain"

and `load("bitcoin")` returns that class. Nothing is imported until asked
for, so one broken third-party plugin can't stop the others from loading.
"""
from __future__ import annotations

from importlib.metadata import entry_points

from chains.base import ChainPlugin

GROUP = "custody.chains"


class UnknownChain(LookupError):
    pass


def available() -> list[str]:
    """Names of every installed chain plugin, sorted."""
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def load(name: str) -> type[ChainPlugin]:
    """The plugin class registered under name. Raises UnknownChain if none is,
    TypeError if what is registered is not a ChainPlugin."""
    matches = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not matches:
        raise UnknownChain(f"no chain plugin named {name!r} is installed (installed: {', '.join(available()) or 'none'})")
    if len({ep.value for ep in matches}) > 1:
        raise UnknownChain(f"chain plugin {name!r} is registered by more than one distribution: "
                           + ", ".join(sorted(ep.value for ep in matches)))
    cls = matches[0].load()
    if not (isinstance(cls, type) and issubclass(cls, ChainPlugin)):
        raise TypeError(f"entry point {name} = {matches[0].value} is not a chains.base.ChainPlugin subclass")
    if getattr(cls, "name", None) != name:
        raise TypeError(f"entry point {name} = {matches[0].value} has name {getattr(cls, 'name', None)!r}")
    return cls


def create(name: str, settings) -> ChainPlugin:
    """An instance of the plugin for one configured chain."""
    return load(name)(settings)
