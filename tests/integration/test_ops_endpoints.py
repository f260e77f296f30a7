"""`deploybot run` serves /healthz, /readyz and /metrics: in Socket Mode on --metrics-port, in
HTTP mode next to the Slack endpoint. Ready only once Slack is connected; gone when it stops."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families
from websockets.protocol import State

from fakes.monitoring import alert_exprs, dashboard_exprs, exposed_names, queried_metrics
from fakes import waiting
from fakes.processes import stop as stop_process
from fakes.slack_api import FakeSlack, SlackRequests
from fakes.slack_harness import ALICE, ready_ticket
from handlers.slack_app import serve
from test_slack_run import SocketModeServer, context  # noqa: F401 - context: a fixture

ROOT = Path(__file__).resolve().parents[2]
BOT, APP = "xoxb-test", "xapp-test-token"  # what FakeSlack accepts


class GatedSocketModeServer(SocketModeServer):
    """Holds every websocket handshake until `gate` is set: Slack not connected yet."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        super().__init__(process_request=lambda connection, request: self._hold())

    def _hold(self) -> None:
        self.gate.wait(30)
        return None


class DroppingSocketModeServer(SocketModeServer):
    """Slack's end going away: `down` closes the open connection and refuses new handshakes
    (503) until it is cleared, as during a Slack incident or a network cut."""

    def __init__(self) -> None:
        self.down = threading.Event()
        super().__init__(handler=self._serve_unless_down, process_request=self._refuse_when_down)

    def _refuse_when_down(self, connection, request):
        return connection.respond(503, "Slack is down\n") if self.down.is_set() else None

    def _serve_unless_down(self, ws) -> None:
        def close_when_down() -> None:
            while not self.down.wait(0.1):
                if ws.state is State.CLOSED:
                    return
            ws.close()
        threading.Thread(target=close_when_down, daemon=True).start()
        self._session(ws)


def start(context, args, environ):
    stop, failed = threading.Event(), []

    def target():
        try:
            serve(context, args, environ=environ, stop=stop)
        except Exception as exc:  # the test reports it
            failed.append(exc)
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return stop, thread, failed


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=5)


def wait_until(predicate, timeout: float, what: str, failed: list):
    """As fakes.waiting's, failing at once when the server thread failed; a refused
    connection is "not yet"."""
    def attempt():
        assert not failed, failed
        try:
            return predicate()
        except httpx.TransportError:
            return None
    return waiting.wait_until(attempt, timeout, what, every=0.05)


