"""The Redactor, the environment of child processes and the env_file rules (issue 10, part 4)."""

from __future__ import annotations

import base64
import os
import sys
from dataclasses import dataclass
from urllib.parse import quote

import pytest

from bot import config as configuration
from bot.checks import run_migration_check
from bot.childenv import allowed_environ, without_secrets
from bot.envfile import env_file_problem, read_env_file
from bot.errors import ConfigError, InputError
from bot.models import DeploymentStatus
from bot.redact import REDACTED, Redactor, redactor_for, secret_env_names
from bot.store import Store


def test_values_and_their_simple_encodings_are_replaced():
    r = Redactor(["dbP@ss/w0rd!"], pairs=[("robot", "REGPASS-99xx")])
    basic = base64.b64encode(b"robot:REGPASS-99xx").decode()
    text = (f"dsn postgres://app:{quote('dbP@ss/w0rd!', safe='')}@db/x; raw dbP@ss/w0rd!; "
            f"Authorization: Basic {basic}; b64 {base64.b64encode(b'dbP@ss/w0rd!').decode()}")
    out = r(text)
    assert "dbP@ss" not in out and quote("dbP@ss/w0rd!", safe="") not in out
    assert basic not in out and out.count(REDACTED) == 4


def test_short_and_ordinary_values_are_left_alone():
    r = Redactor(["abc", "true", "8080", "12345678", "  LongSecret1  "])
    assert r("abc true 8080 12345678") == "abc true 8080 12345678"
    assert r("x LongSecret1 y") == f"x {REDACTED} y"  # stripped as environment values are


def test_the_longest_value_wins_and_dataclasses_are_copied_redacted():
    r = Redactor(["secret-one", "secret-one-and-more"])
    assert r("secret-one-and-more!") == f"{REDACTED}!"

    @dataclass(frozen=True)
    class Row:
        reason: str
        n: int

    row = Row("failed: secret-one", 3)
    assert r.deep([row, {"k": ("secret-one",)}]) == [Row(f"failed: {REDACTED}", 3),
                                                        {"k": (REDACTED,)}]
    assert row.reason == "failed: secret-one"  # the original is not changed


def _config(tmp_path, **extra) -> configuration.Config:
    env_file = tmp_path / "web.env"
    env_file.write_text("DB_PASSWORD=envfile-pass-1\nAPP_ENV=staging\nPORT=8080\n"
                        "=LINESECRET-7731\n")
    data = {"tracker": {"kind": "local", "token_env": "REDMINE_KEY"},
            "environments": {"staging": {}},
            "services": {"web": {"image": "web", "backend": {"env_file": str(env_file)},
                                 "http_auth": {"bearer_token_env": "PROBE_TOKEN"},
                                 "build": {"context": ".", "username_env": "REG_USER",
                                           "password_env": "REG_PASS"}}},
            "secret_env": ["DSN_PASSWORD"], **extra}
    return configuration.parse(data)


def test_the_redactor_knows_every_configured_secret(tmp_path):
    cfg = _config(tmp_path)
    environ = {"REDMINE_KEY": "rdmKEY-5f3a9c", "PROBE_TOKEN": "probeTOKEN-4242",
               "REG_USER": "robot", "REG_PASS": "REGPASS-99xx", "SLACK_BOT_TOKEN": "xoxb-1-abcdef",
               "SLACK_SIGNING_SECRET": "signing-secret-9", "DSN_PASSWORD": "dsnPASS-777",
               "UNRELATED": "not-a-secret-value"}
    assert set(secret_env_names(cfg)) >= {"REDMINE_KEY", "PROBE_TOKEN", "REG_USER", "REG_PASS",
                                          "SLACK_BOT_TOKEN", "DSN_PASSWORD"}
    r = redactor_for(cfg, environ)
    secrets = ["rdmKEY-5f3a9c", "probeTOKEN-4242", "REGPASS-99xx", "xoxb-1-abcdef",
               "signing-secret-9", "dsnPASS-777", "envfile-pass-1", "LINESECRET-7731",
               base64.b64encode(b"robot:REGPASS-99xx").decode()]
    out = r(" | ".join(secrets + ["not-a-secret-value", "staging", "8080"]))
    assert all(s not in out for s in secrets)
    # an env file value that is also an environment's name stays readable
    assert out.endswith("not-a-secret-value | staging | 8080")


