"""DEPLOYBOT_DB's forms, the refusal of everything else, and the DSN password kept secret."""

from __future__ import annotations

import socket

import pytest

from bot import config as configuration
from bot.errors import ConfigError
from bot.redact import redactor_for, slack_redactor
from handlers import cli, database_url, wiring
from handlers.database_url import POSTGRESQL, SQLITE, Location

PASSWORD = "s3cret-Pa55word"


@pytest.mark.parametrize("text, expected", [
    (None, Location(SQLITE, "deploybot.db")),
    ("/var/lib/deploybot/deploybot.db", Location(SQLITE, "/var/lib/deploybot/deploybot.db")),
    ("data/deploybot.db", Location(SQLITE, "data/deploybot.db")),
    ("sqlite:///var/lib/deploybot/deploybot.db",
     Location(SQLITE, "/var/lib/deploybot/deploybot.db")),
    ("sqlite:data/deploybot.db", Location(SQLITE, "data/deploybot.db")),
    ("postgresql://bot@db.example:5432/deploybot",
     Location(POSTGRESQL, "postgresql://bot@db.example:5432/deploybot")),
    ("postgres://bot@db/deploybot", Location(POSTGRESQL, "postgres://bot@db/deploybot")),
])
def test_the_accepted_forms(text, expected):
    assert database_url.parse(text) == expected


@pytest.mark.parametrize("text, says", [
    ("mysql://bot:s3cret-Pa55word@db/deploybot", "not a store deploybot knows (mysql://)"),
    ("http://db.example/deploybot", "not a store deploybot knows"),
    ("postgresql:deploybot", "not a PostgreSQL URL"),
    ("sqlite://host/deploybot.db", "has a host part"),
    ("sqlite:", "names no file"),
    ("", "set but empty"),
    ("  ", "set but empty"),
])
def test_anything_else_is_a_configuration_error_naming_the_forms(text, says):
    with pytest.raises(ConfigError) as caught:
        database_url.parse(text)
    assert says in caught.value.message
    assert "sqlite:///ABSOLUTE/PATH" in caught.value.hint and "postgresql://" in caught.value.hint
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize("dsn, label", [
    (f"postgresql://bot:{PASSWORD}@db:5432/deploybot", "postgresql://bot@db:5432/deploybot"),
    (f"postgres://bot@db/deploybot?sslmode=require&password={PASSWORD}",
     "postgresql://bot@db/deploybot"),
    ("postgresql://bot@db/deploybot", "postgresql://bot@db/deploybot"),
])
def test_the_label_has_no_password(dsn, label):
    assert database_url.parse(dsn).label == label


def test_a_dsn_of_an_unknown_kind_is_shown_without_its_password():
    assert database_url.safe_dsn(f"mysql://bot:{PASSWORD}@db/x?password={PASSWORD}&a=1") == \
        "mysql://bot@db/x?a=1"


@pytest.mark.parametrize("dsn", [f"postgresql://bot:{PASSWORD}@db/deploybot",
                                 "postgresql://bot:s3cret-Pa55word@db/deploybot".replace(
                                     "-", "%2D"),
                                 f"postgres://bot@db/deploybot?password={PASSWORD}"])
def test_the_dsn_password_is_a_secret_before_and_after_the_config(dsn):
    environ = {"DEPLOYBOT_DB": dsn, "PGPASSWORD": "Pg-env-pa55"}
    config = configuration.parse({"environments": {"staging": {}},
                                  "services": {"web": {"image": "demo-web"}}})
    for redact in (slack_redactor(environ), redactor_for(config, environ)):
        assert PASSWORD not in redact(f"could not connect with {PASSWORD}")
        assert redact("PGPASSWORD was Pg-env-pa55") == "PGPASSWORD was [redacted]"
    # the rest of the DSN and a SQLite path stay readable
    assert slack_redactor(environ)("db/deploybot") == "db/deploybot"
    assert slack_redactor({"DEPLOYBOT_DB": "/var/lib/deploybot/deploybot.db"})(
        "/var/lib/deploybot/deploybot.db") == "/var/lib/deploybot/deploybot.db"


def test_backend_tools_do_not_get_the_store_s_dsn(monkeypatch):
    captured = {}

    def build_backend(service, environment, settings, *, environ, credentials):
        captured.update(environ)
        return object()

    monkeypatch.setattr("backends.deploy.build_backend", build_backend)
    config = configuration.parse({"environments": {"staging": {}},
                                  "services": {"web": {"image": "demo-web"}}})
    backend_for = wiring.backend_factory(config, {
        "DEPLOYBOT_DB": f"postgresql://bot:{PASSWORD}@db/deploybot", "PGPASSWORD": PASSWORD,
        "PATH": "/usr/bin"})
    backend_for("web", "staging")
    assert captured == {"PATH": "/usr/bin"}


@pytest.fixture
def no_config(tmp_path, monkeypatch):
    """An empty working directory, and a config elsewhere (the store is opened after it)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    config = tmp_path / "deploybot.yaml"
    config.write_text("tracker: {kind: local}\nenvironments: {staging: {}}\n"
                      "services: {web: {image: demo-web}}\n")
    monkeypatch.setenv("DEPLOYBOT_CONFIG", str(config))
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    return work


@pytest.mark.parametrize("value, says", [
    (f"postgresqll://bot:{PASSWORD}@db/deploybot",
     "DEPLOYBOT_DB: postgresqll://bot@db/deploybot is not a store"),
    ("", "DEPLOYBOT_DB is set but empty"),  # a Secret whose value was never filled in
])
def test_an_unusable_value_stops_the_cli_with_a_usage_error(no_config, monkeypatch, capsys,
                                                            value, says):
    monkeypatch.setenv("DEPLOYBOT_DB", value)
    assert cli.main(["history"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert says in err
    assert "hint: DEPLOYBOT_DB is a file path, sqlite:///ABSOLUTE/PATH" in err
    assert PASSWORD not in err and "Traceback" not in err
    assert list(no_config.iterdir()) == []  # no file named "postgresqll:" appeared


def test_an_unreachable_postgresql_stops_the_cli_with_the_reason(no_config, monkeypatch, capsys):
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("DEPLOYBOT_DB", f"postgresql://bot:{PASSWORD}@127.0.0.1:{port}/deploybot")
    assert cli.main(["history"]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert f"the PostgreSQL store at postgresql://bot@127.0.0.1:{port}/deploybot is " \
           "unreachable" in err
    assert "hint:" in err and PASSWORD not in err and "Traceback" not in err


def test_a_store_in_a_folder_that_does_not_exist_is_refused_not_created(tmp_path):
    # A mistyped DEPLOYBOT_DB would be a new empty store: `status` saying "Locks: none" while
    # the real store holds one.
    from bot.store import Store

    missing = tmp_path / "typo" / "deploybot.db"
    with pytest.raises(ConfigError, match="folder .*typo does not exist") as caught:
        Store(str(missing))
    assert "DEPLOYBOT_DB=" in caught.value.hint
    assert not missing.parent.exists()
