"""Tracker adapters. Wiring does `KINDS[kind](settings, os.environ)`; "local" is added there."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

from bot.ports import Tracker

Builder = Callable[[Mapping[str, Any], Mapping[str, str]], Tracker]


def _builder(module: str, name: str) -> Builder:
    """The adapter's module (and httpx) loads when a tracker of its kind is built: the
    embedded tracker and `deploybot --help` do without them."""
    def build(settings: Mapping[str, Any], environ: Mapping[str, str]) -> Tracker:
        return getattr(importlib.import_module(f"backends.trackers.{module}"), name)(settings, environ)
    return build


KINDS: dict[str, Builder] = {
    "jira-cloud": _builder("jira", "build_cloud"),
    "jira-dc": _builder("jira", "build_dc"),
    "github": _builder("github", "build"),
    "gitlab": _builder("gitlab", "build"),
    "linear": _builder("linear", "build"),
    "redmine": _builder("redmine", "build"),
}
