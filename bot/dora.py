"""DORA figures from the store's rows (Store.dora_rows): a pure function with an injected `now`.

What counts (also in the README, "DORA figures and exports"):
- A deployment belongs to the window when it *finished* in [since, now].
- Deployment frequency: deploy requests (not manual rollbacks, not dry runs) that succeeded.
- Change failure rate: of the deploys that reached the backend (went through `deploying`) and
  finished, those that failed, were rolled back (automatically or failed to), were interrupted,
  or that succeeded and were rolled back by hand within ROLLBACK_SOON of finishing, before the
  next deploy of that service. Hotfixes are not told apart from ordinary deploys.
- Time to restore: from the failure (the failed deployment's end; the manual rollback's start)
  to the end of the next successful deployment (deploy or rollback) of that service in that
  environment. Failures with none yet are counted as not restored.
- Lead time: each change (ticket, service, environment) once, at its first successful deploy;
  from the ticket's readiness for production (the tracker's time when it gave one, else the
  first time deploybot saw it ready) and from its creation (the tracker's time).
- Median: the middle value (mean of the two middle ones); p90: nearest rank.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from typing import Any, Iterable, Iterator

from bot.errors import InputError

ROLLBACK_SOON = timedelta(hours=24)
FINISHED = {"succeeded", "failed", "rolled_back", "rollback_failed", "interrupted"}
_SPAN = re.compile(r"(?P<n>[1-9][0-9]{0,5})(?P<unit>[hdw])")
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


def production_environments(config) -> list[str]:
    """What the figures cover by default: the environments marked `production: true` (or named
    production); every environment when none is."""
    marked = [name for name, env in config.environments.items()
              if env.production or name == "production"]
    return marked or list(config.environments)


def parse_since(text: str, now: datetime) -> datetime:
    """`7d`, `12h`, `2w` before `now`, or an ISO date/time (UTC unless it says otherwise)."""
    value = text.strip()
    m = _SPAN.fullmatch(value)
    if m:
        try:
            return now - int(m.group("n")) * _UNITS[m.group("unit")]
        except OverflowError:
            raise InputError(f"--since {text!r} reaches before year 1") from None
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            start = datetime.combine(datetime.fromisoformat(value).date(), time(), timezone.utc)
        else:
            start = datetime.fromisoformat(value)
            if start.tzinfo is None:
                start = start.replace(tzinfo=timezone.utc)
    except ValueError:
        raise InputError(f"--since {text!r} is neither a span nor an ISO date",
                         hint="like 30d, 12h, 2w, 2026-11-01 or 2026-11-01T08:00Z") from None
    if start >= now:
        raise InputError(f"--since {text!r} is not in the past")
    return start


@dataclass
class Spread:
    """Durations in seconds: how many, median, p90."""

    count: int = 0
    median: float | None = None
    p90: float | None = None

    @classmethod
    def of(cls, seconds: list[float]) -> "Spread":
        if not seconds:
            return cls()
        ordered = sorted(seconds)
        return cls(len(ordered), statistics.median(ordered),
                   ordered[math.ceil(0.9 * len(ordered)) - 1])


@dataclass
class Figures:
    since: datetime
    until: datetime
    environments: list[str] | None  # None: every environment
    service: str | None
    deployments: int = 0
    per_day: float = 0.0
    per_week: float = 0.0
    ready_to_deployed: Spread = field(default_factory=Spread)
    ready_from_tracker: int = 0
    ready_first_seen: int = 0
    created_to_deployed: Spread = field(default_factory=Spread)
    without_ticket_times: int = 0
    changes: int = 0  # deploys that reached the backend and finished
    failures: dict[str, int] = field(default_factory=dict)  # why -> how many
    restore: Spread = field(default_factory=Spread)
    not_restored: int = 0

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def failure_rate(self) -> float | None:
        return self.failed / self.changes if self.changes else None


def compute(rows: Iterable[dict[str, Any]], *, now: datetime, since: datetime,
            environments: Iterable[str] | None = None, service: str | None = None) -> Figures:
    envs = sorted(environments) if environments is not None else None
    rows = sorted((r for r in rows if (envs is None or r["environment"] in envs)
                   and (service is None or r["service"] == service)), key=lambda r: r["id"])
    fig = Figures(since=since, until=now, environments=envs, service=service)

    def in_window(r: dict[str, Any]) -> bool:
        return r["finished_at"] is not None and since <= r["finished_at"] <= now

    # scans go forward from a row on its own service and environment only: they stay short
    by_target: dict[tuple[str, str], list[dict[str, Any]]] = {}
    place: dict[int, tuple[list[dict[str, Any]], int]] = {}
    for r in rows:
        same = by_target.setdefault((r["service"], r["environment"]), [])
        place[r["id"]] = same, len(same)
        same.append(r)

    def later(r: dict[str, Any], *, including: bool = False) -> Iterator[dict[str, Any]]:
        same, i = place[r["id"]]
        return (same[j] for j in range(i if including else i + 1, len(same)))

    deploys = [r for r in rows if r["kind"] == "deploy"]
    shipped = [r for r in deploys if r["status"] == "succeeded" and r["finished_at"]]
    counted = [r for r in shipped if in_window(r)]
    fig.deployments = len(counted)
    days = (now - since).total_seconds() / 86400
    fig.per_day = fig.deployments / days
    fig.per_week = fig.per_day * 7

    _lead_times(fig, shipped, in_window)

    restores: list[float] = []
    for r in deploys:
        if not (r["reached_backend"] and r["status"] in FINISHED and in_window(r)):
            continue
        fig.changes += 1
        # the fix is a later successful deployment: the manual rollback itself counts
        why, failed_at, candidates = r["status"], r["finished_at"], later(r)
        if why == "succeeded":
            rollback = _manual_rollback(r, later(r))
            if rollback is None:
                continue
            why, failed_at = "rolled back by hand", rollback["created_at"]
            candidates = later(rollback, including=True)
        fig.failures[why] = fig.failures.get(why, 0) + 1
        fixed = next((n for n in candidates if n["status"] == "succeeded"
                      and n["reached_backend"] and n["finished_at"]
                      and n["finished_at"] >= failed_at), None)
        if fixed is None or fixed["finished_at"] > now:
            fig.not_restored += 1
        else:
            restores.append((fixed["finished_at"] - failed_at).total_seconds())
    fig.restore = Spread.of(restores)
    return fig


def _manual_rollback(r: dict[str, Any], after: Iterator[dict[str, Any]]) -> dict[str, Any] | None:
    """A rollback of r's service requested soon after r, before the next deploy of it."""
    n = next((n for n in after if n["reached_backend"]), None)
    if n is None or n["kind"] == "deploy" or n["created_at"] - r["finished_at"] > ROLLBACK_SOON:
        return None
    return n