def test_the_store_keeps_no_secret(tmp_path):
    store = Store(":memory:")
    store.redact = Redactor(["hunter2-secret"])
    d, _ = store.create_deployment(ticket_id="7", service="web", version="v2",
                                   environment="staging", requested_by="alice",
                                   break_glass="outage, key hunter2-secret")
    store.transition(d.id, DeploymentStatus.CHECKING, detail="saw hunter2-secret")
    store.update_deployment(d.id, failure="hunter2-secret failed", record="r hunter2-secret")
    dump = "\n".join(store.db.conn.iterdump())
    assert "hunter2-secret" not in dump and dump.count(REDACTED) >= 4


# -- child processes -------------------------------------------------------------------------

ENVIRON = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/home/x", "LANG": "C.UTF-8",
           "LC_ALL": "C.UTF-8", "SLACK_BOT_TOKEN": "xoxb-1-abcdef", "REDMINE_KEY": "rdm-key-1",
           "DATABASE_URL": "postgres://db/x", "DOCKER_HOST": "unix:///tmp/d.sock",
           "GITHUB_TOKEN": "ghp_abcdef", "REG_PASSWORD": "pw-123456"}


def test_a_migration_check_sees_only_the_allow_list():
    code = "import os, sys; sys.stderr.write(','.join(sorted(os.environ))); sys.exit(3)"
    outcome = run_migration_check([sys.executable, "-c", code], 30,
                                  env=allowed_environ(ENVIRON, ["DATABASE_URL"]))
    names = set(outcome.reason.rsplit(" ", 1)[-1].split(","))
    # the C runtime may add LC_CTYPE; nothing else appears
    assert names - {"LC_CTYPE"} == {"PATH", "HOME", "LANG", "LC_ALL", "DATABASE_URL"}


def test_backend_tools_keep_their_settings_but_never_the_tokens():
    kept = without_secrets(ENVIRON, ["REDMINE_KEY"])
    assert set(kept) == {"PATH", "HOME", "LANG", "LC_ALL", "DATABASE_URL", "DOCKER_HOST",
                         "GITHUB_TOKEN", "REG_PASSWORD"}  # not deploybot's: compose may use them


def test_compose_runs_without_deploybots_tokens(tmp_path):
    from handlers.wiring import backend_factory

    cfg = configuration.parse({
        "tracker": {"kind": "local", "token_env": "REDMINE_KEY"},
        "environments": {"staging": {}, "production": {}},
        "services": {"web": {"image": "web", "backend": {"kind": "compose",
                                                         "file": str(tmp_path / "c.yml")}}},
        "overrides": {"production": {"web": {"build": {"context": ".",
                                                       "password_env": "REG_PASSWORD"}}}}})
    env = backend_factory(cfg, ENVIRON)("web", "staging")._env()
    assert {"DOCKER_HOST", "DATABASE_URL", "GITHUB_TOKEN", "PATH"} <= set(env)
    assert not {"SLACK_BOT_TOKEN", "REDMINE_KEY", "REG_PASSWORD"} & set(env)


def test_integrity_checks_get_the_allow_list_by_default(tmp_path):
    from bot.pipeline import Pipeline
    from fakes.core import FakeBackend, FakeProbe, RecordingReporter, ScriptedApprover
    from fakes.tracker import MemoryTracker

    cfg = configuration.parse({"environments": {"staging": {}}, "child_env": ["DATABASE_URL"],
                               "services": {"web": {"image": "web"}}})
    backend = FakeBackend()
    pipeline = Pipeline(config=cfg, store=Store(":memory:"), tracker=MemoryTracker(),
                        backend_for=lambda s, e: backend, reporter=RecordingReporter(),
                        approver=ScriptedApprover(), probe=FakeProbe(backend), environ=ENVIRON)
    d, _ = pipeline.store.create_deployment(ticket_id="7", service="web", version="v2",
                                            environment="staging", requested_by="alice")
    run = pipeline.rollout.watcher(d, backend).run
    code, output = run([sys.executable, "-c", "import os; print(sorted(os.environ))"], 30)
    assert code == 0 and "DATABASE_URL" in output and "SLACK_BOT_TOKEN" not in output
    assert "REDMINE_KEY" not in output and "HOME" in output


