"""check-config's promise: every error is reported, each with its path in the file."""

from __future__ import annotations

import pytest

from bot import config as configuration
from bot.errors import ConfigError
from fakes.slack_api import fake_token

GOOD = {
    "environments": {"staging": {}, "production": {"approvals_required": 1}},
    "services": {"billing": {"image": "registry.local:5000/billing",
                             "health": {"url": "http://127.0.0.1:8080/health"}}},
}


def errors_of(data) -> str:
    with pytest.raises(ConfigError) as info:
        configuration.parse(data, "deploybot.yaml")
    return str(info.value)


def test_a_good_file_loads_with_defaults():
    cfg = configuration.parse(GOOD)
    assert cfg.channel == "#standup"
    assert cfg.tracker.kind == "local"
    assert cfg.default_env == "staging"
    assert cfg.lock_scope("billing", "production") == "env:production"


def test_every_error_is_reported_with_its_path():
    bad = {
        "environments": {"staging": {"approvals_required": -1}},
        "services": {"billing": {"image": "billing:v1",
                                 "health": {"url": "not a url"},
                                 "backend": {"kind": "docker", "stop_timeot": 3},
                                 "migration_check": []}},
    }
    text = errors_of(bad)
    assert "services.billing.health.url: not a URL" in text
    assert "services.billing.image: give the image without a tag" in text
    assert "services.billing.backend.stop_timeot: unknown setting" in text
    assert "environments.staging.approvals_required:" in text
    assert "services.billing.migration_check: an argument list needs at least the program" in text


def test_bad_regex_in_rules_is_named():
    text = errors_of({**GOOD, "tracker": {"rules": {"qa_pass": {"pattern": "QA (PASS"}}}})
    assert "tracker.rules.qa_pass.pattern: not a valid regular expression" in text


def test_overrides_are_validated_per_environment():
    data = {**GOOD, "overrides": {"production": {"billing": {"health": {"url": "nope"}}},
                                  "moon": {}}}
    text = errors_of(data)
    assert "overrides.production.billing.health.url: not a URL" in text
    assert "overrides.moon: unknown environment" in text


def test_overrides_change_only_their_environment():
    data = {**GOOD, "overrides": {"production": {"billing": {
        "health": {"url": "http://10.0.0.5/health"}}}}}
    cfg = configuration.parse(data)
    assert str(cfg.service("billing", "production").health.url) == "http://10.0.0.5/health"
    assert str(cfg.service("billing", "staging").health.url) == "http://127.0.0.1:8080/health"


def test_remote_tracker_needs_a_url():
    assert "tracker: " in errors_of({**GOOD, "tracker": {"kind": "jira-cloud"}})


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "deploybot.yaml"
    path.write_text("environments:\n  staging: {\nservices: []\n")
    with pytest.raises(ConfigError, match="line"):
        configuration.load(path)


def test_missing_file_says_how_to_fix_it(tmp_path):
    with pytest.raises(ConfigError) as info:
        configuration.load(tmp_path / "nope.yaml")
    assert "DEPLOYBOT_CONFIG" in info.value.hint


def test_people_are_known_by_name_and_slack_id_never_by_tracker_login_or_display_name():
    cfg = configuration.parse({**GOOD, "people": {"alice": {"slack": "U01", "tracker": "asmith"},
                                                  "bob": {"slack": "U02", "os": "rjones"}}})
    assert cfg.same_person("@alice", "U01")
    assert cfg.person_named("U02") == "bob" and cfg.person_named("bob") == "bob"
    # a tracker login is resolved through the tracker, not here: "asmith" is nobody here
    assert cfg.person_named("asmith") is None and not cfg.same_person("U01", "asmith")
    assert cfg.person_by_os("rjones") == "bob" and cfg.person_by_os("alice") == "alice"
    assert cfg.person_by_os("bob") is None  # bob logs in as rjones


def test_one_account_belongs_to_one_person():
    text = errors_of({**GOOD, "people": {"alice": {"tracker": "17"}, "mallory": {"tracker": "17"}}})
    assert "people.mallory.tracker: '17' is also alice's" in text
    text = errors_of({**GOOD, "people": {"alice": {}, "mallory": {"os": "alice"}}})
    assert "people.mallory.os: 'alice' is also alice's" in text
    assert "not a Slack user id" in errors_of({**GOOD, "people": {"bob": {"slack": "Bob B."}}})
    assert "admins: 'erin' is not in people:" in errors_of({**GOOD, "admins": ["erin"]})


def test_example_configuration_is_valid():
    from pathlib import Path
    cfg = configuration.load(Path(__file__).resolve().parents[2] / "examples" / "deploybot.yaml")
    assert "web" in cfg.services


def test_backend_settings_errors_read_like_the_config_file():
    """bot/validation.py: the one formatter of config, Compose and Kubernetes settings."""
    from pydantic import BaseModel, ConfigDict, ValidationError

    from bot.validation import error_lines

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid")
        name: str

    try:
        Settings.model_validate({"nmae": "x"})
    except ValidationError as exc:
        lines = error_lines(exc, ("services", "web", "backend"),
                            explain=lambda e: "required" if e["type"] == "missing" else None)
    assert lines == ["services.web.backend.name: required",
                     "services.web.backend.nmae: unknown setting (check the spelling)"]


