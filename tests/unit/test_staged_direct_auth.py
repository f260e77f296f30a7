"""The staged backends' own direct health check (Docker: a kept container started again for a
rollback; Compose: the same, and `deploy` without the core) carries the service's http_auth,
against a real HTTP server on 127.0.0.1 that checks the header."""

from __future__ import annotations

import pytest

from backends.deploy.compose import ComposeBackend
from backends.deploy.compose_staged import Box
from backends.deploy.docker import DockerBackend
from bot.config import Service
from bot.errors import BackendError
from fakes.core import InstantClock
from fakes.docker_engine import FakeEngine
from fakes.proxy import InMemoryProxy
from fakes.token_server import token_server

NAME = "web-production"
TOKEN = "s3cret-direct"
PROXY = {"listen": "127.0.0.1:18080", "port": 8080, "drain": 3}


@pytest.fixture
def server():
    with token_server(TOKEN) as (base, seen):
        yield int(base.rpartition(":")[2]), seen


def settings(backend: dict, auth: dict | None) -> Service:
    raw = {"image": "demo", "backend": backend,
           # the public URL: the direct check keeps its path and query, not its host
           "health": {"url": "https://web.example.com/health?deep=1"},
           "verify": {"timeout": 5, "interval": 1}}
    if auth is not None:
        raw["http_auth"] = auth
    return Service.model_validate(raw)


class Docker:
    """v1 then v2 deployed, v1 kept stopped: a rollback to v1 starts it again on `port` and
    checks it there before any switch."""

    def __init__(self, port: int, auth: dict | None, environ: dict[str, str]) -> None:
        self.engine = FakeEngine()
        for v in ("v1", "v2"):
            self.engine.add_image(f"demo:{v}")
        self.proxy = InMemoryProxy(NAME)
        self.steps: list[str] = []
        self.backend = DockerBackend(
            "web", "production", settings({"kind": "docker", "stop_timeout": 1, "proxy": PROXY},
                                          auth),
            client_factory=self.engine.client, proxy_factory=lambda *a, **k: self.proxy,
            clock=InstantClock(), environ=environ)
        for version in ("v1", "v2"):
            self.backend.stage(version, ticket_id="T-1", on_step=self.steps.append)
            self.backend.switch(self.steps.append)
        self.backend.finalize(self.steps.append)
        self.serving = self.proxy.serving()
        self.engine.free_ports = iter([port])

    def rollback(self) -> None:
        self.backend.rollback("v1", self.steps.append)

    def kept_v1_stopped_again(self) -> bool:
        kept = self.engine.containers[f"{NAME}--previous"]
        return kept.labels["io.deploybot.version"] == "v1" and not kept.running


def test_docker_rollback_checks_the_kept_container_with_the_services_token(server):
    port, seen = server
    docker = Docker(port, {"bearer_token_env": "WEB_TOKEN"}, {"WEB_TOKEN": TOKEN})
    docker.rollback()
    assert seen == [f"Bearer {TOKEN}"]
    assert docker.proxy.serving() == f"127.0.0.1:{port}"


def test_docker_rollback_to_a_version_refusing_the_token_fails_at_once_and_changes_nothing(server):
    port, seen = server
    docker = Docker(port, {"bearer_token_env": "WEB_TOKEN"}, {"WEB_TOKEN": "not-it"})
    with pytest.raises(BackendError, match=r"refused the http_auth credentials \(HTTP 401\)"):
        docker.rollback()
    assert seen == ["Bearer not-it"]  # once: waiting cannot mend a refused token
    assert docker.proxy.serving() == docker.serving and docker.kept_v1_stopped_again()


def test_docker_rollback_without_the_token_variable_sends_nothing_and_names_it(server):
    port, seen = server
    docker = Docker(port, {"bearer_token_env": "WEB_TOKEN"}, {})
    with pytest.raises(BackendError, match="environment variable WEB_TOKEN is not set") as err:
        docker.rollback()
    assert seen == [] and docker.proxy.serving() == docker.serving
    assert docker.kept_v1_stopped_again() and "v1 cannot serve again" in str(err.value)


