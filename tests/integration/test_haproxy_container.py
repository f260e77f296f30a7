"""HaproxyProxy with run: container: deploybot creates and starts the shared proxy container on
the real engine (image deploybot/haproxy:2.6 from scripts/build-proxy-image.sh)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import urllib.request
import uuid
from pathlib import Path

import docker.errors
import pytest

from backends.proxy.haproxy import HaproxyProxy
from backends.proxy.haproxy_config import parse_proc
from bot.config import ProxySettings
from bot.errors import BackendError
from haproxy_harness import ClientLoop, Upstream, free_port

pytestmark = pytest.mark.integration

BUILD_PROXY_IMAGE = Path(__file__).resolve().parents[2] / "scripts" / "build-proxy-image.sh"
PROXY_IMAGE = "deploybot/haproxy:2.6"


@pytest.fixture(scope="session")
def proxy_image(docker_client) -> str:
    """deploybot/haproxy:2.6, built (or found up to date) by scripts/build-proxy-image.sh."""
    done = subprocess.run([str(BUILD_PROXY_IMAGE)], capture_output=True, text=True, timeout=120,
                          check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        pytest.fail(f"{BUILD_PROXY_IMAGE} failed (exit {done.returncode}):\n{done.stderr}",
                    pytrace=False)
    return PROXY_IMAGE


@pytest.fixture
def box(docker_client, proxy_image):
    """A proxy dir and a container name of this test's own; the container is removed after."""
    d = Path(tempfile.mkdtemp(prefix="dbhc-"))
    name = f"dbt-proxy-{uuid.uuid4().hex[:8]}"
    upstreams: list[Upstream] = []

    def settings(listen: str, **extra) -> ProxySettings:
        values = {"image": proxy_image, **extra}
        return ProxySettings(listen=listen, port=8080, run="container", container_name=name,
                             dir=str(d), timeout=5, **values)

    def upstream(label: str) -> Upstream:
        upstreams.append(Upstream(label))
        return upstreams[-1]

    yield settings, upstream, name
    try:
        docker_client.containers.get(name).remove(force=True)
    except docker.errors.NotFound:
        pass
    for u in upstreams:
        u.close()
    shutil.rmtree(d, ignore_errors=True)


def get(listen: str) -> str:
    with urllib.request.urlopen(f"http://{listen}/", timeout=5) as resp:
        return resp.read().decode()


def test_ensure_runs_the_container_and_switches_go_through_it(box, docker_client):
    settings, upstream, name = box
    listen = f"127.0.0.1:{free_port()}"
    proxy = HaproxyProxy(settings(listen), "web", docker_client=lambda: docker_client)
    steps: list[str] = []
    proxy.ensure(steps.append)
    container = docker_client.containers.get(name)
    assert container.attrs["HostConfig"]["NetworkMode"] == "host"
    assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert container.labels["io.deploybot.proxy"] == "true"
    assert container.attrs["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"
    assert any(f"starting container {name}" in s for s in steps)

    a, b = upstream("A"), upstream("B")
    assert proxy.route(a.address, steps.append) is None
    assert get(listen) == "A"
    with ClientLoop(listen, keep_alive=True) as client:
        client.wait_more(20)
        assert proxy.route(b.address, steps.append) == a.address
        client.wait_more(20)
    assert client.failures == [] and {"A", "B"} <= set(client.answers)

    proxy.ensure(steps.append)
    assert parse_proc(proxy.master.call("show proc")).reloads == 0, "nothing changed: no reload"
    assert docker_client.containers.get(name).id == container.id

    container.stop(timeout=5)
    proxy.ensure(steps.append)  # started again, from the file the switch wrote
    assert docker_client.containers.get(name).id == container.id
    assert proxy.serving() == b.address and get(listen) == "B"

    other_listen = f"127.0.0.1:{free_port()}"
    other = HaproxyProxy(settings(other_listen), "api", docker_client=lambda: docker_client)
    other.ensure(steps.append)  # a second service of the same dir: a reload of the container
    assert parse_proc(proxy.master.call("show proc")).reloads == 1
    assert get(listen) == "B" and other.serving() is None


def test_a_missing_image_says_how_to_get_it(box, docker_client):
    settings, _, name = box
    proxy = HaproxyProxy(settings(f"127.0.0.1:{free_port()}", image="deploybot/nothing:0"),
                         "web", docker_client=lambda: docker_client)
    with pytest.raises(BackendError) as err:
        proxy.ensure(lambda m: None)
    assert "deploybot/nothing:0 is not on the Docker engine" in str(err.value)
    assert "scripts/build-proxy-image.sh" in str(err.value)


def test_a_container_that_cannot_bind_says_haproxys_reason_and_is_removed(box, docker_client):
    settings, _, name = box
    port = free_port()
    proxy = HaproxyProxy(settings(f"127.0.0.1:{port}"), "web", docker_client=lambda: docker_client)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen(1)
        with pytest.raises(BackendError, match=f"port {port} .* taken by another program"):
            proxy.ensure(lambda m: None)
        proxy._check_port_free = lambda: None  # as if deploybot ran in another network namespace
        with pytest.raises(BackendError) as err:
            proxy.ensure(lambda m: None)
    assert f"the proxy container {name} did not start" in str(err.value)
    assert "cannot bind socket" in str(err.value) and str(port) in str(err.value)
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(name)
    assert not proxy.service_file.exists()


def test_the_container_of_another_dir_is_not_taken_for_this_one(box, docker_client):
    settings, _, name = box
    HaproxyProxy(settings(f"127.0.0.1:{free_port()}"), "web",
                 docker_client=lambda: docker_client).ensure(lambda m: None)
    elsewhere = Path(tempfile.mkdtemp(prefix="dbhc-"))
    try:
        stray = HaproxyProxy(settings(f"127.0.0.1:{free_port()}").model_copy(
            update={"dir": str(elsewhere)}), "api", docker_client=lambda: docker_client)
        with pytest.raises(BackendError) as err:
            stray.ensure(lambda m: None)
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)
    assert f"the proxy container {name} runs but nothing answers" in str(err.value)
    assert "another dir" in str(err.value)