def scrape(url: str) -> dict[tuple, float]:
    """/metrics as Prometheus reads it: {(sample name, sorted labels...): value}."""
    answer = get(url)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return {(s.name, *sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def refused(url: str) -> bool:
    try:
        get(url)
    except httpx.ConnectError:
        return True
    return False


def test_socket_mode_is_ready_once_connected_and_stops_serving_when_it_stops(context,
                                                                               free_port):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = argparse.Namespace(http=False, host="127.0.0.1", port=0, metrics_host="127.0.0.1",
                              metrics_port=port)
    with GatedSocketModeServer() as ws, FakeSlack(socket_url=None) as slack:
        slack.socket_url = ws.url
        stop, thread, failed = start(context, args, {
            "SLACK_BOT_TOKEN": BOT, "SLACK_APP_TOKEN": APP, "SLACK_API_URL": slack.api_url})
        try:
            wait_until(lambda: get(f"{base}/healthz").status_code == 200, 15, "/healthz", failed)
            before = get(f"{base}/readyz")
            assert before.status_code == 503
            assert before.json()["ready"] is False
            assert before.json()["checks"]["slack"] == "Socket Mode not connected"
            assert before.json()["checks"]["store"] == "ok"
            ws.gate.set()
            after = wait_until(lambda: (lambda r: r if r.status_code == 200 else None)(
                get(f"{base}/readyz")), 15, "/readyz 200", failed)
            assert after.json() == {"ready": True, "checks": {"store": "ok", "slack": "ok",
                                                              "scheduler": "ok"}}
            assert get(f"{base}/slack/events").status_code == 404

            # a deployment through the pipeline (a dry run, from a mention) is counted
            ticket = ready_ticket(context.store)
            ws.wait_ack(ws.push("events_api", {
                "type": "event_callback", "team_id": "T0FAKE", "api_app_id": "A0",
                "event_id": "Ev0OPS", "event_time": 1,
                "event": {"type": "app_mention", "user": ALICE, "channel": "C0STANDUP",
                          "text": f"<@U0BOT> deploy {ticket} web@v2 --dry-run", "ts": "1.2",
                          "event_ts": "1.2"}}))
            slack.wait_for(lambda: [d.status.value for d in context.store.deployments()]
                           == ["succeeded"], 30, "the dry run to finish")
            text = get(f"{base}/metrics").text
            missing = queried_metrics(dashboard_exprs() + alert_exprs()) - exposed_names(text)
            assert not missing, f"the dashboard or alerts query what is not exposed: {missing}"
            scraped = scrape(f"{base}/metrics")
            assert scraped[("deploybot_deployments_total", ("dry_run", "true"),
                            ("environment", "staging"), ("kind", "deploy"),
                            ("outcome", "succeeded"), ("service", "web"))] == 1
            assert scraped[("deploybot_ready",)] == 1
            assert scraped[("deploybot_slack_api_calls_total", ("method", "auth.test"),
                            ("outcome", "ok"))] >= 1
            assert scraped[("deploybot_slack_api_calls_total", ("method", "chat.postMessage"),
                            ("outcome", "ok"))] >= 1
        finally:
            ws.gate.set()
            stop.set()
            thread.join(timeout=30)
        assert not thread.is_alive() and not failed, failed
    assert refused(f"{base}/healthz"), "the endpoints stop with the process"


def test_readiness_follows_the_socket_mode_connection_down_and_back(context, free_port):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = argparse.Namespace(http=False, host="127.0.0.1", port=0, metrics_host="127.0.0.1",
                              metrics_port=port)
    ready = lambda: (lambda r: r if r.status_code == 200 else None)(get(f"{base}/readyz"))  # noqa: E731
    not_ready = lambda: (lambda r: r if r.status_code == 503 else None)(get(f"{base}/readyz"))  # noqa: E731
    with DroppingSocketModeServer() as ws, FakeSlack(socket_url=None) as slack:
        slack.socket_url = ws.url
        stop, thread, failed = start(context, args, {
            "SLACK_BOT_TOKEN": BOT, "SLACK_APP_TOKEN": APP, "SLACK_API_URL": slack.api_url})
        try:
            wait_until(ready, 15, "/readyz 200", failed)
            ws.down.set()  # the connection closes and reconnecting is refused
            answer = wait_until(not_ready, 30, "/readyz 503 after the connection dropped", failed)
            assert answer.json()["checks"]["slack"] == "Socket Mode not connected"
            assert get(f"{base}/healthz").status_code == 200, "alive: only not ready"
            ws.down.clear()  # Slack is back: the client reconnects by itself
            wait_until(ready, 60, "/readyz 200 after reconnecting", failed)
        finally:
            ws.down.clear()
            stop.set()
            thread.join(timeout=30)
        assert not thread.is_alive() and not failed, failed


def test_http_mode_serves_them_next_to_the_slack_endpoint(context, free_port):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = argparse.Namespace(http=True, host="127.0.0.1", port=port)
    with FakeSlack() as slack:
        stop, thread, failed = start(context, args, {
            "SLACK_BOT_TOKEN": BOT, "SLACK_SIGNING_SECRET": "s3cret",
            "SLACK_API_URL": slack.api_url})
        send = SlackRequests(f"{base}/slack/events", "s3cret")
        try:
            ready = wait_until(lambda: (lambda r: r if r.status_code == 200 else None)(
                get(f"{base}/readyz")), 15, "/readyz 200", failed)
            assert ready.json()["checks"] == {"store": "ok", "slack": "ok", "scheduler": "ok"}
            health = get(f"{base}/healthz").json()  # served in this process
            assert health == {"alive": True, "leader": True, "replica": health["replica"]}
            assert health["replica"].split("/")[1] == str(os.getpid())
            scraped = scrape(f"{base}/metrics")
            assert scraped[("deploybot_store_up",)] == 1
            assert scraped[("deploybot_locks_held", ("kind", "manual"))] == 0
            assert send.command("help", user=ALICE).status_code == 200, "Slack still answered"
        finally:
            send.close()
            stop.set()
            thread.join(timeout=30)
        assert not thread.is_alive() and not failed, failed
    assert refused(f"{base}/healthz")


def test_the_command_in_socket_mode_takes_the_port_from_the_environment_and_stops_on_sigterm(
        tmp_path, free_port):
    """As a container runs it: `deploybot run`, DEPLOYBOT_METRICS_PORT, then SIGTERM."""
    config = tmp_path / "deploybot.yaml"
    config.write_text(yaml.safe_dump({
        "environments": {"staging": {}},
        "services": {"web": {"image": "demo-web-never-deployed",
                             "backend": {"container_name": "dbt-ops-never"}}}}))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with SocketModeServer() as ws, FakeSlack(socket_url=None) as slack:
        slack.socket_url = ws.url
        env = {**os.environ, "PYTHONPATH": str(ROOT), "DEPLOYBOT_DB": str(tmp_path / "bot.db"),
               "DEPLOYBOT_METRICS_PORT": str(port), "SLACK_BOT_TOKEN": BOT,
               "SLACK_APP_TOKEN": APP, "SLACK_API_URL": slack.api_url}
        proc = subprocess.Popen([sys.executable, "-m", "handlers.cli", "--config", str(config),
                                 "run"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
        try:
            ready = wait_until(lambda: proc.poll() is None and (
                lambda r: r if r.status_code == 200 else None)(get(f"{base}/readyz")), 30,
                "/readyz 200 from the process", [])
            assert ready.json()["ready"] is True
            assert "deploybot_store_up 1.0" in get(f"{base}/metrics").text
        finally:
            output = stop_process(proc)
    assert proc.returncode == 0, output
    assert f"/healthz /readyz /metrics on http://127.0.0.1:{port}" in output
    assert refused(f"{base}/healthz")
