"""`deploybot demo` on the engine at DOCKER_HOST: images, config, tickets and a real first
deployment of DEMO-1 answering on 127.0.0.1; a second run reuses all of it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import docker
import pytest

from bot.models import DeploymentStatus
from bot.store import Store

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS = ("web-staging", "web-staging--previous")  # the demo config's names


def demo(folder: Path, port: int, cwd: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH: run this tree's code, whatever `pip install -e` pointed at last
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DEPLOYBOT_DB", None)
    env.pop("DEPLOYBOT_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "handlers.cli", "demo", "--dir", str(folder),
                           "--port", str(port)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900, stdin=subprocess.DEVNULL)


@pytest.fixture
def demo_port(docker_client, free_port, container_cleanup):
    """A free port for the demo service; the engine must not run the demo's containers yet
    (they are someone else's then: failing beats removing them)."""
    for name in CONTAINERS:
        try:
            docker_client.containers.get(name)
        except docker.errors.NotFound:
            continue
        pytest.fail(f"a container {name} already runs on {os.environ.get('DOCKER_HOST')}: "
                    "this test deploys the demo under that name", pytrace=False)
    for name in CONTAINERS:
        container_cleanup(name)
    return free_port()


def test_demo_deploys_demo_1_and_a_second_run_reuses_everything(tmp_path, demo_port, http_get,
                                                                  docker_client):
    folder = tmp_path / "demo"
    first = demo(folder, demo_port, tmp_path)
    said = first.stdout + first.stderr
    assert first.returncode == 0, said
    assert f"wrote {folder}/deploybot.yaml" in said
    assert "created DEMO-1" in said and "created DEMO-3" in said
    assert "[ok] CQ approval" in said and "[ok] QA PASS" in said
    assert "deployment #1: succeeded" in said and "## Deployment Record" in said
    assert "deploybot deploy DEMO-2 --as alice" in said
    host = os.environ.get("DOCKER_HOST", "")
    if host and host != "unix:///var/run/docker.sock":  # the engine the next commands need
        assert f"export DOCKER_HOST={host}" in said
    assert http_get(f"http://127.0.0.1:{demo_port}/version").text.strip() == "v1"
    # other tests may have tagged the same bytes under their own names too
    assert "demo-web:v1" in docker_client.containers.get("web-staging").image.tags

    second = demo(folder, demo_port, tmp_path)
    said = second.stdout + second.stderr
    assert second.returncode == 0, said
    assert f"reusing {folder}" in said and "deploybot.yaml as it is" in said
    assert "DEMO-1 exists: kept as it is" in said
    assert "DEMO-1 was deployed already (deployment #1)" in said
    assert "Deployment Record" not in said
    store = Store(str(folder / "deploybot.db"))
    try:
        deployments = store.deployments()
        tickets = [r["id"] for r in store.db.query("SELECT id FROM tickets ORDER BY id")]
    finally:
        store.close()
    assert [(d.ticket_id, d.status) for d in deployments] == [
        ("DEMO-1", DeploymentStatus.SUCCEEDED)]
    assert tickets == ["DEMO-1", "DEMO-2", "DEMO-3"]
    assert http_get(f"http://127.0.0.1:{demo_port}/version").text.strip() == "v1"


def test_demo_starts_a_private_engine_that_outlives_it_and_is_stopped_by_its_pid(
        tmp_path, free_port, http_get):
    """The path of a machine where no engine answers: DOCKER_HOST names the private engine's
    socket, which nothing serves yet. Isolated: its own state folder and bridge (a network no
    address or route of the machine uses), no iptables; stopped by the PID in its pidfile."""
    from handlers.demo_engine import PrivateEngine, running_pid

    if os.geteuid() != 0:
        pytest.fail("starting a private Docker engine needs root", pytrace=False)
    state = Path(tempfile.mkdtemp(prefix="dbdemo-", dir="/tmp"))  # short: socket paths
    engine = PrivateEngine(state / "engine", f"dbdt{uuid.uuid4().hex[:8]}")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DOCKER_HOST": engine.host}
    stop_env = {**os.environ, "DEPLOYBOT_DOCKER_DIR": str(engine.dir),
                "DEPLOYBOT_DOCKER_BRIDGE": engine.bridge}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "handlers.cli", "demo", "--dir", str(tmp_path / "demo"),
             "--port", str(port), "--engine-dir", str(engine.dir), "--bridge", engine.bridge],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
            stdin=subprocess.DEVNULL)
        said = done.stdout + done.stderr
        assert done.returncode == 0, said
        pid = running_pid(engine)
        assert pid is not None, f"no dockerd runs from {engine.pidfile} after the demo:\n{said}"
        assert f"starting a private one in {engine.dir} (bridge {engine.bridge})" in said
        assert f"keeps running (pid {pid}" in said and f"kill {pid}" in said
        assert "deployment #1: succeeded" in said
        assert http_get(f"http://127.0.0.1:{port}/version").text.strip() == "v1"
    finally:
        subprocess.run([str(ROOT / "scripts" / "dockerd.sh"), "stop"], env=stop_env,
                       capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        left = running_pid(engine)
        shutil.rmtree(state, ignore_errors=True)
    assert left is None, f"the private engine (pid {left}) did not stop"
    gone = subprocess.run(["ip", "link", "show", engine.bridge], capture_output=True, timeout=10)
    assert gone.returncode != 0, f"bridge {engine.bridge} was left behind"