def test_docker_rollback_reads_the_token_file_and_names_it_when_gone(server, tmp_path):
    port, seen = server
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    docker = Docker(port, {"bearer_token_file": str(token)}, {})
    docker.rollback()
    assert seen == [f"Bearer {TOKEN}"]
    token.unlink()
    docker = Docker(port, {"bearer_token_file": str(token)}, {})
    with pytest.raises(BackendError, match=f"{token}: cannot be read") as err:
        docker.rollback()
    assert TOKEN not in str(err.value) and len(seen) == 1


def compose(tmp_path, port: int, auth: dict | None, environ: dict[str, str]):
    file = tmp_path / "compose.yml"
    file.write_text("services:\n  web:\n    image: demo:latest\n")
    backend = ComposeBackend("web", "staging",
                             settings({"kind": "compose", "file": str(file), "project": "shop",
                                       "proxy": PROXY}, auth),
                             proxy_factory=lambda *a, **k: InMemoryProxy("web-staging"),
                             credentials=environ)
    staged = backend._staged
    clock = InstantClock()
    staged._sleep, staged._monotonic = clock.sleep, clock.monotonic
    box = Box(id="c1", name="shop-web-2", version="v2", running=True,
              address=f"127.0.0.1:{port}", image_id="sha256:v2", created="2026-01-01T00:00:00Z")
    return staged, box


def test_compose_direct_check_carries_the_token_to_the_path_and_query(server, tmp_path):
    port, seen = server
    staged, box = compose(tmp_path, port, {"bearer_token_env": "WEB_TOKEN"}, {"WEB_TOKEN": TOKEN})
    steps: list[str] = []
    staged._check_directly(box, steps.append)
    assert seen == [f"Bearer {TOKEN}"]
    assert steps == [f"shop-web-2 answers http://127.0.0.1:{port}/health?deep=1: 200"]


def test_compose_direct_check_refused_is_a_failure_not_up(server, tmp_path):
    port, seen = server
    staged, box = compose(tmp_path, port, {"bearer_token_env": "WEB_TOKEN"}, {"WEB_TOKEN": "x"})
    with pytest.raises(BackendError, match=r"did not pass its health check: .*refused the "
                                           r"http_auth credentials \(HTTP 401\)"):
        staged._check_directly(box, lambda _: None)
    assert seen == ["Bearer x"]


def test_compose_direct_check_without_the_token_file_sends_nothing(server, tmp_path):
    port, seen = server
    gone = tmp_path / "no-token"
    staged, box = compose(tmp_path, port, {"bearer_token_file": str(gone)}, {})
    with pytest.raises(BackendError, match=f"http_auth.bearer_token_file {gone}: cannot be read"):
        staged._check_directly(box, lambda _: None)
    assert seen == []


def test_compose_direct_check_of_a_service_without_auth_sends_none_and_401_is_not_up(server,
                                                                                     tmp_path):
    port, seen = server
    staged, box = compose(tmp_path, port, None, {"WEB_TOKEN": TOKEN})
    with pytest.raises(BackendError, match=r"did not pass its health check at .*: HTTP 401"):
        staged._check_directly(box, lambda _: None)
    assert seen and set(seen) == {None}


def test_compose_gives_compose_no_token_but_its_check_reads_it(tmp_path):
    from handlers.wiring import backend_factory
    from bot import config as configuration

    file = tmp_path / "compose.yml"
    file.write_text("services:\n  web:\n    image: demo:latest\n")
    cfg = configuration.parse({"environments": {"staging": {}}, "services": {"web": {
        "image": "demo", "health": {"url": "http://127.0.0.1:18080/health"},
        "http_auth": {"bearer_token_env": "WEB_TOKEN"},
        "backend": {"kind": "compose", "file": str(file), "proxy": PROXY}}}})
    backend = backend_factory(cfg, {"WEB_TOKEN": TOKEN, "PATH": "/usr/bin"})("web", "staging")
    assert "WEB_TOKEN" not in backend._env()
    assert backend._staged.direct_health.probe.environ["WEB_TOKEN"] == TOKEN
