"""Shared fixtures for tests against a real Docker engine: client, base and demo images, ports, HTTP.

The engine is the project's private one (`scripts/dockerd.sh start`, which prints the
DOCKER_HOST to export); `.ci/run` starts its own. Tests never skip when it is missing: they fail
and say how to start it. Containers publish ports on 127.0.0.1 only and tests reach them only
there. Every test under tests/integration/ is marked `integration`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import docker
import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = REPO_ROOT / "examples" / "demo"
BASE_IMAGE = "deploybot/busybox:latest"
BUILD_BASE_IMAGE = REPO_ROOT / "scripts" / "build-base-image.sh"
INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if INTEGRATION_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> httpx.Response:
    """GET a URL on this machine's loopback, with a timeout and without following redirects."""
    host = urlsplit(url).hostname
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"tests only talk to 127.0.0.1, not to {host!r} ({url})")
    return httpx.get(url, timeout=timeout)


def wait_for_http(url: str, timeout: float = 15.0) -> httpx.Response:
    """The first HTTP answer (any status) from `url`, retried until `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return http_get(url, timeout=2.0)
        except httpx.TransportError as exc:
            if time.monotonic() >= deadline:
                raise AssertionError(f"nothing answered at {url} within {timeout}s: {exc!r}") from exc
            time.sleep(0.1)


@pytest.fixture(name="free_port")
def free_port_fixture():
    """`free_port()` -> a port number to publish a container port on (127.0.0.1 only)."""
    return free_port


@pytest.fixture(name="http_get")
def http_get_fixture():
    """`http_get(url, timeout=5.0)` -> httpx.Response; refuses anything but loopback."""
    return http_get


@pytest.fixture(name="wait_for_http")
def wait_for_http_fixture():
    """`wait_for_http(url, timeout=15.0)` -> the first httpx.Response from a starting service."""
    return wait_for_http


@pytest.fixture(scope="session")
def docker_client():
    """A Docker SDK client for the engine at DOCKER_HOST; fails (never skips) if none answers."""
    where = os.environ.get("DOCKER_HOST", "the default socket /var/run/docker.sock")
    problem = None
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:  # the SDK raises DockerException, requests' errors or OSError
        problem = exc
    if problem is not None:  # failed outside the except block: no chained traceback noise
        pytest.fail(
            f"No Docker engine answers at {where}: {problem}\n"
            "Start the project's private engine and point DOCKER_HOST at it:\n"
            '    eval "$(scripts/dockerd.sh start)"\n'
            "(it prints: export DOCKER_HOST=unix:///tmp/deploybot-docker/docker.sock)",
            pytrace=False,
        )
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_client) -> str:
    """deploybot/busybox:latest, built by scripts/build-base-image.sh if the engine lacks it."""
    try:
        docker_client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        done = subprocess.run(
            [str(BUILD_BASE_IMAGE)], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            pytest.fail(
                f"{BUILD_BASE_IMAGE} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}",
                pytrace=False,
            )
    return BASE_IMAGE


@dataclass
class DemoImages:
    """Builds examples/demo once per tag in a repository of this test session's own.

    The repository name carries a random token so that test sessions sharing one engine (several
    developers, or CI beside a developer) never build over or delete each other's images.
    """

    client: docker.DockerClient
    repository: str
    built: dict[str, tuple[str, str]]

    def __call__(self, tag: str, mode: str = "healthy", version: str | None = None) -> str:
        version = version or tag
        wanted = (mode, version)
        name = f"{self.repository}:{tag}"
        if tag in self.built:
            if self.built[tag] != wanted:
                raise ValueError(
                    f"{name} was already built as mode={self.built[tag][0]} "
                    f"version={self.built[tag][1]}; use another tag for mode={mode} version={version}"
                )
            return name
        try:
            self.client.images.build(
                path=str(DEMO_DIR),
                buildargs={"VERSION": version, "MODE": mode},
                tag=name,
                rm=True,
                forcerm=True,
            )
        except docker.errors.BuildError as exc:
            log = "".join(str(chunk.get("stream", chunk.get("error", ""))) for chunk in exc.build_log)
            pytest.fail(f"building {name} from {DEMO_DIR} failed: {exc}\n{log}", pytrace=False)
        self.built[tag] = wanted
        return name

    def remove_all(self) -> None:
        for tag in self.built:
            try:
                self.client.images.remove(f"{self.repository}:{tag}", force=True)
            except docker.errors.NotFound:
                pass


@pytest.fixture(scope="session")
def demo_image(docker_client, base_image):
    """`demo_image(tag, mode="healthy", version=None)` -> image name `demo-web-test-XXXX:TAG`.

    VERSION defaults to the tag. All tags share `demo_image.repository`. Removed at session end.
    """
    images = DemoImages(docker_client, f"demo-web-test-{uuid.uuid4().hex[:8]}", {})
    yield images
    images.remove_all()


@pytest.fixture
def container_cleanup(docker_client):
    """`container_cleanup(name_or_container)` registers a container to force-remove at teardown."""
    names: list[str] = []

    def register(container) -> None:
        names.append(container if isinstance(container, str) else container.name)

    yield register
    for name in reversed(names):
        try:
            docker_client.containers.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL server (tests/fakes/postgres.py) on 127.0.0.1 for the session:
    `postgres_server.dsn(dbname)`, `.create_database(name, template=None)`. Fails, never skips,
    when it cannot start, and says what to install."""
    from fakes.postgres import PostgresServer, PostgresUnavailable, make_base_dir

    server = None
    try:
        server = PostgresServer(make_base_dir()).start()
    except PostgresUnavailable as exc:
        problem = str(exc)
    if server is None:  # failed outside the except block: no chained traceback noise
        pytest.fail(f"No PostgreSQL for the tests: {problem}", pytrace=False)
    yield server
    server.stop()
