"""Inputs that used to crash (issue 10, part 5): far-off times, huge numbers, a closed pipe,
control characters; and property tests over the command grammar and the CLI arguments."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.trackers.local import LocalTracker
from bot.store import Store
from handlers import cli, commands
from handlers.safe_output import escape_controls
from handlers.terminal import os_login
from fakes.core import FakeBackend, FakeProbe, InstantClock

ROOT = Path(__file__).resolve().parents[2]
HUGE = "99999999999999999999"
CODES = {cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_USAGE, cli.EXIT_PENDING, cli.EXIT_REFUSED}
PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


class Terminal:
    """deploybot at a terminal: a config and database in tmp_path, fakes at the edges."""

    def __init__(self, tmp_path: Path, monkeypatch) -> None:
        self.path = tmp_path / "deploybot.yaml"
        self.path.write_text(yaml.safe_dump({
            "tracker": {"kind": "local"},
            "environments": {"staging": {}, "production": {
                "production": True, "approvals_required": 1, "approvers": ["bob"]}},
            "services": {"web": {"image": "demo-web"}},
            "people": {"alice": {"tracker": "alice", "os": os_login()}, "bob": {"tracker": "bob"},
                       "carol": {"tracker": "carol"}}}))
        self.db = tmp_path / "deploybot.db"
        monkeypatch.setenv("DEPLOYBOT_DB", str(self.db))
        for name in ("DEPLOYBOT_USER", "SLACK_BOT_TOKEN", "DEPLOYBOT_CONFIG"):
            monkeypatch.delenv(name, raising=False)
        self.store = Store(self.db)
        self.tracker = LocalTracker(self.store)
        self.backend = FakeBackend(running="v1")
        self.edges = cli.Edges(backend_for=lambda s, e: self.backend, tracker=self.tracker,
                               probe=FakeProbe(self.backend), clock=InstantClock())

    def __call__(self, *argv: str) -> int:
        return cli.main(["--config", str(self.path), *argv], edges=self.edges)

    def ticket(self, title: str = "Ship it") -> str:
        tid = self.tracker.create_ticket(title, status="Ready for Production")
        self.tracker.add_comment(tid, "CQ approved", author="bob")
        self.tracker.add_comment(tid, "QA PASS", author="carol")
        return tid


@pytest.fixture
def term(tmp_path, monkeypatch) -> Terminal:
    return Terminal(tmp_path, monkeypatch)


@pytest.mark.parametrize("when", ["9999-12-31T23:59-05:00", "0001-01-01T00:00+14:00",
                                  "9999-12-31T23:59", "2100-01-01T00:00"])
def test_far_off_times_are_usage_errors(term, capsys, when):
    assert term("deploy", term.ticket(), "web@v2", "--at", when) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" not in err and when in err
    assert "out of range" in err or "more than a year ahead" in err or "in the past" in err


@pytest.mark.parametrize("argv", [["show", HUGE], ["approve", HUGE], ["reject", HUGE, "--reason",
                                  "no"], ["cancel", HUGE], ["show", "-" + HUGE]])
def test_huge_deployment_numbers_are_not_found(term, capsys, argv):
    assert term(*argv) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert f"no deployment #{argv[1]}" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["history", "--limit", HUGE], ["history", "--limit", "0"],
                                  ["scheduler", "--tick", "nan"], ["scheduler", "--tick", "inf"],
                                  ["run", "--port", HUGE]])
def test_out_of_range_numbers_are_refused_with_usage(term, capsys, argv):
    with pytest.raises(SystemExit) as info:
        term(*argv)
    assert info.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "usage: deploybot" in err and "is not" in err and "Traceback" not in err


class ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_pipe_ends_quietly(term, capsys, monkeypatch):
    term("deploy", term.ticket(), "web@v2", "--env", "staging")
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert term("history") == cli.EXIT_BROKEN_PIPE
    assert capsys.readouterr().err == ""


def test_history_piped_into_head_prints_no_traceback(term, tmp_path):
    with term.store.transaction():  # one commit: fast
        for n in range(400):  # 400 KB of lines: more than a pipe holds, so the writer sees
            term.store.create_deployment(ticket_id=f"DEMO-{n + 1}-{'x' * 1000}", service="web",
                                         version=f"v{n}", environment="staging",
                                         requested_by="alice")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DEPLOYBOT_DB": str(term.db)}
    proc = subprocess.Popen([sys.executable, "-m", "handlers.cli", "--config", str(term.path),
                             "history", "--limit", "5000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    first = proc.stdout.readline()
    proc.stdout.close()  # `| head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == cli.EXIT_BROKEN_PIPE
    assert first.startswith(b"#400") and err == ""


def test_control_characters_reach_the_terminal_escaped(term, capsys):
    tid = term.ticket("evil\x1b[2J\rtitle\x07")
    assert term("lock", "staging", "--reason", "freeze\x1b]0;pwned\x07\rnow") == cli.EXIT_OK
    assert term("ticket", "show", tid) == cli.EXIT_OK
    assert term("status") == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out
    assert "evil\\x1b[2J\\rtitle\\x07" in out and "freeze\\x1b]0;pwned\\x07\\rnow" in out


def test_escape_controls_keeps_newlines_tabs_and_text():
    assert escape_controls("a\tb\nc é ✅") == "a\tb\nc é ✅"
    assert escape_controls("\x00\x9b\u202e") == "\\0\\x9b\\u202e"


def test_arguments_that_are_not_text_are_usage_errors(term, capsys):
    assert term("lock", "staging", "--reason", "bad \udcff byte") == cli.EXIT_USAGE
    assert "not valid UTF-8" in capsys.readouterr().err


# -- properties ---------------------------------------------------------------------------------

REQUESTS = (commands.DeployRequest, commands.StatusRequest, commands.HistoryRequest,
            commands.LockRequest, commands.UnlockRequest, commands.CancelRequest,
            commands.HelpRequest, commands.RollbackRequest)
WORDS = ["DEMO-1", "web@v2", "web@", "@v2", "to", "in", "at", "--at", "staging", "production",
         "--dry-run", "—dry-run", "--queue", "--break-glass", "status", "history", "lock",
         "unlock", "cancel", "help", "#7", "#" + HUGE, "22:00", "25:61", "2026-11-27",
         "9999-12-31T23:59-05:00", "<@U123>", "<https://x|y>", "\x1b[2J", "\r", "web", "v1"]
chat = st.one_of(st.text(max_size=60),
                 st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=8)),
                          max_size=8).map(" ".join))


@PROPERTY
@given(text=chat, envs=st.sampled_from([(), ("staging", "production")]))
def test_the_grammar_answers_a_request_or_a_usage_error(text, envs):
    for parse in (lambda t: commands.parse_deploy(t, environments=envs),
                  lambda t: commands.parse_rollback(t, services=("web",), environments=envs),
                  lambda t: commands.parse_mention(t, services=("web",), environments=envs)):
        try:
            assert isinstance(parse(text), REQUESTS)
        except commands.UsageError as exc:
            assert exc.text()


COMMANDS = ["deploy", "rollback", "approve", "reject", "cancel", "status", "history", "show",
            "lock", "unlock", "check-config", "ticket"]
ARGS = ["DEMO-1", "web@v2", "web", "staging", "production", "to", "in", "--env", "--to", "v1",
        "--at", "22:00", "9999-12-31T23:59-05:00", "0001-01-01T00:00+14:00", "--dry-run",
        "--queue", "--break-glass", "--reason", "--gate", "--limit", "--as", "bob", "alice",
        "--approve-as", "--service", "--live", "create", "comment", "show", "status", "1", "-1",
        "0", HUGE, "nan", "--help", "\x1b[31mred", "a\rb", "", "--by", "--field", "k=v"]
argvs = st.tuples(st.sampled_from(COMMANDS), st.lists(
    st.one_of(st.sampled_from(ARGS), st.text(max_size=12)), max_size=6))


@PROPERTY
@given(argv=argvs)
def test_the_cli_never_shows_a_traceback(term, capsys, argv):
    command, rest = argv
    try:
        code = term(command, *rest)
    except SystemExit as exc:  # argparse: usage (2) or --help (0)
        code = exc.code
    out, err = capsys.readouterr()
    assert code in CODES, (argv, code, err)
    assert "Traceback" not in err
    assert not {"\x1b", "\r"} & set(out + err)  # shown escaped, never obeyed
    if code == cli.EXIT_USAGE:
        assert "usage:" in err or "error:" in err