def test_child_env_is_validated():
    base = {"environments": {"staging": {}}, "services": {"web": {"image": "web"}}}
    with pytest.raises(ConfigError, match="not an environment variable name"):
        configuration.parse({**base, "child_env": ["BAD NAME"]})
    with pytest.raises(ConfigError, match="SLACK_BOT_TOKEN holds one of deploybot's own"):
        configuration.parse({**base, "child_env": ["SLACK_BOT_TOKEN"]})
    with pytest.raises(ConfigError, match="REDMINE_KEY holds"):
        configuration.parse({**base, "tracker": {"token_env": "REDMINE_KEY"},
                             "child_env": ["REDMINE_KEY"]})


# -- env files --------------------------------------------------------------------------------

def _with_env_file(path: str, kind: str = "docker") -> dict:
    backend = {"env_file": path} if kind == "docker" else {"kind": "compose", "file": "c.yml",
                                                           "env_file": path}
    return {"environments": {"staging": {}}, "services": {"web": {"image": "web",
                                                                  "backend": backend}}}


@pytest.mark.parametrize("kind", ["docker", "compose"])
def test_env_file_must_be_a_regular_file(tmp_path, kind):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link.env"
    link.symlink_to("/proc/self/environ")
    for path, says in (("/proc/self/environ", "under /proc"), (str(fifo), "is a FIFO"),
                       (str(tmp_path), "is a directory"), (str(link), "under /proc"),
                       ("/dev/null", "under /dev")):
        with pytest.raises(ConfigError) as info:
            configuration.parse(_with_env_file(path, kind))
        assert "env_file" in info.value.message and says in info.value.message
        assert "must be a regular file" in info.value.message
    regular = tmp_path / "ok.env"
    regular.write_text("A=1\n")
    configuration.parse(_with_env_file(str(regular), kind))
    configuration.parse(_with_env_file(str(tmp_path / "later.env"), kind))  # created later


def test_check_config_says_so(tmp_path, monkeypatch, capsys):
    from handlers import cli

    import yaml

    path = tmp_path / "deploybot.yaml"
    path.write_text(yaml.safe_dump(_with_env_file("/proc/self/environ")))
    monkeypatch.setenv("DEPLOYBOT_DB", str(tmp_path / "db.sqlite"))
    assert cli.main(["--config", str(path), "check-config"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "services.web: backend.env_file /proc/self/environ is under /proc" in err


def test_check_config_names_the_malformed_line(tmp_path, monkeypatch, capsys):
    from handlers import cli

    import yaml

    env_file = tmp_path / "web.env"
    env_file.write_text("A=1\n=LINESECRET-7731\n")
    path = tmp_path / "deploybot.yaml"
    path.write_text(yaml.safe_dump(_with_env_file(str(env_file))))
    monkeypatch.setenv("DEPLOYBOT_DB", str(tmp_path / "db.sqlite"))
    assert cli.main(["--config", str(path), "check-config"]) == cli.EXIT_FAILED
    out = capsys.readouterr().out
    assert f"[FAILED] services.web: env file {env_file}: line 2 has no variable name" in out
    assert "LINESECRET" not in out


def test_a_line_without_a_name_is_refused_without_its_value(tmp_path):
    path = tmp_path / "web.env"
    path.write_text("# comment\nA=1\n=LINESECRET-7731\n")
    with pytest.raises(InputError) as info:
        read_env_file(str(path))
    assert "line 3 has no variable name" in info.value.message
    assert "LINESECRET" not in str(info.value)
    assert env_file_problem(str(path)) is None
    assert read_env_file.__module__ == "bot.envfile"


def test_clipping_never_leaves_half_a_secret():
    from bot.redact import clip

    r = Redactor(["s3cret-value-42"])
    text = "x" * 5 + " password " + "s3cret-value-42"
    shown = r(clip(text, 22))  # the cut falls inside the secret
    assert "s3cret" not in shown and shown == "xxxxx password …"
    assert clip("short", 22) == "short" and clip("y" * 30, 10) == "…"
