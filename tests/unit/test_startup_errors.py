"""Start-up errors that used to be tracebacks or false greens (issue 11, part 7): a missing
http_auth.ca_file, no kubeconfig for a Kubernetes service, Bolt's warning on every start."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import yaml

from backends.deploy.kubernetes import KubernetesBackend
from backends.monitoring.probe import HttpxProbe
from bot import config as configuration
from bot.checks import check_infrastructure
from bot.config import HttpAuth
from bot.errors import ConfigError
from bot.models import CheckStatus
from bot.store import Store
from fakes.slack_api import FakeSlack
from fakes.slack_harness import slack_config
from handlers import cli
from handlers.slack_app import SlackFrontEnd, web_client

TOKEN = "xoxb-startuptesttoken"


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYBOT_DB", str(tmp_path / "deploybot.db"))
    for name in ("DEPLOYBOT_CONFIG", "DEPLOYBOT_USER", "SLACK_BOT_TOKEN", "KUBECONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    return tmp_path


def write_config(path, **service) -> str:
    path.write_text(yaml.safe_dump({
        "tracker": {"kind": "local"}, "environments": {"staging": {}},
        "services": {"web": {"image": "demo-web", **service}},
        "people": {"alice": {"tracker": "alice"}}}))
    return str(path)


@pytest.mark.parametrize("argv", [["status"], ["check-config", "--live"],
                                  ["deploy", "DEMO-1", "web@v2", "--dry-run"]])
def test_a_missing_ca_file_is_a_configuration_error_not_a_traceback(isolated, capsys, argv):
    missing = isolated / "no-such-ca.pem"
    path = write_config(isolated / "c.yaml",
                        health={"url": "https://127.0.0.1:9/health"},
                        http_auth={"bearer_token_env": "WEB_TOKEN", "ca_file": str(missing)})
    assert cli.main([*argv, "--config", path]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"services.web.http_auth.ca_file: {missing} does not exist" in err
    assert "Traceback" not in err


def test_a_ca_file_that_is_a_directory_is_refused_at_load(tmp_path):
    with pytest.raises(ConfigError, match="http_auth.ca_file: .* is not a file"):
        configuration.parse({"environments": {"staging": {}}, "services": {"web": {
            "image": "demo-web", "http_auth": {"ca_file": str(tmp_path)}}}})


@pytest.mark.parametrize("content, says", [(None, "No such file"),
                                           ("not a certificate\n", "no PEM certificate")])
def test_a_ca_file_unusable_when_used_is_a_clear_error(tmp_path, content, says):
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_text(content)
    # validated at load, then gone or replaced by the time it is used
    auth = HttpAuth.model_construct(bearer_token_env=None, bearer_token_file=None,
                                    ca_file=str(ca))
    with pytest.raises(ConfigError, match=f"http_auth.ca_file {ca}: .*{says}"):
        HttpxProbe(auth_by_origin={"https://127.0.0.1:9": auth})


def kubernetes_service(tmp_path):
    cfg = configuration.parse({
        "environments": {"staging": {}},
        "services": {"web": {"image": "demo-web", "backend": {
            "kind": "kubernetes", "namespace": "shop",
            "kubeconfig": str(tmp_path / "no-kubeconfig")}}}})
    return cfg


def test_no_kubeconfig_fails_infrastructure_health_instead_of_first_deployment(tmp_path):
    cfg = kubernetes_service(tmp_path)
    backend = KubernetesBackend("web", "staging", cfg.service("web", "staging"))
    ctx = SimpleNamespace(config=cfg, deployment=SimpleNamespace(environment="staging",
                                                                service="web"),
                          backend_for=lambda name: backend, probe=None)
    outcome = check_infrastructure(ctx)
    assert outcome.status is CheckStatus.FAILED
    assert "not running yet" not in outcome.reason
    assert f"cannot reach the API: no kubeconfig at {tmp_path / 'no-kubeconfig'}" in \
        outcome.reason


def test_status_says_the_kubernetes_api_cannot_be_reached(isolated, capsys):
    path = write_config(isolated / "c.yaml", backend={
        "kind": "kubernetes", "namespace": "shop", "kubeconfig": str(isolated / "nope")})
    assert cli.main(["status", "--config", path]) == cli.EXIT_OK
    out = capsys.readouterr().out
    running = out.split("Running now:")[1]
    assert "cannot reach the API: no kubeconfig at" in running and "staging" in running


def test_starting_the_slack_front_end_does_not_warn_about_an_unused_token(
        tmp_path, monkeypatch, caplog):
    # Bolt reads SLACK_BOT_TOKEN from the environment itself, as on every real start.
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    config = slack_config(image="demo-web", ports={"staging": 1, "production": 2},
                          prefix="startup")
    with FakeSlack(bot_token=TOKEN) as slack:
        store = Store(tmp_path / "d.db")
        caplog.set_level(logging.WARNING, logger="deploybot.slack.bolt")
        front = SlackFrontEnd(config, store, web_client(TOKEN, slack.api_url))
        try:
            assert not [r for r in caplog.records if "will be unused" in r.getMessage()]
            # a different token in the environment really is unused: that still warns
            monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-anothertesttoken")
            other = SlackFrontEnd(config, store, web_client(TOKEN, slack.api_url))
            other.close()
            assert [r for r in caplog.records if "will be unused" in r.getMessage()]
        finally:
            front.close()
