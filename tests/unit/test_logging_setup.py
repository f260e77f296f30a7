"""The process's logging (issue 11, part 5): level and format from the flag or the environment,
ISO-8601 UTC timestamps, the deployment's id and ticket on every line, across threads, and
secrets redacted in both formats."""

from __future__ import annotations

import json
import logging
import re
import threading

import pytest

from bot import logcontext
from bot.models import DeploymentStatus
from bot.redact import Redactor, install_log_filter
from handlers import cli, logsetup
from fakes.slack_api import fake_token
from tests.unit.test_cli_inputs import Terminal

TOKEN = fake_token("bot", "logging")
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def term(tmp_path, monkeypatch) -> Terminal:
    for name in (logsetup.LEVEL_ENV, logsetup.FORMAT_ENV):
        monkeypatch.delenv(name, raising=False)
    return Terminal(tmp_path, monkeypatch)


def crashing_deploy(term: Terminal, monkeypatch) -> str:
    """A deployment whose backend raises with a secret in its message: the pipeline logs the
    crash with its traceback (ERROR) and the progress lines (INFO)."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)

    def deploy(*_a, **_kw):
        raise RuntimeError(f"engine said no to {TOKEN}")
    monkeypatch.setattr(term.backend, "deploy", deploy)
    return term.ticket()


def records(err: str) -> list[dict]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def test_json_lines_carry_the_deployment_and_redact_the_traceback(term, monkeypatch, capsys):
    tid = crashing_deploy(term, monkeypatch)
    assert term("deploy", tid, "web@v2", "--env", "staging", "--log-format", "json") == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert TOKEN not in err
    lines = records(err)
    crash = next(r for r in lines if "failed unexpectedly" in r["message"])
    assert crash["level"] == "ERROR" and crash["logger"] == "deploybot.pipeline"
    assert crash["deployment_id"] == 1 and crash["ticket"] == tid
    assert STAMP.match(crash["timestamp"])
    assert "RuntimeError: engine said no to [redacted]" in crash["exc_info"]
    # WARNING by default for a one-shot command: the progress lines stay out of the terminal
    assert all(r["level"] != "INFO" for r in lines)


def test_text_lines_have_time_level_logger_and_deployment(term, monkeypatch, capsys):
    tid = crashing_deploy(term, monkeypatch)
    assert term("deploy", tid, "web@v2", "--env", "staging", "--log-level", "info") == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert TOKEN not in err and "[redacted]" in err
    started = next(line for line in err.splitlines() if "started" in line and "INFO" in line)
    stamp, level, logger, rest = started.split(" ", 3)
    assert STAMP.match(stamp) and level == "INFO" and logger == "deploybot.pipeline"
    assert rest.startswith(f"[deployment 1 {tid}] deploy web@v2 to staging: started")


def test_level_and_format_from_the_environment_the_flag_wins(term, monkeypatch, capsys):
    tid = crashing_deploy(term, monkeypatch)
    monkeypatch.setenv(logsetup.LEVEL_ENV, "info")
    monkeypatch.setenv(logsetup.FORMAT_ENV, "json")
    term("deploy", tid, "web@v2", "--env", "staging")
    assert any(r["level"] == "INFO" for r in records(capsys.readouterr().err))
    # after the command, as before it: a flag overrides the environment
    term("deploy", tid, "web@v3", "--env", "staging", "--log-level", "error", "--log-format", "text")
    err = capsys.readouterr().err
    assert not records(err) and " INFO " not in err and " ERROR deploybot.pipeline " in err


@pytest.mark.parametrize("env, value, says", [
    (logsetup.LEVEL_ENV, "loud", "log level 'LOUD' is not one of"),
    (logsetup.FORMAT_ENV, "xml", "log format 'xml' is not one of")])
def test_a_wrong_level_or_format_in_the_environment_is_a_usage_error(term, monkeypatch, capsys,
                                                                      env, value, says):
    monkeypatch.setenv(env, value)
    assert term("status") == cli.EXIT_USAGE
    assert says in capsys.readouterr().err


def test_services_log_info_one_shot_commands_warnings():
    assert logsetup.choose("run", None, None, {}) == ("INFO", "text")
    assert logsetup.choose("scheduler", None, None, {}) == ("INFO", "text")
    assert logsetup.choose("status", None, None, {}) == ("WARNING", "text")
    assert logsetup.choose("status", None, None, {logsetup.LEVEL_ENV: "debug"})[0] == "DEBUG"
    assert logsetup.choose("run", "ERROR", "json", {logsetup.LEVEL_ENV: "debug"}) == \
        ("ERROR", "json")


def test_the_root_logger_is_as_before_after_main(term, capsys):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    term("status", "--log-level", "debug")
    assert root.handlers == handlers and root.level == level


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(logcontext.DeploymentFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected():
    log = logging.getLogger("deploybot.test-context")
    handler = Collect()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield log, handler.records
    finally:
        log.removeHandler(handler)


def test_the_context_crosses_into_threads_started_with_in_thread(collected):
    log, seen = collected
    with logcontext.deployment(12, "DEMO-12"):
        log.info("in the pipeline's thread")
        carried = threading.Thread(target=logcontext.in_thread(lambda: log.info("carried")))
        plain = threading.Thread(target=lambda: log.info("plain"))
        carried.start(), plain.start()
        carried.join(), plain.join()
        assert logcontext.working() == [12]
    log.info("after")
    got = {r.getMessage(): (r.deployment_id, r.ticket) for r in seen}
    assert got["in the pipeline's thread"] == got["carried"] == (12, "DEMO-12")
    assert got["plain"] == got["after"] == (None, None)  # a bare thread starts without it
    assert logcontext.working() == []


@pytest.mark.realtime  # the heartbeat thread waits on the real clock (1 ms here)
def test_the_heartbeat_thread_logs_inside_the_deployment(collected, monkeypatch):
    from bot import locks

    log, seen = collected
    monkeypatch.setattr(locks, "log", log)
    beats = threading.Event()

    class FailingStore:
        calls = 0

        def heartbeat(self, deployment_id, ttl):
            self.calls += 1
            if self.calls > 1:  # the first beat is in the caller's thread: fail the next
                beats.set()
                raise OSError("disk full")

    with logcontext.deployment(3, "DEMO-3"):
        beat = locks.Heartbeat(FailingStore(), 3, ttl=0.01)
        monkeypatch.setattr(locks, "max", lambda *_: 0.001, raising=False)
        with beat:
            assert beats.wait(5)
    failed = [r for r in seen if "heartbeat" in r.getMessage()]
    assert failed and (failed[0].deployment_id, failed[0].ticket) == (3, "DEMO-3")
    assert failed[0].threadName.startswith("deploybot-heartbeat")


def test_json_formatter_redacts_the_message_and_keeps_one_line(capsys):
    redact = Redactor([TOKEN])
    with logsetup.configured("INFO", "json", redact):
        install_log_filter(redact)  # what start-up does once the config is loaded
        with logcontext.deployment(7, "DEMO-7"):
            logging.getLogger("deploybot.x").warning("token %s\nsecond line", TOKEN)
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("{")]
    got = json.loads(line)
    assert got["message"] == "token [redacted]\nsecond line"
    assert (got["deployment_id"], got["ticket"], got["level"]) == (7, "DEMO-7", "WARNING")
    assert "exc_info" not in got


@pytest.mark.realtime  # APScheduler's worker thread and its shutdown wait on the real clock
def test_stopping_the_scheduler_says_which_deployment_it_waits_for(tmp_path, caplog):
    from fakes.schedule import ScheduleWorld

    world = ScheduleWorld(tmp_path / "deploybot.db")
    entered, release = threading.Event(), threading.Event()
    deploy = world.backend.deploy

    def slow_deploy(*args, **kwargs):
        entered.set()
        assert release.wait(30)
        return deploy(*args, **kwargs)
    world.backend.deploy = slow_deploy
    caplog.set_level(logging.INFO, logger="deploybot")
    d = world.request(world.ticket())
    world.scheduler.start()
    world.scheduler.aps.add_job(world.scheduler.execute, args=[d.id])
    try:
        assert entered.wait(30)
        stopping = threading.Thread(target=world.scheduler.shutdown)
        stopping.start()
        waiting = f"waiting for deployment {d.id} (web@v2) to finish deploying"
        for _ in range(300):  # until the shutdown has said it (it then waits for the job)
            if any(r.getMessage() == waiting for r in caplog.records):
                break
            stopping.join(0.1)
        said = [r.getMessage() for r in caplog.records if r.name == "deploybot.scheduler"]
        assert said[-2:] == ["stopping the scheduler", waiting]
        assert stopping.is_alive()  # it waits for the deployment, not past it
        release.set()
        stopping.join(30)
        assert not stopping.is_alive()
        assert world.store.deployment(d.id).status is DeploymentStatus.SUCCEEDED
        assert caplog.records[-1].getMessage() == "the scheduler stopped"
    finally:
        release.set()
        world.close()


@pytest.mark.realtime  # the front end's worker threads
def test_closing_the_slack_front_end_says_which_deployment_it_waits_for(tmp_path, monkeypatch,
                                                                        caplog):
    from bot.store import Store
    from fakes.slack_api import FakeSlack
    from fakes.slack_harness import ready_ticket, slack_config
    from handlers.slack_app import SlackFrontEnd, web_client
    from fakes.core import FakeBackend, FakeProbe, InstantClock

    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    backend, entered, release = FakeBackend(running="v1"), threading.Event(), threading.Event()
    deploy = backend.deploy

    def slow_deploy(*args, **kwargs):
        entered.set()
        assert release.wait(30)
        return deploy(*args, **kwargs)
    backend.deploy = slow_deploy
    config = slack_config(image="demo-web", ports={"staging": 9, "production": 9},
                          prefix="closing", verify_timeout=1)
    caplog.set_level(logging.INFO, logger="deploybot")
    with FakeSlack(bot_token=TOKEN) as slack:
        store = Store(tmp_path / "d.db")
        front = SlackFrontEnd(config, store, web_client(TOKEN, slack.api_url),
                              backend_for=lambda s, e: backend, probe=FakeProbe(backend),
                              clock=InstantClock())
        d = front.pipeline.request_deploy(ready_ticket(store), requested_by="alice",
                                          target="web@v2", environment="staging")
        front.submit(front.pipeline.run, d.id)
        try:
            assert entered.wait(30)
            closing = threading.Thread(target=front.close)
            closing.start()
            waiting = f"waiting for deployment {d.id} (web@v2) to finish deploying"
            for _ in range(300):
                if any(r.getMessage() == waiting for r in caplog.records):
                    break
                closing.join(0.1)
            assert any(r.getMessage() == waiting and r.name == "deploybot.slack"
                       for r in caplog.records)
            assert closing.is_alive()
            release.set()
            closing.join(30)
            assert not closing.is_alive() and caplog.records[-1].getMessage() == "stopped"
            assert store.deployment(d.id).status is DeploymentStatus.SUCCEEDED
        finally:
            release.set()
            front.close()
