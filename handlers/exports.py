"""Compliance exports and DORA figures at the terminal: `history --json|--csv`, `show ID --json`,
`events`, `stats`.

Field names are stable; times are ISO-8601 UTC (`...Z`); texts are as the store keeps them
(configured secrets already redacted on the way in). In CSV a text starting with = + - @ (or a
tab or carriage return) gets a leading ' so a spreadsheet shows it instead of running it.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import fields
from datetime import datetime
from typing import Any, Iterable

from bot.errors import InputError
from bot.models import CheckResult, Deployment, Gate
from handlers.lazy import Lazy

dora = Lazy("bot.dora")  # the figures' module: loaded by the commands that compute them

DEPLOYMENT_FIELDS = [f.name for f in fields(Deployment)
                     if f.name not in ("record", "thread_ref", "record_posted",
                                       "record_commented")]
EVENT_FIELDS = ["id", "at", "deployment_id", "actor", "kind", "detail", "via"]
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def plain(value: Any) -> Any:
    """A JSON-ready value: enums by value, times in ISO-8601 UTC."""
    if isinstance(value, datetime):
        return dora.iso_utc(value)
    return getattr(value, "value", value)


def deployment_fields(d: Deployment) -> dict[str, Any]:
    return {name: plain(getattr(d, name)) for name in DEPLOYMENT_FIELDS}


def event_fields(row: dict[str, Any]) -> dict[str, Any]:
    out = {name: row.get(name) for name in EVENT_FIELDS}
    out["at"] = dora.iso_utc(datetime.fromisoformat(row["at"]))
    return out


def _row_fields(obj: CheckResult | Gate) -> dict[str, Any]:
    return {f.name: plain(getattr(obj, f.name)) for f in fields(obj)}


def cell(value: Any) -> Any:
    """One CSV cell: None empty, booleans as true/false, formulas defused."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def write_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def write_csv(names: list[str], rows: Iterable[dict[str, Any]]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")  # every field quoted when needed
    writer.writerow(names)
    for row in rows:
        writer.writerow([cell(row[name]) for name in names])


def history(rows: list[Deployment], fmt: str) -> None:
    data = [deployment_fields(d) for d in rows]
    write_json(data) if fmt == "json" else write_csv(DEPLOYMENT_FIELDS, data)


def show(store, d: Deployment) -> None:
    write_json({
        "deployment": deployment_fields(d),
        "checks": [_row_fields(c) for c in store.checks(d.id)],
        "gates": [_row_fields(g) for g in store.gates(d.id)],
        "record": d.record,
        "events": [event_fields(e) for e in store.audit_trail(deployment_id=d.id)],
    })


def cmd_events(ctx, args: argparse.Namespace) -> int:
    since = dora.parse_since(args.since, ctx.store.now()) if args.since else None
    rows = [event_fields(e) for e in ctx.store.audit_trail(since=since,
                                                           deployment_id=args.deployment)]
    write_json(rows) if args.format == "json" else write_csv(EVENT_FIELDS, rows)
    return 0


def cmd_stats(ctx, args: argparse.Namespace) -> int:
    now = ctx.store.now()
    since = dora.parse_since(args.since, now)
    config = ctx.config
    if args.env is not None and args.env not in config.environments:
        raise InputError(f"unknown environment {args.env!r}",
                         hint=f"known: {', '.join(config.environments)}")
    if args.service is not None and args.service not in config.services:
        raise InputError(f"unknown service {args.service!r}",
                         hint=f"known: {', '.join(config.services)}")
    envs = [args.env] if args.env else dora.production_environments(config)
    figures = dora.compute(ctx.store.dora_rows(), now=now, since=since, environments=envs,
                           service=args.service)
    if args.json:
        write_json(dora.as_dict(figures))
    else:
        print("\n".join(dora.as_lines(figures)))
    return 0


def add_format(parser: argparse.ArgumentParser, *, csv_too: bool = True) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--json", dest="format", action="store_const", const="json",
                       help="machine-readable JSON (ISO-8601 UTC times)")
    if csv_too:
        group.add_argument("--csv", dest="format", action="store_const", const="csv",
                           help="CSV with a header row; formulas defused with a leading '")


def add_parsers(sub) -> None:
    st = sub.add_parser("stats", help="DORA figures: deployment frequency, lead time, change "
                        "failure rate, time to restore")
    st.add_argument("--env", help="only this environment (default: the production ones)")
    st.add_argument("--service", help="only this service")
    st.add_argument("--since", default="30d", metavar="WHEN",
                    help="window start: 30d (default), 12h, 2w, or an ISO date like 2026-11-01")
    st.add_argument("--json", action="store_true", help="machine-readable JSON")
    st.set_defaults(func=cmd_stats)

    ev = sub.add_parser("events", help="export the audit trail (JSON or CSV)")
    ev.add_argument("--since", metavar="WHEN", help="only events since: 7d, 12h, 2w, ISO date")
    ev.add_argument("--deployment", type=int, metavar="ID", help="only this deployment's")
    add_format(ev)
    ev.set_defaults(func=cmd_events, format="json")
