"""Compose behind the proxy without an engine: settings, the override file, and the decisions taken
from what the proxy serves and which containers exist (reconcile, stage, rollback)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from backends.deploy import build_backend
from backends.deploy.compose import ComposeBackend
from backends.deploy.compose_staged import (Box, box_of, compose_too_old, reconcile,
                                            rollback_plan, stage_plan)
from bot import config as config_mod
from bot.errors import ConfigError

PROXY = {"listen": "127.0.0.1:18080", "port": 8080}


class ProxyDouble:
    """TrafficProxy in memory: the serving address and the calls made."""

    def __init__(self, settings, key, docker_client=None):
        self.settings, self.key = settings, key
        self.address: str | None = None
        self.calls: list[tuple] = []

    def ensure(self, on_step):
        self.calls.append(("ensure",))

    def serving(self):
        return self.address

    def route(self, address, on_step):
        before, self.address = self.address, address
        self.calls.append(("route", address))
        return before if before != address else None

    def sessions(self, address):
        return 0

    def wait_drained(self, address, timeout, on_step):
        self.calls.append(("wait_drained", address, timeout))
        return True

    def forget(self, address, on_step):
        self.calls.append(("forget", address))

    def by_hand(self, address):
        return [f"echo 'set server {self.key}/s1 addr {address}' | socat stdio unix:admin.sock"]


def service_cfg(tmp_path: Path, **backend):
    file = tmp_path / "compose.yml"
    file.write_text("services:\n  web:\n    image: demo-web:latest\n"
                    "    ports: ['127.0.0.1:18080:8080']\n")
    raw = {"kind": "compose", "file": str(file), "project": "shop", **backend}
    return config_mod.parse({"environments": {"staging": {}},
                             "services": {"web": {"image": "demo-web", "backend": raw,
                                                  "health": {"url":
                                                             "http://127.0.0.1:18080/health"}}}}
                            ).service("web", "staging")


def staged_backend(tmp_path: Path, **backend) -> ComposeBackend:
    return ComposeBackend("web", "staging", service_cfg(tmp_path, proxy=PROXY, **backend),
                          proxy_factory=ProxyDouble)


def box(id: str, version: str, *, running: bool = True, port: int | None = None,
        created: str = "2026-01-01T00:00:00Z", image_id: str = "") -> Box:
    address = f"127.0.0.1:{port}" if running and port else None
    return Box(id=id, name=f"shop-web-{id}", version=version, running=running, address=address,
               image_id=image_id or f"sha256:{version}", created=created)


# -- settings ---------------------------------------------------------------------------------------

def test_proxy_mode_is_staged_and_uses_the_service_key(tmp_path):
    backend = staged_backend(tmp_path)
    assert backend.staged()
    assert backend._staged.proxy.key == "web-staging"
    assert backend._staged.proxy.settings.drain == 10.0
    plain = build_backend("web", "staging", service_cfg(tmp_path))
    assert not plain.staged()


def test_proxy_needs_exactly_one_version_carrying_service(tmp_path):
    with pytest.raises(ConfigError) as err:
        ComposeBackend("web", "staging",
                       service_cfg(tmp_path, proxy=PROXY, services=["web", "worker"]),
                       proxy_factory=ProxyDouble)
    text = str(err.value)
    assert "services.web.backend" in text
    assert "proxy: switches one compose service, but services names 2 (web, worker)" in text


def test_proxy_settings_are_checked_where_they_are_written(tmp_path):
    with pytest.raises(ConfigError, match="HOST:PORT where the proxy accepts"):
        ComposeBackend(
            "web", "staging", service_cfg(tmp_path, proxy={"listen": "18080", "port": 8080}),
            proxy_factory=ProxyDouble)


def test_compose_older_than_2_24_is_refused_with_the_reason():
    assert compose_too_old("2.40.3") is None
    assert compose_too_old("2.24.0") is None
    why = compose_too_old("2.23.3")
    assert why and "Docker Compose 2.24.0 or newer" in why and "`!override`" in why
    assert "this is 2.23.3" in why


# -- the override file ------------------------------------------------------------------------------

class _TagLoader(yaml.SafeLoader):
    pass


_TagLoader.add_constructor("!override", lambda loader, node: {
    "!override": loader.construct_sequence(node)})


def test_override_replaces_the_ports_with_an_engine_chosen_loopback_port(tmp_path):
    backend = staged_backend(tmp_path)
    path = backend._write_override("v2", {"web": "demo-web:v2"}, "T-7")
    text = path.read_text()
    assert path == tmp_path / ".deploybot" / "shop.v2.yml"
    assert "ports: !override\n    - 127.0.0.1::8080\n" in text
    doc = yaml.load(text, Loader=_TagLoader)
    web = doc["services"]["web"]
    assert web["image"] == "demo-web:v2"
    assert web["ports"] == {"!override": ["127.0.0.1::8080"]}
    assert web["labels"]["io.deploybot.version"] == "v2"
    assert web["labels"]["io.deploybot.ticket"] == "T-7"


def test_without_proxy_the_override_leaves_the_ports_alone(tmp_path):
    backend = ComposeBackend("web", "staging", service_cfg(tmp_path))
    text = backend._write_override("v2", {"web": "demo-web:v2"}).read_text()
    assert "ports" not in text and "!override" not in text


def test_the_serving_override_is_rebuilt_from_the_serving_container(tmp_path):
    backend = staged_backend(tmp_path)
    serving = Box(id="a" * 64, name="shop-web-1", version="v1", running=True,
                  address="127.0.0.1:40001", image_id="sha256:1", created="x",
                  image="demo-web:v1",
                  labels={"io.deploybot.version": "v1", "io.deploybot.ticket": "T-1",
                          "com.docker.compose.project": "shop"})
    backend._staged.write_current(serving)
    path = backend.current_override_path()
    assert path.name == "shop@serving.yml"  # '@' is in no tag: no version file is overwritten
    doc = yaml.load(path.read_text(), Loader=_TagLoader)
    assert doc["services"]["web"] == {
        "image": "demo-web:v1",
        "labels": {"io.deploybot.version": "v1", "io.deploybot.ticket": "T-1"},
        "ports": {"!override": ["127.0.0.1::8080"]}}


def test_stage_command_scales_beside_what_serves_without_touching_it(tmp_path):
    backend = staged_backend(tmp_path)
    tail = backend._staged.up_tail(2)
    assert tail[:3] == ["up", "-d", "--no-deps"]
    assert "--no-recreate" in tail and tail[-1] == "web"
    assert tail[tail.index("--scale") + 1] == "web=2"
    assert "--remove-orphans" not in tail


# -- reading a container ----------------------------------------------------------------------------

def test_box_of_reads_version_address_and_health_from_inspect():
    attrs = {"Id": "c1", "Name": "/shop-web-2", "Image": "sha256:abc", "Created": "2026-01-02",
             "State": {"Running": True, "Health": {"Status": "healthy"}},
             "Config": {"Image": "demo-web:v2", "Labels": {"io.deploybot.version": "v2"}},
             "NetworkSettings": {"Ports": {"8080/tcp": [{"HostIp": "127.0.0.1",
                                                         "HostPort": "49170"}]}}}
    b = box_of(attrs, 8080)
    assert (b.name, b.version, b.address, b.health, b.image) == \
        ("shop-web-2", "v2", "127.0.0.1:49170", "healthy", "demo-web:v2")
    stopped = box_of({**attrs, "State": {"Running": False},
                      "NetworkSettings": {"Ports": {}}}, 8080)
    assert not stopped.running and stopped.address is None


# -- decisions --------------------------------------------------------------------------------------

def test_reconcile_current_is_the_container_the_proxy_serves():
    old = box("a", "v1", port=40001, created="1")
    new = box("b", "v2", port=40002, created="2")
    view = reconcile("127.0.0.1:40001", [new, old])
    assert view.current is old and view.routed
    assert view.others == (new,)


def test_reconcile_unrouted_takes_the_newest_running_container():
    kept = box("a", "v1", running=False, created="3")
    before_proxy = box("b", "v0", port=18080, created="2")
    view = reconcile(None, [kept, before_proxy])
    assert view.current is before_proxy and not view.routed


def test_reconcile_a_serving_address_nobody_publishes_means_nothing_serves():
    view = reconcile("127.0.0.1:40009", [box("a", "v1", port=40001)])
    assert view.current is None and not view.routed and len(view.others) == 1


def test_stage_removes_everything_but_what_serves():
    serving = box("a", "v1", port=40001, created="1")
    leftover = box("b", "v2", port=40002, created="3")  # a candidate left by a kill -9
    kept = box("c", "v0", running=False, created="0")
    reuse, remove = stage_plan(reconcile("127.0.0.1:40001", [serving, leftover, kept]), "v3",
                               "sha256:v3")
    assert reuse is None and set(b.id for b in remove) == {"b", "c"}


def test_stage_starts_a_kept_container_of_the_same_version_and_bytes():
    serving = box("a", "v2", port=40001, created="2")
    kept = box("c", "v1", running=False, created="1")
    view = reconcile("127.0.0.1:40001", [serving, kept])
    reuse, remove = stage_plan(view, "v1", "sha256:v1")
    assert reuse is kept and remove == []
    # the tag names other bytes now: the kept one is not what is asked for
    reuse, remove = stage_plan(view, "v1", "sha256:rebuilt")
    assert reuse is None and remove == [kept]


def test_rollback_within_the_window_is_a_switch_to_the_warm_container():
    bad = box("b", "v2", port=40002, created="2")
    warm = box("a", "v1", port=40001, created="1")
    how, target = rollback_plan(reconcile("127.0.0.1:40002", [bad, warm]), "v1", None)
    assert (how, target) == ("warm", warm)


def test_rollback_after_finalize_starts_the_kept_container():
    bad = box("b", "v2", port=40002, created="2")
    kept = box("a", "v1", running=False, created="1")
    how, target = rollback_plan(reconcile("127.0.0.1:40002", [bad, kept]), "v1", "sha256:v1")
    assert (how, target) == ("kept", kept)
    # the bytes to restore are not the kept ones: create from the image
    how, target = rollback_plan(reconcile("127.0.0.1:40002", [bad, kept]), "v1", "sha256:other")
    assert (how, target) == ("create", None)


def test_rollback_of_an_interrupted_deploy_finds_the_previous_version_serving():
    serving = box("a", "v1", port=40001, created="1")
    staged = box("b", "v2", port=40002, created="2")
    how, target = rollback_plan(reconcile("127.0.0.1:40001", [serving, staged]), "v1", None)
    assert (how, target) == ("serving", serving)


def test_rollback_with_nothing_left_creates_the_previous_version():
    how, target = rollback_plan(reconcile("127.0.0.1:40002", [box("b", "v2", port=40002)]),
                                "v1", None)
    assert (how, target) == ("create", None)
