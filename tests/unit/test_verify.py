"""Detailed health bodies come in several shapes; any component not ok fails."""

from bot.verify import detailed_url, unhealthy_components


def test_components_map():
    assert unhealthy_components({"status": "ok", "components": {"db": "ok", "cache": "down"}}) == ["cache=down"]


def test_spring_style_checks():
    body = {"status": "UP", "checks": {"db": {"status": "UP"}, "disk": {"status": "DOWN"}}}
    assert unhealthy_components(body) == ["disk=DOWN"]


def test_top_level_status_counts():
    assert unhealthy_components({"status": "degraded"}) == ["status=degraded"]


def test_all_ok():
    assert unhealthy_components({"status": "pass", "details": {"a": {"status": "pass"}}}) == []


def test_not_an_object():
    assert unhealthy_components(["ok"]) == ["(body is not a JSON object)"]


def test_detailed_url_replaces_the_path():
    assert detailed_url("http://127.0.0.1:8/health?x=1", "/health/detailed") == "http://127.0.0.1:8/health/detailed"


# -- deciding a failure as soon as it is certain -------------------------------------------------

import pytest  # noqa: E402

from bot import config as configuration  # noqa: E402
from bot.errors import ConfigError  # noqa: E402
from bot.models import BackendStatus, CheckStatus  # noqa: E402
from bot.ports import ProbeResult  # noqa: E402
from bot.verify import wait_healthy  # noqa: E402
from fakes.core import FakeBackend, InstantClock  # noqa: E402

URL = "http://127.0.0.1:9/health"


def service(**verify):
    data = {"tracker": {"kind": "local"}, "environments": {"staging": {}},
            "services": {"web": {"image": "demo-web", "health": {"url": URL},
                                 "verify": {"timeout": 20, "interval": 1, **verify}}}}
    return configuration.parse(data).service("web", "staging")


class Script:
    """Probe answers and engine states in order, one pair per probe; the last repeats."""

    def __init__(self, steps):
        self.steps, self.probes = list(steps), 0

    def _now(self):
        return self.steps[min(self.probes, len(self.steps) - 1)]

    def get(self, url, timeout):
        code = self._now()[0]
        self.probes += 1
        if code is None:
            return ProbeResult(url, None, "", 1.0, "connection refused")
        return ProbeResult(url, code, "", 1.0)

    def status(self):
        _, failing, final = (*self._now(), "", False)[:3]
        running = not failing and self._now()[0] == 200
        return BackendStatus(running=running, version="v2", detail=failing or "running",
                             failing=failing, final=final)


def run(steps, **verify):
    script, clock = Script(steps), InstantClock()
    backend = FakeBackend(running="v2")
    backend.status = script.status
    svc = service(**verify)
    status, why = wait_healthy(svc, backend, script, clock, svc.verify.timeout, svc.verify.interval)
    return status, why, script.probes, clock.t


def test_a_version_answering_500_fails_after_three_probes_not_the_whole_timeout():
    status, why, probes, waited = run([(500,)])
    assert status is CheckStatus.FAILED and probes == 3
    assert waited == 2.0  # first failing probe -> decision: two intervals, not 20 s
    assert "up and failing 3 probes in a row" in why and "answered 500" in why


def test_not_up_yet_waits_out_the_timeout():
    status, why, probes, waited = run([(None,)])
    assert status is CheckStatus.FAILED and waited == 20.0 and probes == 21
    assert "still after 20 s" in why


def test_a_slow_start_that_comes_up_passes():
    status, why, probes, _ = run([(None,)] * 5 + [(200,)])
    assert status is CheckStatus.PASSED and probes == 6


def test_only_failures_in_a_row_count():
    steps = [(None,), (500,), (500,), (None,), (503,), (200, "container exited (exit code 1)"),
             (500,)]
    status, why, probes, waited = run(steps)
    assert status is CheckStatus.FAILED and probes == 7 and waited == 6.0
    assert "3 probes in a row" in why


def test_the_engine_saying_exited_or_unhealthy_counts_without_an_http_answer():
    status, why, probes, _ = run([(None, "container exited (exit code 1)")], failing_probes=2)
    assert status is CheckStatus.FAILED and probes == 2 and "container exited" in why


def test_an_engine_that_gave_up_decides_at_the_first_probe():
    status, why, probes, waited = run([(None, "progress deadline exceeded", True)])
    assert status is CheckStatus.FAILED and probes == 1 and waited == 0.0
    assert "gave up" in why


def test_failing_probes_none_waits_out_the_timeout_as_before():
    status, _, probes, waited = run([(500,)], failing_probes=None)
    assert status is CheckStatus.FAILED and waited == 20.0 and probes == 21


@pytest.mark.parametrize("bad", [0, -1, 1001, "x"])
def test_failing_probes_is_validated(bad):
    with pytest.raises(ConfigError, match="failing_probes"):
        service(failing_probes=bad)


def _verified(steps):
    from bot.verify import verify
    script = Script(steps)
    backend = FakeBackend(running="v2")
    backend.status = script.status
    return verify(service(), backend, script, InstantClock(), lambda _: None)


def test_a_rollout_the_engine_failed_while_the_url_answered_200_is_not_called_health():
    result = _verified([(200, "ImagePullBackOff on web-7d9f-x2", True)])
    assert result.failed
    [reason] = result.failure_reasons
    assert reason.startswith("rollout: ") and "health:" not in reason
    assert "answered 200, but the new version failed" in reason and "ImagePullBackOff" in reason


def test_a_health_url_answering_500_is_still_called_health():
    result = _verified([(500,)])
    assert result.failure_reasons[0].startswith("health: ") and "answered 500" in \
        result.failure_reasons[0]
