"""/healthz and /readyz: the readiness checks, the store's probe and the WSGI endpoints."""

from __future__ import annotations

import argparse
import json
import threading

import pytest

from bot.errors import ConfigError
from bot.health import OK, Flag, Readiness, store_check
from bot.store import Store
from handlers import ops_http
from handlers.slack_app import metrics_address


def call(app, path: str, method: str = "GET") -> tuple[str, dict | str]:
    seen = {}

    def start_response(status, headers):
        seen["status"], seen["headers"] = status, dict(headers)
    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": method}, start_response))
    if seen["headers"].get("Content-Type") == "application/json":
        return seen["status"], json.loads(body)
    return seen["status"], body.decode()


def test_ready_only_when_every_check_is_ok_and_the_body_names_what_is_not():
    slack = Flag("Socket Mode not connected")
    readiness = Readiness()
    readiness.add("store", lambda: OK)
    readiness.add("slack", slack)
    app = ops_http.ops_app(readiness)
    assert call(app, "/healthz") == ("200 OK", {"alive": True})
    assert call(app, "/readyz") == ("503 Service Unavailable", {
        "ready": False, "checks": {"store": "ok", "slack": "Socket Mode not connected"}})
    slack.set()
    assert call(app, "/readyz") == ("200 OK", {"ready": True,
                                               "checks": {"store": "ok", "slack": "ok"}})
    slack.clear("stopping")
    assert call(app, "/readyz")[1]["checks"]["slack"] == "stopping"


def test_a_check_that_raises_is_not_ready_with_its_reason():
    readiness = Readiness()

    def broken() -> str:
        raise OSError("disk I/O error")
    readiness.add("store", broken)
    assert readiness.report() == (False, {"store": "OSError: disk I/O error"})
    assert Readiness().report() == (False, {}), "no checks: nothing says it is ready"


def test_other_paths_and_methods():
    app = ops_http.ops_app(Readiness(), fallback=lambda env, sr: (sr("200 OK", []), [b"slack"])[1])
    assert call(app, "/slack/events", "POST") == ("200 OK", "slack")
    assert call(app, "/healthz", "POST")[0] == "405 Method Not Allowed"
    assert call(ops_http.ops_app(Readiness()), "/nothing")[0] == "404 Not Found"


def test_store_probe_answers_and_fails_closed(tmp_path):
    store = Store(tmp_path / "deploybot.db")
    assert store_check(store)() == OK
    store.close()
    (tmp_path / "deploybot.db").unlink()
    with pytest.raises(Exception):
        store.ping(0.5)  # a missing file is not quietly created again
    assert not (tmp_path / "deploybot.db").exists()


@pytest.mark.realtime  # a timed lock wait (libfaketime's shifted clock never ends it)
def test_store_probe_of_a_busy_in_memory_store_times_out():
    store = Store(":memory:")
    assert store.ping(0.1) == store.schema_version
    held, release = threading.Event(), threading.Event()

    def hold():
        with store.transaction():
            held.set()
            release.wait(5)
    worker = threading.Thread(target=hold)
    worker.start()
    held.wait(5)
    try:
        with pytest.raises(TimeoutError):
            store.ping(0.05)
    finally:
        release.set()
        worker.join()


def test_a_file_store_answers_while_this_process_holds_a_write_transaction(tmp_path):
    store = Store(tmp_path / "deploybot.db")
    with store.transaction():  # WAL: a reader on its own connection is not held up
        assert store.ping(0.5) == store.schema_version


@pytest.mark.parametrize("args, environ, expected", [
    ({}, {}, ("127.0.0.1", 9464)),
    ({}, {"DEPLOYBOT_METRICS_HOST": "0.0.0.0", "DEPLOYBOT_METRICS_PORT": "9100"},
     ("0.0.0.0", 9100)),
    ({"metrics_host": "::1", "metrics_port": 0}, {"DEPLOYBOT_METRICS_PORT": "9100"},
     ("::1", 0)),
])
def test_metrics_address(args, environ, expected):
    assert metrics_address(argparse.Namespace(**args), environ) == expected


def test_a_bad_metrics_port_in_the_environment_is_a_clear_error():
    with pytest.raises(ConfigError, match="DEPLOYBOT_METRICS_PORT='nine' is not a port"):
        metrics_address(argparse.Namespace(), {"DEPLOYBOT_METRICS_PORT": "nine"})


def test_a_taken_port_is_a_clear_error():
    first = ops_http.OpsServer.listen(ops_http.ops_app(Readiness()), "127.0.0.1", 0)
    try:
        with pytest.raises(ConfigError, match=f"cannot serve /healthz and /metrics on "
                                              f"127.0.0.1:{first.port}"):
            ops_http.OpsServer.listen(ops_http.ops_app(Readiness()), "127.0.0.1", first.port)
    finally:
        first.stop()


@pytest.mark.realtime  # APScheduler's and the scheduler's timed waits
def test_the_foreground_scheduler_serves_them_with_metrics_port(tmp_path, monkeypatch, free_port):
    import httpx
    import yaml

    from handlers import cli

    config = tmp_path / "deploybot.yaml"
    config.write_text(yaml.safe_dump({
        "environments": {"staging": {}},
        "services": {"web": {"image": "demo-web", "backend": {"container_name": "dbt-never"}}}}))
    monkeypatch.setenv("DEPLOYBOT_DB", str(tmp_path / "deploybot.db"))
    port = free_port()
    args = cli.build_parser().parse_args(["--config", str(config), "scheduler", "--tick", "60",
                                          "--metrics-port", str(port)])
    ctx, stop = cli.Context(args), threading.Event()
    worker = threading.Thread(target=cli.cmd_scheduler, args=(ctx, args, stop))
    worker.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):  # until the scheduler has started (each try waits for its answer)
            try:
                answer = httpx.get(f"{url}/readyz", timeout=5)
            except httpx.ConnectError:
                answer = None
            if answer is not None and answer.status_code == 200:
                break
            stop.wait(0.05)
        assert answer.json() == {"ready": True, "checks": {"store": "ok", "scheduler": "ok"}}
        assert "deploybot_ready 1.0" in httpx.get(f"{url}/metrics", timeout=5).text
    finally:
        stop.set()
        worker.join(30)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=5)


def test_readiness_changes_are_logged_once(caplog):
    slack = Flag("Socket Mode not connected")
    readiness = Readiness()
    readiness.add("slack", slack)
    with caplog.at_level("INFO", logger="deploybot.health"):
        readiness.report()
        readiness.report()
        slack.set()
        readiness.report()
        readiness.report()
    assert [r.getMessage() for r in caplog.records] == [
        "not ready: slack: Socket Mode not connected", "ready"]
