"""Secrets placed everywhere they could leak; a grep over everything deploybot printed, stored,
logged, reported and commented finds none of them (issue 10, part 4)."""

from __future__ import annotations

import base64
import logging
import sqlite3
import sys
import threading
from urllib.parse import quote

import pytest
import yaml

from bot.errors import BackendError, TrackerError
from handlers import cli
from handlers.terminal import os_login
from fakes.core import FakeBackend, FakeProbe, InstantClock
from fakes.tracker import MemoryTracker
from fakes.slack_api import fake_token

DB_PASSWORD = "dbP@ss/w0rd!"  # URL-quoting changes it: the quoted form must go too
SECRETS = {
    "SLACK_BOT_TOKEN": fake_token("bot", "SLACKBOTSECRET"),
    "SLACK_APP_TOKEN": fake_token("app", "APPLEVELSECRET"),
    "SLACK_SIGNING_SECRET": "SIGNINGSECRETabc123",
    "REDMINE_KEY": "rdmKEY-5f3a9c0e",
    "REG_USER": "robot-user",
    "REG_PASS": "REGPASS-99xx",
    "PROBE_TOKEN": "probeTOKEN-4242",
    "DB_PASSWORD": DB_PASSWORD,
}
LINE_SECRET = "LINESECRET-7731"  # the value of a malformed env-file line (`=value`)
API_KEY = "apikey-envfile-0042"


def forms() -> list[str]:
    """Every secret as it could leak: raw, URL-quoted, base64 basic auth."""
    values = [*SECRETS.values(), LINE_SECRET, API_KEY]
    out = values + [quote(v, safe="") for v in values]
    out.append(base64.b64encode(f"{SECRETS['REG_USER']}:{SECRETS['REG_PASS']}".encode()).decode())
    return list(dict.fromkeys(out))


# The migration check prints the DSN with its password, the Slack token (if it got it) and the
# env file's malformed line, on stderr, and fails.
LEAKY_CHECK = (
    "import os, sys\n"
    "from urllib.parse import quote\n"
    "pw = os.environ.get('DB_PASSWORD', '')\n"
    "line = open(sys.argv[1]).read().splitlines()[-1]\n"
    "sys.stderr.write(f\"FATAL postgres://app:{quote(pw, safe='')}@db pw={pw} \"\n"
    "                 f\"slack={os.environ.get('SLACK_BOT_TOKEN', 'unset')} {line}\\n\")\n"
    "sys.exit(2)\n")


class LeakyBackend(FakeBackend):
    """A registry that echoes the credentials it was given, as some do."""

    def prepare(self, version, on_step, *, image=None):
        on_step(f"docker login -u {SECRETS['REG_USER']} -p {SECRETS['REG_PASS']}")
        super().prepare(version, on_step, image=image)

    def deploy(self, version, *, ticket_id, on_step, image=None):
        basic = base64.b64encode(f"{SECRETS['REG_USER']}:{SECRETS['REG_PASS']}".encode()).decode()
        if version == "v4":
            raise RuntimeError(f"engine crashed reading PROBE_TOKEN={SECRETS['PROBE_TOKEN']}")
        raise BackendError(f"pull failed: Authorization: Basic {basic} refused; "
                           f"password {SECRETS['REG_PASS']} expired; probe {SECRETS['PROBE_TOKEN']}")


