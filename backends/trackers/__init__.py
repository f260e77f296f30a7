"""Tracker adapters. Wiring does `KINDS[kind](settings, os.environ)`; "local" is added there."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

from bot.ports import Tracker

Builder = Callable[..., Tracker]  # (settings, environ, **Http seams: transport, sleep, now)


def _builder(module: str, name: str) -> Builder:
    """The adapter's module (and httpx) loads when a tracker of its kind is built: the
    embedded tracker and `deploybot --help` do without them."""
    def build(settings: Mapping[str, Any], environ: Mapping[str, str], **seams: Any) -> Tracker:
        adapter = getattr(importlib.import_module(f"backends.trackers.{module}"), name)
        return adapter(settings, environ, **seams)
    return build


KINDS: dict[str, Builder] = {
    "jira-cloud": _builder("jira", "build_cloud"),
    "jira-dc": _builder("jira", "build_dc"),
    "github": _builder("github", "build"),
    "gitlab": _builder("gitlab", "build"),
    "linear": _builder("linear", "build"),
    "redmine": _builder("redmine", "build"),
}
