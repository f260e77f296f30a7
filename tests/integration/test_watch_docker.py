"""Issue 6's watch window against the real Docker engine, through the `deploybot` command.

Each bad version passes the one-shot verification (or not, for the smoke test) and is caught by a
rule of the watch window, rolled back to the kept container, and the record names the rule with
the numbers beside the baseline. A healthy version passes the same window.
"""

from __future__ import annotations

import sys
import uuid

import pytest
import yaml

from tests.integration.test_docker_deploys import Deploybot
from fakes.people import SHARED_BOX

WINDOW = 5.0
INTEGRITY = ("import sys, urllib.request\n"
             "body = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()\n"
             "print(body)\n"
             "sys.exit(0 if body.strip() == 'ok' else 1)\n")


@pytest.fixture
def watched(docker_client, demo_image, free_port, container_cleanup, tmp_path):
    """Service `dbt-watch-…` with a 5 s watch window; v1 and v2 healthy, the rest bad."""
    for tag, mode in (("v1", "healthy"), ("v2", "healthy"), ("v-500", "smoke-broken"),
                      ("v-slow", "slow"), ("v-logs", "log-errors"),
                      ("v-corrupt", "integrity-broken")):
        demo_image(tag, mode)
    port = free_port()
    name = f"dbt-watch-{uuid.uuid4().hex[:6]}"
    container_cleanup(f"{name}-staging")
    container_cleanup(f"{name}-staging--previous")
    base = f"http://127.0.0.1:{port}"
    config = {
        "tracker": {"kind": "local"},
        **SHARED_BOX,
        "environments": {"staging": {}},
        "services": {name: {
            "image": demo_image.repository,
            "backend": {"kind": "docker", "ports": {"8080": f"127.0.0.1:{port}"},
                        "stop_timeout": 1, "pull": "never", "restart_policy": "no"},
            "health": {"url": f"{base}/health"},
            "smoke": [{"url": f"{base}/api/ping", "contains": "pong"}],
            "metrics_url": f"{base}/metrics",
            "integrity_check": [sys.executable, "-c", INTEGRITY, f"{base}/api/integrity"],
            "integrity_timeout": 10,
            "verify": {"timeout": 8, "interval": 0.2},
            # the floor keeps a loaded machine's slow probes (tens of ms) from tripping the
            # rule; the slow version answers in 250 ms or more
            "watch": {"window": WINDOW, "interval": 0.5, "baseline_window": 1.0,
                      "rules": {"latency_floor_ms": 200}}}},
    }
    bot = Deploybot(tmp_path, config)
    bot.name, bot.base = name, base
    bot("deploy", bot.ready_ticket("v1"), f"{name}@v1")
    return bot


def deploy_bad(bot, version: str, http_get) -> str:
    """Deploy `version`, expect an automatic rollback to v1; return the ticket's record."""
    t = bot.ready_ticket(f"release {version}")
    proc = bot("deploy", t, f"{bot.name}@{version}", check=1)
    assert "rolled_back" in proc.stdout, proc.stdout
    assert http_get(f"{bot.base}/version").text.strip() == "v1"
    d = bot.store().deployments(limit=1)[0]
    assert d.status.value == "rolled_back"
    return bot.comments(t)


def test_a_healthy_version_passes_the_whole_window(watched, http_get):
    bot = watched
    t = bot.ready_ticket("v2")
    out = bot("deploy", t, f"{bot.name}@v2").stdout
    assert "succeeded" in out
    assert http_get(f"{bot.base}/version").text.strip() == "v2"
    record = bot.comments(t)
    assert "- [x] Error rates nominal" in record and "- [x] Response times nominal" in record
    assert "- [x] Monitoring dashboards green" in record
    assert "Error rate 0.0% → 0.0% (baseline + 5.0 pts allowed)" in record
    assert f"integrity check `{sys.executable} -c" in record and "passed" in record


def test_a_version_serving_500s_on_its_smoke_endpoint_is_rolled_back(watched, http_get):
    record = deploy_bad(watched, "v-500", http_get)
    assert "- [ ] Smoke tests passing — FAILED" in record and "api/ping answered 500" in record


def test_a_version_5x_slower_than_the_baseline_is_rolled_back_with_p95_numbers(watched, http_get):
    record = deploy_bad(watched, "v-slow", http_get)
    assert "- [ ] Response times nominal — FAILED: rule 'p95 latency' tripped: p95 " in record
    assert "(×3.0 allowed, floor 200 ms)" in record
    assert "Rule tripped: p95 latency" in record


def test_a_version_logging_a_new_error_pattern_is_rolled_back(watched, http_get):
    record = deploy_bad(watched, "v-logs", http_get)
    assert "- [ ] Monitoring dashboards green — FAILED: rule 'new log errors' tripped" in record
    assert "'error payment provider rejected order #: signature mismatch'" in record


def test_a_version_whose_integrity_check_fails_is_rolled_back(watched, http_get):
    record = deploy_bad(watched, "v-corrupt", http_get)
    assert "rule 'data integrity' tripped" in record
    assert "exited 1: corrupt: 3 orders without a customer" in record


def test_memory_beyond_its_limit_per_docker_stats_is_rolled_back(watched, http_get):
    bot = watched
    config = yaml.safe_load(bot.config_path.read_text())
    config["services"][bot.name]["watch"]["rules"] = {"memory_mb": 0.01}
    bot.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    record = deploy_bad(bot, "v2", http_get)
    assert "rule 'memory' tripped: memory " in record and "(limit 0.01 MiB)" in record


def test_check_config_live_checks_the_monitoring_setup_of_the_running_service(watched):
    bot = watched
    out = bot("check-config", "--live").stdout
    assert f"[ok] {bot.name} in staging: health {bot.base}/health answers 200" in out
    assert f"[ok] {bot.name} in staging: metrics {bot.base}/metrics in Prometheus text format" in out
    config = yaml.safe_load(bot.config_path.read_text())
    config["services"][bot.name].update(metrics_url=f"{bot.base}/version", metrics_required=True)
    bot.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    out = bot("check-config", "--live", check=1).stdout
    assert f"[FAILED] {bot.name} in staging: metrics {bot.base}/version: line 1 is not a metric " \
           "sample: 'v1'" in out
