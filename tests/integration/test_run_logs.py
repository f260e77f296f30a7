"""`deploybot run` as a service runs it (issue 11, part 5 and 7): a real process in Socket Mode,
JSON logs on stderr with the deployment's id and ticket, no Bolt warning at the start, a
SIGTERM that says what it stops, no secret on any line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from backends.trackers.local import LocalTracker
from bot.store import Store
from fakes.slack_api import FakeSlack, fake_token
from fakes.slack_harness import ALICE, PEOPLE
from test_slack_run import SocketModeServer

ROOT = Path(__file__).resolve().parents[2]
BOT, APP = fake_token("bot", "runlogs"), fake_token("app", "runlogs")


def test_run_logs_json_lines_and_stops_on_sigterm(tmp_path):
    config = tmp_path / "deploybot.yaml"
    config.write_text(yaml.safe_dump({
        "channel": "#standup", "tracker": {"kind": "local"},
        "environments": {"staging": {}},
        # no engine answers here: the dry run is blocked, which is logged like any other end
        "services": {"web": {"image": "demo-web-never-deployed",
                             "backend": {"container_name": "dbt-run-logs", "timeout": 2}}},
        "people": PEOPLE}))
    db = tmp_path / "deploybot.db"
    store = Store(db)
    tracker = LocalTracker(store)
    ticket = tracker.create_ticket("Ship v2", status="Ready for Production")
    store.close()
    with SocketModeServer() as ws, FakeSlack(bot_token=BOT, app_token=APP) as slack:
        slack.socket_url = ws.url
        env = {**os.environ, "SLACK_BOT_TOKEN": BOT, "SLACK_APP_TOKEN": APP,
               "SLACK_API_URL": slack.api_url, "DEPLOYBOT_DB": str(db),
               "DEPLOYBOT_CONFIG": str(config), "DEPLOYBOT_LOG_FORMAT": "json",
               "DEPLOYBOT_METRICS_PORT": "0",  # any free port: never the default 9464 in tests
               "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock",
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        env.pop("DEPLOYBOT_LOG_LEVEL", None)
        proc = subprocess.Popen([sys.executable, "-m", "handlers.cli", "run"], cwd=tmp_path,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, stdin=subprocess.DEVNULL)
        try:
            assert "deploybot is listening (Socket Mode;" in proc.stdout.readline()
            assert ws.connected.wait(15)
            event = {"type": "event_callback", "team_id": "T0FAKE", "api_app_id": "A0",
                     "event_id": "Ev0RUNLOGS", "event_time": int(time.time()),
                     "event": {"type": "app_mention", "user": ALICE, "channel": "C0STANDUP",
                               "text": f"<@U0BOT> deploy {ticket} web@v2 to staging --dry-run",
                               "ts": "1.2", "event_ts": "1.2"}}
            ws.wait_ack(ws.push("events_api", event))
            check = Store(db)
            try:
                slack.wait_for(lambda: check.deployments() and
                               check.deployments()[0].status.terminal, 60, "the dry run's end")
            finally:
                check.close()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "will be unused" not in err and BOT not in err and APP not in err
    lines = [json.loads(line) for line in err.splitlines()]  # every line is one JSON object
    assert {"timestamp", "level", "logger", "message", "deployment_id", "ticket"} <= \
        set(lines[0])
    ours = [r for r in lines if r["deployment_id"] == 1]
    assert ours and all(r["ticket"] == ticket for r in ours)
    assert any(r["message"].startswith("deploy web@v2 to staging: started (dry run)")
               for r in ours)
    said = [r["message"] for r in lines]
    assert said.index("SIGTERM: shutting down") < said.index("stopping the scheduler") < \
        said.index("stopped")
