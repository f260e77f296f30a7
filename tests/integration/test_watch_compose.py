"""The watch window on a Docker Compose service: same rules, logs from `docker compose logs`."""

from __future__ import annotations

from bot import config as config_mod
from bot.models import DeploymentStatus
from fakes.people import PEOPLE


def watched_config(env, image: str):
    return config_mod.parse({"tracker": {"kind": "local"}, "environments": {"staging": {}},
                             "people": PEOPLE,
                             "services": {"web": {
        "image": image,
        "backend": {"kind": "compose", "file": str(env.file), "project": env.project,
                    "pull": "never", "timeout": 60, "stop_timeout": 1},
        "health": {"url": f"{env.base}/health"},
        "smoke": [{"url": f"{env.base}/api/ping", "contains": "pong"}],
        "verify": {"timeout": 10, "interval": 0.5},
        # a loaded machine's slow probes (tens of ms) must not trip the latency rule
        "watch": {"window": 4, "interval": 0.5, "baseline_window": 1,
                  "rules": {"latency_floor_ms": 200}}}}}, "test-config")


def test_a_compose_version_logging_a_new_error_pattern_is_rolled_back(compose_env, demo_image,
                                                                      http_get):
    demo_image("v1", "healthy")
    demo_image("v-logs", "log-errors")
    bot = compose_env.bot(watched_config(compose_env, demo_image.repository))
    assert bot.deploy("v1").status is DeploymentStatus.SUCCEEDED
    d = bot.deploy("v-logs")
    assert d.status is DeploymentStatus.ROLLED_BACK
    assert http_get(f"{compose_env.base}/version").text.strip() == "v1"
    assert "rule 'new log errors' tripped" in d.record
    assert "signature mismatch" in d.record
    assert any("new log errors" in a for a in bot.reporter.alerts)


def test_a_healthy_compose_version_passes_the_window(compose_env, demo_image, http_get):
    demo_image("v1", "healthy")
    demo_image("v2", "healthy")
    bot = compose_env.bot(watched_config(compose_env, demo_image.repository))
    assert bot.deploy("v1").status is DeploymentStatus.SUCCEEDED
    d = bot.deploy("v2")
    assert d.status is DeploymentStatus.SUCCEEDED, d.failure
    assert "- [x] Monitoring dashboards green" in d.record
    assert "- [x] Response times nominal" in d.record
