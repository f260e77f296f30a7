"""The demo service image answers each endpoint as its MODE says, through a 127.0.0.1 port."""

from __future__ import annotations

import uuid

import pytest

from fakes.waiting import wait_until

CONTAINER_PORT = 8080


@pytest.fixture
def run_demo(docker_client, container_cleanup, free_port, wait_for_http):
    """`run_demo(image, environment=None)` -> (container id, base URL on 127.0.0.1).

    Runs like the deploy backends will: restart policy "no", a 1 s stop timeout (PID 1 ignores
    SIGTERM), the port published on 127.0.0.1 only.
    """

    def run(image: str, environment: dict[str, str] | None = None) -> tuple[str, str]:
        name = f"deploybot-test-demo-{uuid.uuid4().hex[:8]}"
        port = free_port()
        api = docker_client.api
        created = api.create_container(
            image,
            name=name,
            environment=environment or {},
            ports=[CONTAINER_PORT],
            stop_timeout=1,
            host_config=api.create_host_config(
                port_bindings={CONTAINER_PORT: ("127.0.0.1", port)},
                restart_policy={"Name": "no"},
            ),
        )
        container_cleanup(name)
        api.start(created["Id"])
        base_url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base_url}/version")
        return created["Id"], base_url

    return run


# mode -> (/health status, /health/detailed status, detailed "status", database, cache, /api/ping status)
EXPECTED = {
    "healthy": (200, 200, "ok", "ok", "ok", 200),
    "unhealthy": (500, 503, "down", "down", "ok", 200),
    "degraded": (200, 200, "ok", "ok", "down", 200),
    "smoke-broken": (200, 200, "ok", "ok", "ok", 500),
}


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_demo_service_answers_as_its_mode_says(mode, demo_image, run_demo, http_get):
    version = f"v7-{mode}"
    _, url = run_demo(demo_image(version, mode=mode))
    health, detailed_code, status, database, cache, ping = EXPECTED[mode]

    response = http_get(f"{url}/health")
    assert response.status_code == health
    if health == 200:
        assert response.text == "ok"

    response = http_get(f"{url}/health/detailed")
    assert response.status_code == detailed_code
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "status": status,
        "version": version,
        "components": {"database": database, "cache": cache},
    }

    response = http_get(f"{url}/version")
    assert (response.status_code, response.text) == (200, version)

    response = http_get(f"{url}/api/ping")
    assert response.status_code == ping
    if ping == 200:
        assert response.text == "pong"

    assert http_get(f"{url}/no-such-page").status_code == 404


def test_greeting_from_the_environment_reaches_the_service(demo_image, run_demo, http_get):
    image = demo_image("v1")
    _, url = run_demo(image, environment={"GREETING": "hello from the env file"})
    response = http_get(f"{url}/api/greeting")
    assert (response.status_code, response.text) == (200, "hello from the env file")

    _, url = run_demo(image)
    assert http_get(f"{url}/api/greeting").status_code == 404


def test_container_is_published_on_loopback_only_and_stops_within_its_timeout(
    docker_client, demo_image, run_demo
):
    container_id, url = run_demo(demo_image("v1"))
    attrs = docker_client.api.inspect_container(container_id)
    bindings = attrs["HostConfig"]["PortBindings"][f"{CONTAINER_PORT}/tcp"]
    assert [binding["HostIp"] for binding in bindings] == ["127.0.0.1"]
    assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "no"
    assert attrs["Config"]["StopTimeout"] == 1

    # StopTimeout (above) bounds the stop: PID 1 ignores SIGTERM, so the engine kills it at the
    # end of that grace (137), which shows the grace was applied without timing it
    docker_client.api.stop(container_id)
    state = docker_client.api.inspect_container(container_id)["State"]
    assert not state["Running"] and state["ExitCode"] == 137, state


@pytest.mark.parametrize(("mode", "health"), [("healthy", "healthy"), ("unhealthy", "unhealthy")])
def test_docker_healthcheck_reports_the_mode(mode, health, docker_client, demo_image, run_demo):
    container_id, _ = run_demo(demo_image(f"v1-{mode}", mode=mode, version="v1"))
    wait_until(lambda: docker_client.api.inspect_container(container_id)["State"]["Health"]["Status"]
               == health, 30, f"Docker's health check to say {health}", every=0.5)


def test_watch_modes_are_slow_log_new_errors_or_fail_their_integrity_check(
        docker_client, demo_image, run_demo, http_get):
    container_id, healthy = run_demo(demo_image("v8-healthy", mode="healthy"))
    _, slow = run_demo(demo_image("v8-slow", mode="slow"))
    logs_id, logging = run_demo(demo_image("v8-log-errors", mode="log-errors"))
    _, corrupt = run_demo(demo_image("v8-integrity-broken", mode="integrity-broken"))

    fast = min(http_get(f"{healthy}/api/ping").elapsed.total_seconds() for _ in range(3))
    took = min(http_get(f"{slow}/api/ping").elapsed.total_seconds() for _ in range(3))
    assert took >= 0.25 and took >= 5 * fast

    assert http_get(f"{logging}/api/ping").text == "pong"
    assert "ERROR payment provider rejected order" in docker_client.api.logs(logs_id).decode()
    assert "ERROR" not in docker_client.api.logs(container_id).decode()

    assert http_get(f"{healthy}/api/integrity").text == "ok"
    assert http_get(f"{corrupt}/api/integrity").text == "corrupt: 3 orders without a customer"


def test_every_mode_serves_its_request_counts_in_prometheus_text_format(demo_image, run_demo,
                                                                        http_get):
    from bot.monitoring_setup import exposition_problem

    _, url = run_demo(demo_image("v8-smoke-broken", mode="smoke-broken"))
    for _ in range(3):
        http_get(f"{url}/api/ping")
    http_get(f"{url}/health")
    response = http_get(f"{url}/metrics")
    assert response.status_code == 200 and exposition_problem(response.text) is None
    assert 'http_requests_total{code="500"} 3' in response.text
    # /version (waited on at start) and /health answered 200; the scrape itself is not counted
    assert 'http_requests_total{code="200"} 2' in response.text
