"""A second Docker engine standing in for a second host, started by the test session itself:
scripts/dockerd.sh with a folder, bridge and subnet of its own and no iptables (the first
engine's chains stay untouched), stopped by the PID in its pidfile at the end.

Settings (environment), for a developer whose machine already uses the defaults:
  DEPLOYBOT_HOST2_DIR          its folder (default: a new /tmp/dbh2-XXXXXXXX); an engine already
                               running there is used and left running
  DEPLOYBOT_HOST2_BRIDGE       its bridge (default dbot-host2)
  DEPLOYBOT_HOST2_BRIDGE_CIDR  the bridge's address (default 172.26.0.1/24: CI's engine uses
                               172.28, the developer's 172.27)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import docker

DOCKERD_SH = Path(__file__).resolve().parents[2] / "scripts" / "dockerd.sh"


class EngineUnavailable(Exception):
    pass


def _alive_dockerd(pidfile: Path) -> bool:
    try:
        pid = int(pidfile.read_text().strip())
        return Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd"
    except (OSError, ValueError):
        return False


class SecondEngine:
    def __init__(self) -> None:
        given = os.environ.get("DEPLOYBOT_HOST2_DIR", "")
        self.dir = Path(given or tempfile.mkdtemp(prefix="dbh2-", dir="/tmp"))
        self.own_dir = not given
        self.bridge = os.environ.get("DEPLOYBOT_HOST2_BRIDGE", "dbot-host2")
        self.cidr = os.environ.get("DEPLOYBOT_HOST2_BRIDGE_CIDR", "172.26.0.1/24")
        self.docker_host = f"unix://{self.dir}/docker.sock"
        self.started_here = False
        self.client: docker.DockerClient | None = None

    def _script(self, action: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "DEPLOYBOT_DOCKER_DIR": str(self.dir),
               "DEPLOYBOT_DOCKER_BRIDGE": self.bridge,
               "DEPLOYBOT_DOCKER_BRIDGE_CIDR": self.cidr, "DEPLOYBOT_DOCKER_IPTABLES": "false"}
        return subprocess.run([str(DOCKERD_SH), action], env=env, capture_output=True,
                              text=True, timeout=120, check=False)

    def start(self) -> docker.DockerClient:
        if not _alive_dockerd(self.dir / "docker.pid"):
            taken = subprocess.run(["ip", "link", "show", self.bridge], capture_output=True,
                                   timeout=10, check=False)
            if taken.returncode == 0:
                raise EngineUnavailable(
                    f"the bridge {self.bridge} exists already: another engine may use it; "
                    "give this one another (DEPLOYBOT_HOST2_BRIDGE, DEPLOYBOT_HOST2_BRIDGE_CIDR)")
            self.started_here = True
        done = self._script("start")
        if done.returncode != 0:
            raise EngineUnavailable(f"{DOCKERD_SH} start failed (exit {done.returncode}):\n"
                                    f"{done.stderr}")
        self.client = docker.DockerClient(base_url=self.docker_host, timeout=60)
        return self.client

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if not self.started_here:
            return
        done = self._script("stop")
        if done.returncode != 0:
            raise EngineUnavailable(f"{DOCKERD_SH} stop failed (exit {done.returncode}):\n"
                                    f"{done.stderr}")
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
