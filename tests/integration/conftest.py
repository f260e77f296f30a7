"""Fixtures for the integration tests only. Each section is self-contained; add yours as a new one."""

from __future__ import annotations

# -- registry: a private docker-registry on 127.0.0.1 (scripts/registry.sh) ------------------------

import os as _reg_os
import shutil as _reg_shutil
import subprocess as _reg_subprocess
from pathlib import Path as _RegPath

import pytest as _reg_pytest

_REGISTRY_SCRIPT = _RegPath(__file__).resolve().parents[2] / "scripts" / "registry.sh"


@_reg_pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """`127.0.0.1:PORT` of a registry started for this test session (and stopped after it).

    Fails (never skips) when Debian's docker-registry is missing or does not start.
    """
    if _reg_shutil.which("docker-registry") is None:
        _reg_pytest.fail("docker-registry is not installed: apt-get install docker-registry "
                         "(it is listed in .ci/apt-packages)", pytrace=False)
    state = tmp_path_factory.mktemp("registry")
    env = {**_reg_os.environ, "DEPLOYBOT_REGISTRY_DIR": str(state)}
    env.pop("DEPLOYBOT_REGISTRY_PORT", None)  # let the script pick a free port
    started = _reg_subprocess.run([str(_REGISTRY_SCRIPT), "start"], env=env, capture_output=True,
                                  text=True, timeout=60, stdin=_reg_subprocess.DEVNULL)
    if started.returncode != 0:
        _reg_pytest.fail(f"scripts/registry.sh start failed (exit {started.returncode}):\n"
                         f"{started.stderr}", pytrace=False)
    address = started.stdout.strip().rpartition("=")[2]
    try:
        yield address
    finally:
        _reg_subprocess.run([str(_REGISTRY_SCRIPT), "stop"], env=env, capture_output=True,
                            timeout=60, stdin=_reg_subprocess.DEVNULL)


# -- compose: a compose project per test, and a real Pipeline around it ----------------------------
# Used by test_compose_backend.py and test_images.py.

import uuid as _cmp_uuid
from pathlib import Path as _CmpPath

import yaml as _cmp_yaml


class ComposeRecorder:
    """A Reporter that keeps every event, so tests can read what people would have seen."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.alerts: list[str] = []
        self.records: list[str] = []

    def deployment_started(self, d): ...
    def checklist_updated(self, d, checks): ...
    def gate_requested(self, d, gate): ...
    def gate_decided(self, d, gate): ...
    def blocked(self, d, blockers): self.alerts.append("blocked: " + "; ".join(c.reason for c in blockers))
    def step(self, d, message): self.steps.append(message)
    def alert(self, d, message): self.alerts.append(message)
    def finished(self, d, record): self.records.append(record)


class _NoApprover:
    def request(self, deployment, gate):
        return None


class ComposeBot:
    """handlers.wiring.build_pipeline with a LocalTracker on a Store in the test's folder."""

    def __init__(self, cfg, folder: _CmpPath, environ=None):
        from backends.trackers.local import LocalTracker
        from bot.store import Store
        from handlers.wiring import build_pipeline

        self.store = Store(folder / "deploybot.db")
        self.tracker = LocalTracker(self.store)
        self.reporter = ComposeRecorder()
        self.pipeline = build_pipeline(cfg, self.store, reporter=self.reporter,
                                       approver=_NoApprover(), tracker=self.tracker,
                                       environ=environ)

    def ready_ticket(self, title: str) -> str:
        """A ticket that passes the checklist: ready status, CQ by bob, QA PASS by carol."""
        tid = self.tracker.create_ticket(title, status="Ready for Production")
        self.tracker.add_comment(tid, "CQ approved", author="bob")
        self.tracker.add_comment(tid, "QA PASS", author="carol")
        return tid

    def deploy(self, version: str, title: str | None = None, service: str = "web"):
        tid = self.ready_ticket(title or f"release {version}")
        d = self.pipeline.request_deploy(tid, requested_by="alice", target=f"{service}@{version}")
        return self.pipeline.run(d.id)

    def comments(self, tid: str) -> str:
        return "\n".join(c.body for c in self.tracker.comments(tid))


class ComposeEnv:
    def __init__(self, folder: _CmpPath, port: int, project: str, fallback_image: str):
        self.folder, self.port, self.project = folder, port, project
        self.file = folder / "compose.yml"
        self.base = f"http://127.0.0.1:{port}"
        self.file.write_text(_cmp_yaml.safe_dump({"services": {"web": {
            # deploybot's override file sets the image; the file names a fallback of its own.
            "image": fallback_image,
            "ports": [f"127.0.0.1:{port}:8080"],
            "stop_grace_period": "1s",
        }}}))

    def config(self, image: str, *, backend: dict | None = None, build: dict | None = None):
        """deploybot config: service `web` (kind: compose) in `staging`, health and smoke set."""
        from bot import config as config_mod

        service = {
            "image": image,
            "backend": {"kind": "compose", "file": str(self.file), "project": self.project,
                        "pull": "never", "timeout": 60, "stop_timeout": 1, **(backend or {})},
            "health": {"url": f"{self.base}/health"},
            "smoke": [{"url": f"{self.base}/api/ping", "contains": "pong"}],
            "verify": {"timeout": 10, "interval": 0.5},
        }
        if build:
            service["build"] = build
        from fakes.people import PEOPLE

        return config_mod.parse({"tracker": {"kind": "local"}, "environments": {"staging": {}},
                                 "services": {"web": service}, "people": PEOPLE}, "test-config")

    def bot(self, cfg, environ=None) -> ComposeBot:
        return ComposeBot(cfg, self.folder, environ)

    def down(self) -> None:
        from backends.deploy.compose import find_compose, run_streaming

        run_streaming([*find_compose().argv, "-p", self.project, "-f", str(self.file), "down",
                       "--remove-orphans", "--timeout", "1"], timeout=60)


@_reg_pytest.fixture
def compose_env(tmp_path, free_port, demo_image):
    """A compose file for one demo service `web` on a free 127.0.0.1 port, in a project of its
    own (random name); the project is taken down after the test."""
    env = ComposeEnv(tmp_path, free_port(), f"dbt-compose-{_cmp_uuid.uuid4().hex[:8]}",
                     f"{demo_image.repository}:latest")
    yield env
    env.down()


# -- bot image: deploybot:dev built from this tree (scripts/build-image.sh --base debian) ----------
# Used by test_bot_image.py, test_bot_compose.py and the Kubernetes tests of the bot itself. A test
# that may pay for a cold build should carry @pytest.mark.timeout(1800).

from bot_image import ensure_bot_image as _ensure_bot_image


@_reg_pytest.fixture(scope="session")
def bot_image(docker_client) -> str:
    """`deploybot:dev` (or $DEPLOYBOT_BOT_IMAGE), rebuilt when missing or older than the tree."""
    return _ensure_bot_image(docker_client)