TRACKER = {"kind": "redmine", "url": "http://127.0.0.1:3000", "project": "ops"}


@pytest.mark.parametrize("key", ["token", "api_key", "password"])
def test_a_token_written_in_the_file_is_refused_without_quoting_it(key):
    text = errors_of({**GOOD, "tracker": {**TRACKER, key: "s3cr3t-t0ken-value"}})
    assert f"tracker: '{key}' would put a secret in the configuration file" in text
    assert "token_env" in text
    assert "s3cr3t" not in text


@pytest.mark.parametrize("value", ["0123456789abcdef0123456789abcdef01234567",
                                   "ghp_16C7e42F292c6912E7710c838347Ae178B4a", "glpat-xYz12"])
def test_a_token_given_as_token_env_is_refused_without_quoting_it(value):
    text = errors_of({**GOOD, "tracker": {**TRACKER, "token_env": value}})
    assert "tracker: 'token_env' must be the NAME of an environment variable" in text
    assert value not in text


def test_a_variable_name_in_token_env_is_accepted():
    cfg = configuration.parse({**GOOD, "tracker": {**TRACKER, "token_env": "REDMINE_TOKEN"}})
    assert cfg.tracker.token_env == "REDMINE_TOKEN"


@pytest.mark.parametrize("first,second", [
    ("unix:///run/docker.sock", "unix:///run/docker.sock/"),
    ("unix:///run/docker.sock", "unix:///run/../run/docker.sock"),
    ("tcp://Web1.example:2376", "tcp://web1.example:2376"),
    ("ssh://deploy@web1", "ssh://deploy@web1:22")])
def test_one_engine_spelled_twice_in_hosts_is_refused_naming_both(first, second):
    # Walking the README: a trailing '/' made one engine two hosts, deployed twice over.
    text = errors_of({**GOOD, "services": {"billing": {
        "image": "billing", "backend": {"ports": {"8080": "127.0.0.1:18080"},
                                        "hosts": [first, {"engine": second,
                                                          "address": "127.0.0.3"}]}}}})
    assert (f"services.billing.backend.hosts: an engine is named twice: {first!r} and "
            f"{second!r} name the same engine") in text


def test_two_engines_on_other_ports_or_users_are_two_hosts():
    cfg = configuration.parse({**GOOD, "services": {"billing": {
        "image": "billing", "backend": {"hosts": ["tcp://web1:2376", "tcp://web1:2377",
                                                  "ssh://a@web1", "ssh://b@web1"]}}}})
    assert len(cfg.service("billing", "staging").backend.hosts) == 4


def hosts_service(ports, *hosts):
    return {**GOOD, "services": {"billing": {
        "image": "billing", "health": {"url": "http://127.0.0.1:18080/health"},
        "backend": {"ports": ports, "hosts": list(hosts)}}}}


def test_a_remote_host_checked_on_a_port_published_on_its_loopback_only_is_refused():
    # Walking the README: its own example checked web1:18080 with 127.0.0.1:18080 published.
    text = errors_of(hosts_service({"8080": "127.0.0.1:18080"}, "ssh://deploy@web1"))
    assert ("services.billing: backend.hosts: ssh://deploy@web1 is checked at web1, but port "
            "18080 is published on a loopback address only") in text
    text = errors_of(hosts_service({"8080": "127.0.0.1:18080"},
                                   {"engine": "unix:///run/b.sock", "address": "10.0.0.5"}))
    assert "checked at 10.0.0.5, but port 18080" in text


@pytest.mark.parametrize("ports,hosts", [
    ({"8080": "18080"}, ["ssh://deploy@web1", "tcp://10.0.0.12:2376"]),
    ({"8080": "0.0.0.0:18080", "9090": "127.0.0.1:19090"}, ["ssh://deploy@web1"]),
    ({"8080": "127.0.0.1:18080"}, ["unix:///run/a.sock",
                                   {"engine": "unix:///run/b.sock", "address": "127.0.0.2"}])])
def test_hosts_that_reach_their_checked_port_are_accepted(ports, hosts):
    configuration.parse(hosts_service(ports, *hosts))


def test_an_unknown_key_holding_a_token_says_secrets_go_in_the_environment():
    token = fake_token("bot", "1234-5678-abcdefghijkl")
    text = errors_of({**GOOD, "slack_bot_token": token})
    assert "slack_bot_token: unknown setting; a secret never goes in this file" in text
    assert token not in text and "1234-5678" not in text
    assert "chanel: unknown setting (check the spelling)" in errors_of({**GOOD, "chanel": "#x"})
    http = {"url": "http://127.0.0.1:8080/health"}
    text = errors_of({**GOOD, "services": {"billing": {
        "image": "billing", "health": http, "http_auth": {"bearer_token_envv": "X"}}}})
    assert "http_auth.bearer_token_envv: unknown setting (check the spelling)" in text
