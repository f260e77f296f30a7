"""Tracker adapters. Wiring does `KINDS[kind](settings, os.environ)`; "local" is added there."""

from __future__ import annotations

from typing import Callable

from bot.ports import Tracker

from backends.trackers import github, gitlab, jira, linear, redmine

Builder = Callable[..., Tracker]  # (settings, environ, **Http seams: transport, sleep, now)

KINDS: dict[str, Builder] = {
    "jira-cloud": jira.build_cloud,
    "jira-dc": jira.build_dc,
    "github": github.build,
    "gitlab": gitlab.build,
    "linear": linear.build,
    "redmine": redmine.build,
}