class LeakyTracker(MemoryTracker):
    """A tracker whose errors echo the key, and which keeps every comment it was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def gate_data(self, ticket_id):
        if ticket_id == "9":
            raise TrackerError(f"Redmine answered 401 for key={SECRETS['REDMINE_KEY']}",
                               hint=f"the key {SECRETS['REDMINE_KEY']} was refused")
        return super().gate_data(ticket_id)

    def add_comment(self, ticket_id, markdown, *, key):
        self.sent.append(markdown)
        if ticket_id == "8":
            raise TrackerError(f"POST /issues/8 with key {SECRETS['REDMINE_KEY']}: 503")
        if ticket_id in self.tickets:
            super().add_comment(ticket_id, markdown, key=key)


def leaky_data(tmp_path) -> dict:
    """web: a migration check that leaks, an env file with a malformed line; api: a backend
    whose errors carry the registry credentials."""
    env_file = tmp_path / "web.env"
    env_file.write_text(f"DB_PASSWORD={DB_PASSWORD}\nAPI_KEY={API_KEY}\nAPP_ENV=staging\n"
                        f"={LINE_SECRET}\n")
    return {
        "tracker": {"kind": "local", "token_env": "REDMINE_KEY"},
        "child_env": ["DB_PASSWORD"],
        "environments": {"staging": {}, "production": {}},
        "services": {
            "web": {"image": "web", "backend": {"env_file": str(env_file)},
                    "required_env": ["DB_PASSWORD"], "http_auth": {"bearer_token_env": "PROBE_TOKEN"},
                    "migration_check": [sys.executable, "-c", LEAKY_CHECK, str(env_file)]},
            "api": {"image": "api", "backend": {"env_file": str(env_file)}},
        },
        "overrides": {"production": {"api": {"build": {
            "context": ".", "username_env": "REG_USER", "password_env": "REG_PASS"}}}},
        "people": {"alice": {"tracker": "alice", "os": os_login(), "slack": "U0ALICE"},
                   "bob": {"tracker": "bob"}, "carol": {"tracker": "carol"}},
    }


def leaky_edges() -> tuple[LeakyTracker, dict[str, LeakyBackend]]:
    tracker = LeakyTracker()
    for n, login in enumerate(("alice", "bob", "carol"), 1):
        tracker.user(login, str(n))
    for tid in ("7", "8", "9", "10"):
        tracker.ticket(tid)
        tracker.say(tid, "bob", "CQ approved")
        tracker.say(tid, "carol", "QA PASS")
    return tracker, {"web": LeakyBackend(running="v1"), "api": LeakyBackend(running="v1")}


def dump(db) -> str:
    conn = sqlite3.connect(db)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


def hits(places: dict[str, str]) -> set[tuple[str, str]]:
    return {(where, secret) for where, text in places.items() for secret in forms()
            if secret in text}


@pytest.fixture
def world(tmp_path, monkeypatch):
    path = tmp_path / "deploybot.yaml"
    path.write_text(yaml.safe_dump(leaky_data(tmp_path)))
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    db = tmp_path / "deploybot.db"
    monkeypatch.setenv("DEPLOYBOT_DB", str(db))
    monkeypatch.delenv("DEPLOYBOT_USER", raising=False)
    tracker, backends = leaky_edges()
    edges = cli.Edges(backend_for=lambda s, e: backends[s], tracker=tracker,
                      probe=FakeProbe(backends["web"]), clock=InstantClock())

    def run(*argv: str) -> int:
        return cli.main(["--config", str(path), *argv], edges=edges)

    return run, tracker, db


def test_no_secret_reaches_the_terminal_the_database_the_logs_or_the_ticket(world, capsys,
                                                                           caplog):
    run, tracker, db = world
    caplog.set_level(logging.INFO)
    codes = [
        run("deploy", "7", "web@v2", "--env", "staging"),  # blocked: migration check, env file
        run("deploy", "8", "api@v3", "--env", "staging"),  # the backend's error, a failed comment
        run("deploy", "9", "api@v3", "--env", "staging"),  # the tracker's error: not stored
        run("deploy", "10", "api@v4", "--env", "staging"),  # a crash: a traceback in the log
        run("lock", "production", "--reason", f"rotating {SECRETS['REDMINE_KEY']}"),
        run("status"), run("history"), run("show", "1"), run("show", "2"), run("show", "3"),
    ]
    failed, refused_ticket = cli.EXIT_FAILED, cli.EXIT_USAGE
    assert codes == [failed, failed, refused_ticket, failed] + [cli.EXIT_OK] * 6
    out = capsys.readouterr()
    stored = dump(db)
    places = {"stdout": out.out, "stderr": out.err, "logs": caplog.text, "database": stored,
              "ticket comments": "\n".join(tracker.sent)}
    # the leaks really happened, and were caught
    assert "line 4 has no variable name" in out.out  # the env file, without its value
    assert "FATAL postgres://app:[redacted]@db pw=[redacted] slack=unset" in stored
    assert "engine crashed reading PROBE_TOKEN=[redacted]" in caplog.text
    assert "Traceback" in caplog.text
    assert "Basic [redacted]" in stored and "key=[redacted]" in out.err
    assert "rotating [redacted]" in out.out
    assert len(tracker.sent) >= 3
    assert hits(places) == set()


def test_the_slack_client_posts_nothing_secret(tmp_path):
    from bot.redact import Redactor
    from handlers.slack_app import web_client
    from fakes.slack_api import FakeSlack

    r = Redactor([SECRETS["REDMINE_KEY"], LINE_SECRET, SECRETS["SLACK_BOT_TOKEN"]])
    with FakeSlack(bot_token=SECRETS["SLACK_BOT_TOKEN"]) as slack:
        client = web_client(SECRETS["SLACK_BOT_TOKEN"], slack.api_url, redact=r)
        # the credential itself still reaches Slack (Bolt passes it as an argument)
        assert client.auth_test(token=SECRETS["SLACK_BOT_TOKEN"])["ok"]
        posted = client.chat_postMessage(
            channel="C0STANDUP", text=f"failed: key {SECRETS['REDMINE_KEY']}",
            blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": f"line {LINE_SECRET}"}}])
        client.chat_update(channel="C0STANDUP", ts=posted["ts"], text=f"{LINE_SECRET}")
    posted = [c for c in slack.calls if c.method in ("chat.postMessage", "chat.update")]
    assert len(posted) == 2
    text = repr([c.params for c in slack.calls if c.method != "auth.test"])
    assert "[redacted]" in text
    assert SECRETS["REDMINE_KEY"] not in text and LINE_SECRET not in text


# The Slack sender thread waits with timeouts (threading.Condition): under a shifted clock
# (faketime) those waits do not end, so this one runs on the real clock only.
@pytest.mark.realtime
def test_no_secret_reaches_slack(tmp_path):
    from bot import config as configuration
    from bot.store import Store
    from handlers.slack_app import SlackFrontEnd, make_http_server, web_client
    from fakes.slack_api import FakeSlack, SlackRequests

    config = configuration.parse(leaky_data(tmp_path))
    tracker, backends = leaky_edges()
    store = Store(tmp_path / "slack.db")
    with FakeSlack(bot_token=SECRETS["SLACK_BOT_TOKEN"]) as slack:
        front = SlackFrontEnd(config, store, web_client(slack.bot_token, slack.api_url),
                              signing_secret=SECRETS["SLACK_SIGNING_SECRET"], environ=SECRETS,
                              tracker=tracker, backend_for=lambda s, e: backends[s],
                              probe=FakeProbe(backends["web"]), clock=InstantClock())
        server = make_http_server(front.app, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                  daemon=True)
        thread.start()
        send = SlackRequests(f"http://127.0.0.1:{server.server_port}/slack/events",
                             SECRETS["SLACK_SIGNING_SECRET"])
        try:
            for text in ("7 web@v2 to staging", "8 api@v3 to staging", "9 api@v3 to staging",
                         f"lock production rotating {SECRETS['REDMINE_KEY']}"):
                assert send.command(text, user="U0ALICE").status_code == 200
            slack.wait_for(lambda: len(store.deployments()) == 2 and all(
                d.status.terminal for d in store.deployments()), 30, "both deployments to end")
            slack.wait_for(lambda: store.lock("env:production"), 30, "the manual lock")
        finally:
            server.shutdown()
            server.server_close()
            send.close()
            front.close()
    calls = [c.params for c in slack.calls if c.method != "auth.test"]
    said = repr(calls)
    assert "Basic [redacted]" in said and "pw=[redacted]" in said and "key=[redacted]" in said
    places = {"Slack calls": said, "database": "\n".join(store.db.conn.iterdump()),
              "ticket comments": "\n".join(tracker.sent)}
    store.close()
    assert hits(places) == set()