def _lead_times(fig: Figures, shipped: list[dict[str, Any]], in_window) -> None:
    firsts: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in sorted(shipped, key=lambda r: r["finished_at"]):
        if r["ticket_id"] and r["ticket_id"] != "none":
            firsts.setdefault((r["ticket_id"], r["service"], r["environment"]), r)
    ready, created = [], []
    for r in firsts.values():
        if not in_window(r):
            continue
        start = r["ticket_ready_at"] or r["ticket_first_seen_ready_at"]
        if start is None and r["ticket_created_at"] is None:
            fig.without_ticket_times += 1
            continue
        if start is not None and start <= r["finished_at"]:
            ready.append((r["finished_at"] - start).total_seconds())
            if r["ticket_ready_at"]:
                fig.ready_from_tracker += 1
            else:
                fig.ready_first_seen += 1
        if r["ticket_created_at"] is not None and r["ticket_created_at"] <= r["finished_at"]:
            created.append((r["finished_at"] - r["ticket_created_at"]).total_seconds())
    fig.ready_to_deployed, fig.created_to_deployed = Spread.of(ready), Spread.of(created)


def iso_utc(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def as_dict(fig: Figures) -> dict[str, Any]:
    """The --json form: stable field names, seconds, ISO-8601 UTC."""
    def spread(s: Spread) -> dict[str, Any]:
        return {"changes": s.count, "median_seconds": s.median, "p90_seconds": s.p90}

    return {
        "window": {"since": iso_utc(fig.since), "until": iso_utc(fig.until),
                   "days": round((fig.until - fig.since).total_seconds() / 86400, 4)},
        "filters": {"environments": fig.environments, "service": fig.service},
        "deployment_frequency": {"deployments": fig.deployments,
                                 "per_day": round(fig.per_day, 4),
                                 "per_week": round(fig.per_week, 4)},
        "lead_time": {
            "ready_to_deployed": {**spread(fig.ready_to_deployed),
                                  "ready_from_tracker": fig.ready_from_tracker,
                                  "ready_first_seen_by_deploybot": fig.ready_first_seen},
            "created_to_deployed": spread(fig.created_to_deployed),
            "without_ticket_times": fig.without_ticket_times},
        "change_failure_rate": {"deployments": fig.changes, "failed": fig.failed,
                                "rate": None if fig.failure_rate is None
                                else round(fig.failure_rate, 4),
                                "failures_by_reason": dict(sorted(fig.failures.items()))},
        "time_to_restore": {"failures": fig.failed, "restored": fig.restore.count,
                            "not_restored": fig.not_restored,
                            "median_seconds": fig.restore.median},
    }


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    minutes = round(seconds / 60)
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    parts = [f"{days}d"] * bool(days) + [f"{hours}h"] * bool(hours) + [f"{mins}m"] * bool(mins)
    return " ".join(parts[:2]) or "0m"


def as_lines(fig: Figures) -> list[str]:
    """What a person reads (terminal and App Home): each figure says what it counts."""
    where = ", ".join(fig.environments) if fig.environments is not None else "every environment"
    what = f"{fig.service} in {where}" if fig.service else where
    rate = "n/a" if fig.failure_rate is None else f"{fig.failure_rate:.0%}"
    reasons = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in sorted(fig.failures.items()))
    ready, created = fig.ready_to_deployed, fig.created_to_deployed
    return [
        f"DORA figures for {what}, {fig.since:%Y-%m-%d %H:%M} to {fig.until:%Y-%m-%d %H:%M} UTC",
        f"Deployment frequency: {fig.deployments} successful deploy(s), "
        f"{fig.per_day:.2f}/day, {fig.per_week:.2f}/week (manual rollbacks and dry runs not "
        "counted)",
        f"Lead time, ready for production -> deployed: median {duration(ready.median)}, "
        f"p90 {duration(ready.p90)} over {ready.count} change(s) (ready time from the tracker "
        f"for {fig.ready_from_tracker}, first seen ready by deploybot for {fig.ready_first_seen})",
        f"Lead time, ticket created -> deployed: median {duration(created.median)}, "
        f"p90 {duration(created.p90)} over {created.count} change(s)"
        + (f"; {fig.without_ticket_times} without ticket times" if fig.without_ticket_times
           else ""),
        f"Change failure rate: {rate} ({fig.failed} of {fig.changes} deploy(s) that reached the "
        "backend" + (f": {reasons}" if reasons else "") + ")",
        f"Time to restore: median {duration(fig.restore.median)} over {fig.restore.count} "
        f"restored failure(s); {fig.not_restored} not restored yet",
    ]
