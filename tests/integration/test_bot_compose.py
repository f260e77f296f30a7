"""deploy/compose.yaml: the bot in Socket Mode under Compose v2, healthy, data on a volume.

A test override puts the container on the host's network (the fake Slack and the Socket Mode
server listen on 127.0.0.1 only) with the metrics port on a free 127.0.0.1 port.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from backends.deploy.compose import find_compose
from bot_image import REPO_ROOT
from fakes.people import PEOPLE
from fakes.slack_api import FakeSlack
from test_slack_run import SocketModeServer

pytestmark = pytest.mark.timeout(1800)  # the first test may build the image (see bot_image.py)

COMPOSE_FILE = REPO_ROOT / "deploy" / "compose.yaml"
BOT, APP = "xoxb-test", "xapp-test-token"  # what FakeSlack accepts
HEALTHY_WITHIN = 90.0


class BotCompose:
    """`compose -p PROJECT -f deploy/compose.yaml -f OVERRIDE ...` with the test's files."""

    def __init__(self, folder: Path, image: str) -> None:
        self.project = f"dbt-bot-compose-{uuid.uuid4().hex[:8]}"
        self.folder, self.image = folder, image
        self.override = folder / "override.yaml"
        self.env = {**os.environ, "DEPLOYBOT_IMAGE": image,
                    "DEPLOYBOT_ENV_FILE": str(folder / "deploybot.env"),
                    "DEPLOYBOT_CONFIG_FILE": str(folder / "deploybot.yaml")}

    def write(self, slack_api_url: str, metrics_port: int) -> None:
        env_file = self.folder / "deploybot.env"
        env_file.write_text(f"SLACK_BOT_TOKEN={BOT}\nSLACK_APP_TOKEN={APP}\n")
        env_file.chmod(0o600)
        config = self.folder / "deploybot.yaml"
        config.write_text(yaml.safe_dump({
            "channel": "#standup", "tracker": {"kind": "local"},
            "environments": {"staging": {}},
            "services": {"web": {"image": "demo-web-never-deployed",
                                 "backend": {"container_name": "dbt-bot-compose-never"}}},
            "people": PEOPLE}))
        config.chmod(0o644)
        # `!reset []`: host networking publishes no ports.
        self.override.write_text(
            "services:\n"
            "  deploybot:\n"
            "    network_mode: host\n"
            "    ports: !reset []\n"
            "    environment:\n"
            f"      SLACK_API_URL: {json.dumps(slack_api_url)}\n"
            "      DEPLOYBOT_METRICS_HOST: 127.0.0.1\n"
            f"      DEPLOYBOT_METRICS_PORT: \"{metrics_port}\"\n"
            "    healthcheck:\n"
            "      interval: 1s\n")

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = [*find_compose().argv, "-p", self.project, "-f", str(COMPOSE_FILE),
                "-f", str(self.override), *args]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, check=False)


@pytest.fixture
def bot_compose(tmp_path, bot_image):
    compose = BotCompose(tmp_path, bot_image)
    yield compose
    down = compose("down", "-v", "--remove-orphans", "--timeout", "10")
    assert down.returncode == 0, down.stderr


def the_container(docker_client, project: str):
    found = docker_client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={project}"})
    assert len(found) == 1, [c.name for c in found]
    return found[0]


def wait_healthy(container, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        container.reload()
        state = container.attrs["State"]
        health = state.get("Health", {})
        if health.get("Status") == "healthy":
            return state
        if state["Status"] in ("exited", "dead") or time.monotonic() > deadline:
            logs = container.logs(tail=60).decode(errors="replace")
            raise AssertionError(f"{container.name} is {state['Status']}, health "
                                 f"{health.get('Status')!r}: {health.get('Log', [])[-2:]}\n{logs}")
        time.sleep(0.5)


def test_compose_file_runs_the_bot_read_only_with_its_data_on_a_volume(bot_compose):
    bot_compose.write("http://127.0.0.1:9/api/", 9464)
    done = bot_compose("config", "--format", "json")
    assert done.returncode == 0, done.stderr
    service = json.loads(done.stdout)["services"]["deploybot"]
    assert service["command"] == ["run"]
    assert service["restart"] == "unless-stopped"
    assert service["read_only"] is True and any(t.startswith("/tmp") for t in service["tmpfs"])
    mounts = {m["target"]: m for m in service["volumes"]}
    assert mounts["/var/lib/deploybot"]["type"] == "volume"
    assert mounts["/etc/deploybot/deploybot.yaml"]["read_only"] is True
    assert "/healthz" in service["healthcheck"]["test"][-1]
    # The tokens come from the env file, not from the compose file.
    assert service["environment"]["SLACK_BOT_TOKEN"] == BOT
    assert "environment" not in yaml.safe_load(COMPOSE_FILE.read_text())["services"]["deploybot"]


def test_compose_up_the_bot_becomes_healthy_and_answers_healthz(bot_compose, docker_client,
                                                                free_port, http_get):
    port = free_port()
    with SocketModeServer() as ws, FakeSlack(socket_url=None) as slack:
        slack.socket_url = ws.url
        bot_compose.write(slack.api_url, port)
        up = bot_compose("up", "-d")
        assert up.returncode == 0, up.stderr

        container = the_container(docker_client, bot_compose.project)
        wait_healthy(container, HEALTHY_WITHIN)
        assert ws.connected.wait(10), "the bot never opened the Socket Mode connection"
        assert http_get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        ready = http_get(f"http://127.0.0.1:{port}/readyz")
        assert ready.status_code == 200, ready.text

        host_config = container.attrs["HostConfig"]
        assert host_config["ReadonlyRootfs"] is True
        assert host_config["RestartPolicy"]["Name"] == "unless-stopped"
        assert container.attrs["Config"]["User"] == "10001:10001"
        # The store was written on the volume, by the non-root user, despite the read-only root.
        code, out = container.exec_run(["python3", "-c",
                                        "import os; s = os.stat(os.environ['DEPLOYBOT_DB']); "
                                        "print(s.st_uid, s.st_size > 0)"])
        assert (code, out.decode().split()) == (0, ["10001", "True"])
