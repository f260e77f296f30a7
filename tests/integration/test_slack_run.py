"""`deploybot run`: Socket Mode against a local websocket server, HTTP mode on 127.0.0.1, and
the clear refusal to start with missing or wrong tokens."""

from __future__ import annotations

import argparse
import json
import queue
import threading
import time
import uuid
from types import SimpleNamespace

import pytest
import yaml
from websockets.sync.server import serve as ws_serve

from bot.errors import ConfigError
from bot.store import Store
from fakes.slack_api import FakeSlack, SlackRequests
from fakes.slack_harness import ALICE, ready_ticket, slack_config
from handlers import cli
from handlers.slack_app import serve

BOT, APP = "xoxb-test", "xapp-test-token"


def run_args(http: bool = False, port: int = 0) -> argparse.Namespace:
    return argparse.Namespace(http=http, host="127.0.0.1", port=port)


class SocketModeServer:
    """Slack's Socket Mode end: says hello, pushes envelopes, collects the acks. With several
    connections (replicas), envelopes are dealt out to them in turn, as Slack spreads events
    over an app's connections."""

    def __init__(self, *, handler=None, process_request=None) -> None:
        self.outbox: queue.Queue[dict] = queue.Queue()  # before anyone connects: the first takes
        self.acks: dict[str, dict] = {}
        self.acked_by: dict[str, int] = {}  # envelope id -> connection number (1, 2, ...)
        self.connected = threading.Event()
        self._queues: list[queue.Queue[dict]] = []
        self._turn = 0
        self._lock = threading.Lock()
        self.server = ws_serve(handler or self._session, "127.0.0.1", 0,
                               process_request=process_request)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.socket.getsockname()[1]}/link/?ticket=test"

    @property
    def sessions(self) -> int:
        return len(self._queues)

    def _session(self, ws) -> None:
        mine: queue.Queue[dict] = queue.Queue()
        with self._lock:
            self._queues.append(mine)
            number = len(self._queues)
        ws.send(json.dumps({"type": "hello", "num_connections": number,
                            "debug_info": {"host": "fake"}, "connection_info": {"app_id": "A0"}}))
        self.connected.set()
        while True:
            for source in (mine, self.outbox):
                try:
                    ws.send(json.dumps(source.get_nowait()))
                except queue.Empty:
                    pass
            try:
                message = ws.recv(timeout=0.05)
            except TimeoutError:
                continue
            except Exception:
                return
            data = json.loads(message)
            if "envelope_id" in data:
                self.acks[data["envelope_id"]] = data
                self.acked_by[data["envelope_id"]] = number

    def push(self, envelope_type: str, payload: dict, retry_attempt: int | None = None) -> str:
        envelope_id = uuid.uuid4().hex
        envelope = {"envelope_id": envelope_id, "type": envelope_type, "payload": payload,
                    "accepts_response_payload": envelope_type != "events_api"}
        if retry_attempt is not None:
            envelope.update(retry_attempt=retry_attempt, retry_reason="timeout")
        with self._lock:
            if len(self._queues) > 1:
                self._queues[self._turn % len(self._queues)].put(envelope)
                self._turn += 1
            else:
                self.outbox.put(envelope)
        return envelope_id

    def wait_ack(self, envelope_id: str, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while envelope_id not in self.acks:
            assert time.monotonic() < deadline, f"no ack for envelope {envelope_id}"
            time.sleep(0.02)
        return self.acks[envelope_id]

    def __enter__(self) -> "SocketModeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.thread.join(timeout=5)


@pytest.fixture
def context(tmp_path, free_port, docker_client):
    config = slack_config(image="demo-web-never-deployed", prefix="dbt-slack-run",
                          ports={"staging": free_port(), "production": free_port()})
    store = Store(tmp_path / "deploybot.db")
    yield SimpleNamespace(config=config, store=store)
    store.close()


def start_serving(context, args, environ):
    stop, ready, failed = threading.Event(), threading.Event(), []

    def target():
        try:
            serve(context, args, environ=environ, stop=stop, on_ready=ready.set)
        except Exception as exc:  # the test reports it
            failed.append(exc)
            ready.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert ready.wait(15), "deploybot did not start"
    assert not failed, failed
    return stop, thread


def test_socket_mode_acks_commands_and_drops_redelivered_events(context):
    with SocketModeServer() as ws, FakeSlack(socket_url=None) as slack:
        slack.socket_url = ws.url
        ticket = ready_ticket(context.store)
        stop, thread = start_serving(context, run_args(), {
            "SLACK_BOT_TOKEN": BOT, "SLACK_APP_TOKEN": APP, "SLACK_API_URL": slack.api_url})
        try:
            assert ws.connected.wait(10)
            command = {"command": "/deploy", "text": "help", "user_id": ALICE,
                       "channel_id": "C0STANDUP", "channel_name": "standup", "team_id": "T0FAKE",
                       "trigger_id": "1.1.help", "api_app_id": "A0"}
            ack = ws.wait_ack(ws.push("slash_commands", command))
            assert "/deploy TICKET-123" in ack["payload"]["text"]

            event = {"type": "event_callback", "team_id": "T0FAKE", "api_app_id": "A0",
                     "event_id": "Ev0SOCKET", "event_time": int(time.time()),
                     "event": {"type": "app_mention", "user": ALICE, "channel": "C0STANDUP",
                               "text": f"<@U0BOT> deploy {ticket} web@v2 --dry-run",
                               "ts": "1.2", "event_ts": "1.2"}}
            ws.wait_ack(ws.push("events_api", event, retry_attempt=0))
            ws.wait_ack(ws.push("events_api", event, retry_attempt=1))
            slack.wait_for(lambda: any("dry run of deploy of web v2" in m.text
                                       for m in slack.top_level()), 15, "the thread")
            slack.wait_for(lambda: context.store.deployments()[0].status.value == "succeeded",
                           30, "the dry run to finish")
            assert len(context.store.deployments()) == 1, "the redelivery started nothing"
        finally:
            stop.set()
            thread.join(timeout=30)
        assert not thread.is_alive()


def test_http_mode_serves_signed_requests_on_loopback(context, free_port):
    port = free_port()
    with FakeSlack() as slack:
        stop, thread = start_serving(context, run_args(http=True, port=port), {
            "SLACK_BOT_TOKEN": BOT, "SLACK_SIGNING_SECRET": "s3cret", "SLACK_API_URL": slack.api_url})
        send = SlackRequests(f"http://127.0.0.1:{port}/slack/events", "s3cret")
        try:
            answer = send.command("help", user=ALICE)
            assert answer.status_code == 200 and "/rollback" in answer.json()["text"]
            assert SlackRequests(send.url, "wrong").command("help", user=ALICE).status_code == 401
        finally:
            send.close()
            stop.set()
            thread.join(timeout=30)
        assert not thread.is_alive()


@pytest.mark.parametrize("http, environ, says", [
    (False, {}, "SLACK_BOT_TOKEN, SLACK_APP_TOKEN not set"),
    (False, {"SLACK_BOT_TOKEN": BOT}, "SLACK_APP_TOKEN not set"),
    (True, {"SLACK_BOT_TOKEN": BOT}, "SLACK_SIGNING_SECRET not set"),
    (False, {"SLACK_BOT_TOKEN": "xapp-swapped", "SLACK_APP_TOKEN": "xoxb-swapped"},
     "not a bot token"),
])
def test_missing_tokens_stop_the_start_with_a_clear_message(context, http, environ, says):
    with pytest.raises(ConfigError) as caught:
        serve(context, run_args(http=http), environ=environ)
    assert says in caught.value.message


@pytest.mark.parametrize("which", ["SLACK_BOT_TOKEN", "SLACK_APP_TOKEN"])
def test_wrong_token_exits_non_zero_without_showing_it(tmp_path, free_port, monkeypatch, capsys,
                                                       which):
    config = tmp_path / "deploybot.yaml"
    config.write_text(yaml.safe_dump({
        "environments": {"staging": {}},
        "services": {"web": {"image": "demo-web-never-deployed",
                             "backend": {"container_name": "dbt-slack-never"}}}}))
    wrong = {"SLACK_BOT_TOKEN": "xoxb-wrongval", "SLACK_APP_TOKEN": "xapp-wrong-value"}
    with FakeSlack(socket_url="ws://127.0.0.1:9/none") as slack:
        monkeypatch.setenv("DEPLOYBOT_DB", str(tmp_path / "deploybot.db"))
        monkeypatch.setenv("SLACK_API_URL", slack.api_url)
        monkeypatch.setenv("SLACK_BOT_TOKEN", wrong[which] if which == "SLACK_BOT_TOKEN" else BOT)
        monkeypatch.setenv("SLACK_APP_TOKEN", wrong[which] if which == "SLACK_APP_TOKEN" else APP)
        code = cli.main(["--config", str(config), "run"])
    err = capsys.readouterr().err
    assert code != 0
    assert f"Slack refused {which} (invalid_auth)" in err
    assert "wrong-secret" not in err and "wrong-value" not in err
