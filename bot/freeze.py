"""Freeze windows per environment and the times people type: when a deploy may not start."""

from __future__ import annotations

import re
import datetime as dt
from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from bot.errors import InputError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WEEKLY_RE = re.compile(r"^(?P<day>[a-z]{3})[a-z]*\s+(?P<h>\d{1,2}):(?P<m>\d{2})$")
CLOCK_RE = re.compile(r"^(?P<h>\d{1,2}):(?P<m>\d{2})$")
# Far-off times are typos, and near year 9999 every time-zone conversion overflows.
MAX_AHEAD = timedelta(days=366)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name like Europe/Berlin)") \
            from None


def _weekly(text: str) -> tuple[int, time]:
    m = WEEKLY_RE.match(text.strip().lower())
    if not m or m.group("day") not in DAYS:
        raise ValueError(f"{text!r} is not 'DAY HH:MM' (like 'fri 16:00')")
    h, mi = int(m.group("h")), int(m.group("m"))
    if h > 23 or mi > 59:
        raise ValueError(f"{text!r}: no such time of day")
    return DAYS.index(m.group("day")), time(h, mi)


class FreezeWindow(BaseModel):
    """`{start: "fri 16:00", end: "mon 08:00"}` every week, or `{date: 2026-12-25}` all day."""

    model_config = ConfigDict(extra="forbid")
    start: str | None = None
    end: str | None = None
    date: dt.date | None = None
    reason: str = ""

    @field_validator("start", "end")
    @classmethod
    def _day_and_time(cls, v: str | None) -> str | None:
        if v is not None:
            _weekly(v)
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> "FreezeWindow":
        weekly = self.start is not None or self.end is not None
        if weekly and self.date is not None:
            raise ValueError("give either start/end (weekly) or date (one day), not both")
        if weekly and (self.start is None or self.end is None):
            raise ValueError("a weekly window needs both start and end")
        if weekly and _weekly(self.start) == _weekly(self.end):
            raise ValueError("start and end are the same time: the window would never end")
        if not weekly and self.date is None:
            raise ValueError("give start and end (like 'fri 16:00'), or a date")
        return self

    def describe(self) -> str:
        what = f"{self.date:%Y-%m-%d} (all day)" if self.date else f"{self.start} to {self.end}"
        return what + (f": {self.reason}" if self.reason else "")

    def until(self, at: datetime) -> datetime | None:
        """When the window that contains `at` (local time) ends; None when `at` is outside."""
        if self.date is not None:
            if at.date() == self.date:
                return datetime.combine(self.date + timedelta(days=1), time(0), at.tzinfo)
            return None
        assert self.start and self.end
        s_day, s_time = _weekly(self.start)
        e_day, e_time = _weekly(self.end)
        week = (at - timedelta(days=at.weekday())).date()  # this week's Monday
        for offset in (-7, 0):  # a window that began last week may still run
            begin = datetime.combine(week + timedelta(days=offset + s_day), s_time, at.tzinfo)
            length = ((e_day - s_day) % 7) * 86400 + (
                (e_time.hour - s_time.hour) * 3600 + (e_time.minute - s_time.minute) * 60)
            if length <= 0:
                length += 7 * 86400
            finish = begin + timedelta(seconds=length)
            if begin <= at < finish:
                return finish
        return None


def frozen(windows: list[FreezeWindow], at: datetime, tz: str) -> str | None:
    """Why `at` is inside a freeze window (with when it ends), or None."""
    local = at.astimezone(zone(tz))
    for w in windows:
        end = w.until(local)
        if end is not None:
            return f"freeze window {w.describe()} (until {end:%a %Y-%m-%d %H:%M} {tz})"
    return None


def parse_when(text: str, *, now: datetime, tz: str) -> datetime:
    """`22:00` (the next one in `tz`) or `2026-11-27T22:00` (in `tz` unless it says) -> UTC."""
    zone_ = zone(tz)
    local_now = now.astimezone(zone_)
    value = text.strip()
    m = CLOCK_RE.match(value)
    if m:
        h, mi = int(m.group("h")), int(m.group("m"))
        if h > 23 or mi > 59:
            raise InputError(f"{text!r} is not a time of day",
                             hint="hours 00-23, minutes 00-59: say HH:MM (the next one) or "
                                  "YYYY-MM-DDTHH:MM")
        at = local_now.replace(hour=h, minute=mi, second=0, microsecond=0)
        if at <= local_now:
            at += timedelta(days=1)
        return at.astimezone(timezone.utc)
    try:
        at = datetime.fromisoformat(value.replace(" ", "T"))
    except ValueError:
        raise InputError(f"{text!r} is not a time",
                         hint="say HH:MM (the next one) or YYYY-MM-DDTHH:MM") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=zone_)
    try:
        if at <= now:
            raise InputError(f"{text!r} ({at.astimezone(zone_):%Y-%m-%d %H:%M} {tz}) is in the "
                             "past", hint=f"it is {local_now:%Y-%m-%d %H:%M} {tz} now")
        if at - now > MAX_AHEAD:
            raise InputError(f"{text!r} is more than a year ahead",
                             hint="schedule deployments at most a year in advance")
        return at.astimezone(timezone.utc)
    except OverflowError:  # 9999-12-31T23:59-05:00 is after the last UTC time Python knows
        raise InputError(f"{text!r} is out of range",
                         hint="give a time between now and the year 9999") from None


def local(at: datetime, tz: str) -> str:
    shown = at.astimezone(zone(tz))
    return shown.strftime("%a %Y-%m-%d %H:%M:%S" if shown.second else "%a %Y-%m-%d %H:%M") \
        + f" {tz}"
