"""Health URLs behind the Kubernetes API server's proxy need a bearer token; others get none."""

from __future__ import annotations

import pytest

from backends.monitoring.probe import HttpxProbe
from bot import config as configuration
from bot.verify import detailed_url
from fakes.token_server import token_server


@pytest.fixture
def server():
    with token_server("s3cret") as (base, seen):
        yield base, seen


def config_for(base: str, auth: dict | None):
    svc = {"image": "web", "health": {"url": f"{base}/api/v1/namespaces/shop/services/web:8080/proxy/health",
                                      "detailed_path": "detailed"}}
    if auth:
        svc["http_auth"] = auth
    return configuration.parse({"environments": {"prod": {}}, "services": {"web": svc}})


def test_health_behind_the_proxy_carries_the_token_from_the_environment(server):
    base, seen = server
    cfg = config_for(base, {"bearer_token_env": "KUBE_TOKEN"})
    probe = HttpxProbe.for_config(cfg, {"KUBE_TOKEN": "s3cret"})
    result = probe.get(str(cfg.service("web", "prod").health.url), 5)
    assert result.status_code == 200 and seen == ["Bearer s3cret"]


def test_token_file_is_read_at_each_probe(server, tmp_path):
    base, _ = server
    token = tmp_path / "token"
    token.write_text("old\n")
    cfg = config_for(base, {"bearer_token_file": str(token)})
    probe = HttpxProbe.for_config(cfg, {})
    url = str(cfg.service("web", "prod").health.url)
    assert probe.get(url, 5).status_code == 401
    token.write_text("s3cret\n")
    assert probe.get(url, 5).status_code == 200


def test_missing_token_is_said_and_not_sent(server):
    base, seen = server
    cfg = config_for(base, {"bearer_token_env": "KUBE_TOKEN"})
    result = HttpxProbe.for_config(cfg, {}).get(str(cfg.service("web", "prod").health.url), 5)
    assert result.status_code is None and "no bearer token" in result.error and seen == []


def test_services_without_auth_send_no_token(server):
    base, seen = server
    cfg = config_for(base, None)
    assert HttpxProbe.for_config(cfg, {"KUBE_TOKEN": "s3cret"}).get(f"{base}/health", 5).status_code == 401
    assert seen == [None]


def test_relative_detailed_path_stays_below_the_proxy_path():
    url = "https://127.0.0.1:6443/api/v1/namespaces/shop/services/web:8080/proxy/health"
    assert detailed_url(url, "detailed") == url + "/detailed"
    assert detailed_url(url, "/health/detailed") == "https://127.0.0.1:6443/health/detailed"


def test_one_token_source_only():
    with pytest.raises(configuration.ConfigError, match="not both"):
        config_for("http://127.0.0.1:1", {"bearer_token_env": "A", "bearer_token_file": "/x"})


def test_a_staged_version_checked_on_its_own_address_gets_the_services_token(server):
    from bot.staged import DirectProbe, direct_service

    base, seen = server
    address = base.removeprefix("http://")
    svc = {"image": "web", "health": {"url": "https://web.example.com/health"},
           "http_auth": {"bearer_token_env": "WEB_TOKEN"}}
    cfg = configuration.parse({"environments": {"prod": {}}, "services": {"web": svc}})
    web = cfg.service("web", "prod")
    probe = DirectProbe(HttpxProbe.for_config(cfg, {"WEB_TOKEN": "s3cret"}), web, address)
    direct = direct_service(web, address)
    assert probe.get(str(direct.health.url), 5).status_code == 200
    # the detailed health URL is derived from the health URL: the same token
    assert probe.get(detailed_url(str(direct.health.url), "/health/detailed"), 5).status_code == 200
    assert seen == ["Bearer s3cret", "Bearer s3cret"]


def test_a_staged_version_of_a_service_without_auth_gets_no_token(server):
    from bot.staged import DirectProbe

    base, seen = server
    cfg = config_for(base, None)
    probe = DirectProbe(HttpxProbe.for_config(cfg, {"KUBE_TOKEN": "s3cret"}),
                        cfg.service("web", "prod"), base.removeprefix("http://"))
    assert probe.get(f"{base}/health", 5).status_code == 401 and seen == [None]


def test_a_token_that_cannot_be_read_is_named_never_sent(server, tmp_path):
    base, seen = server
    cfg = config_for(base, {"bearer_token_env": "KUBE_TOKEN"})
    url = str(cfg.service("web", "prod").health.url)
    unset = HttpxProbe.for_config(cfg, {}).get(url, 5)
    assert "KUBE_TOKEN is not set" in unset.error
    assert "KUBE_TOKEN is empty" in HttpxProbe.for_config(cfg, {"KUBE_TOKEN": ""}).get(url, 5).error
    gone = tmp_path / "token"
    cfg = config_for(base, {"bearer_token_file": str(gone)})
    missing = HttpxProbe.for_config(cfg, {}).get(url, 5)
    assert missing.status_code is None and f"{gone}: cannot be read" in missing.error
    assert seen == []


def test_http_auth_with_only_a_ca_bundle_sends_no_token(server):
    import certifi

    base, seen = server
    cfg = config_for(base, {"ca_file": certifi.where()})
    assert HttpxProbe.for_config(cfg, {}).get(str(cfg.service("web", "prod").health.url),
                                              5).status_code == 401
    assert seen == [None]
