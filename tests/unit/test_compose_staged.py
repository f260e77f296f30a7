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
from bot.errors import BackendError, ConfigError

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
        created: str = "2026-01-01T00:00:00Z", image_id: str = "", proxied: bool = True) -> Box:
    address = f"127.0.0.1:{port}" if running and port else None
    return Box(id=id, name=f"shop-web-{id}", version=version, running=running, address=address,
               image_id=image_id or f"sha256:{version}", created=created,
               labels={"io.deploybot.proxied": "true"} if proxied else {})


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
    assert web["labels"]["io.deploybot.proxied"] == "true"


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


# -- the operations, with the proxy double and containers in memory ---------------------------------

class Engine:
    """The containers of the service in memory; each call is logged in order with the proxy's."""

    def __init__(self, staged, log: list) -> None:
        self.staged, self.log, self.boxes = staged, log, {}
        self.healthy: set[str] = set()
        self.port = 40000
        staged.boxes = lambda: list(self.boxes.values())
        staged._image_id = lambda ref: f"sha256:{ref.rsplit(':', 1)[-1]}"
        staged._remove = lambda b: (self.log.append(("rm", b.id)), self.boxes.pop(b.id, None))
        staged._stop = lambda b: (self.log.append(("stop", b.id)), self.put(b.id, b.version,
                                                                         running=False))
        staged._start = self.start
        staged._check_directly = self.check
        staged._compose_up = lambda version, *a, **k: self.put(f"new-{version}", version)
        staged.write_current = lambda b: self.log.append(("current", b.id))
        staged.check_compose = lambda: None  # no compose binary needed

    def put(self, id: str, version: str, running: bool = True, created: str | None = None,
            proxied: bool = True) -> Box:
        self.port += 1
        old = self.boxes.get(id)
        self.boxes[id] = box(id, version, running=running, port=self.port, proxied=proxied,
                             created=created or (old.created if old else f"{len(self.boxes):03}"))
        return self.boxes[id]

    def start(self, b: Box) -> Box:
        self.log.append(("start", b.id))
        return self.put(b.id, b.version)

    def check(self, b: Box, on_step) -> None:
        self.log.append(("check", b.id))
        if b.id not in self.healthy:
            raise BackendError(f"{b.short} did not pass its health check")


def operations(tmp_path):
    backend = staged_backend(tmp_path)
    staged = backend._staged
    log: list = []
    proxy = staged.proxy
    route, forget = proxy.route, proxy.forget
    proxy.route = lambda a, s: (log.append(("route", a)), route(a, s))[1]
    proxy.forget = lambda a, s: (log.append(("forget", a)), forget(a, s))[1]
    proxy.wait_drained = lambda a, t, s: (log.append(("drain", a)), True)[1]
    return backend, Engine(staged, log), proxy, log


def test_rollback_in_the_window_switches_first_then_drains_and_removes_the_bad_one(tmp_path):
    backend, engine, proxy, log = operations(tmp_path)
    old = engine.put("old", "v1")
    bad = engine.put("bad", "v2")
    proxy.address = bad.address
    backend.rollback("v1", lambda m: None)
    assert proxy.address == old.address
    assert log == [("route", old.address), ("current", "old"), ("drain", bad.address),
                   ("forget", bad.address), ("rm", "bad")]


def test_rollback_to_a_kept_container_checks_it_before_any_traffic(tmp_path):
    backend, engine, proxy, log = operations(tmp_path)
    engine.put("old", "v1", running=False)
    bad = engine.put("bad", "v2")
    proxy.address = bad.address
    with pytest.raises(BackendError, match="what serves is unchanged"):
        backend.rollback("v1", lambda m: None)
    assert proxy.address == bad.address and ("route",) not in [e[:1] for e in log]
    assert log == [("start", "old"), ("check", "old"), ("stop", "old")]
    engine.healthy.add("old")
    log.clear()
    backend.rollback("v1", lambda m: None)
    started = engine.boxes["old"]
    assert proxy.address == started.address
    assert log[:3] == [("start", "old"), ("check", "old"), ("route", started.address)]
    assert log[-1] == ("rm", "bad")


def test_finalize_stops_the_old_one_only_after_it_drained(tmp_path):
    backend, engine, proxy, log = operations(tmp_path)
    old = engine.put("old", "v1")
    new = engine.put("new", "v2")
    engine.put("older", "v0", running=False, created="0")
    proxy.address = new.address
    backend.finalize(lambda m: None)
    assert log == [("drain", old.address), ("forget", old.address), ("stop", "old"),
                   ("rm", "older")]
    assert not engine.boxes["old"].running and engine.boxes["new"].running


def test_stage_check_switch_and_discard_never_touch_what_serves(tmp_path):
    backend, engine, proxy, log = operations(tmp_path)
    serving = engine.put("old", "v1")
    engine.put("stale", "v9")  # left by a killed run
    proxy.address = serving.address
    address = backend.stage("v2", ticket_id="T", on_step=lambda m: None)
    assert address == engine.boxes["new-v2"].address and proxy.address == serving.address
    assert ("rm", "stale") in log
    assert backend.candidate_status().version == "v2"
    backend.discard(lambda m: None)
    assert set(engine.boxes) == {"old"} and proxy.address == serving.address
    with pytest.raises(BackendError, match="nothing staged to switch"):
        backend.switch(lambda m: None)
    assert proxy.address == serving.address


def test_deploy_of_a_version_failing_its_checks_removes_it_and_changes_nothing(tmp_path):
    backend, engine, proxy, log = operations(tmp_path)
    serving = engine.put("old", "v1")
    proxy.address = serving.address
    with pytest.raises(BackendError, match="v3 failed its checks beside what serves"):
        backend.deploy("v3", ticket_id="T", on_step=lambda m: None)
    assert set(engine.boxes) == {"old"} and proxy.address == serving.address
    engine.healthy.add("new-v4")
    backend.deploy("v4", ticket_id="T", on_step=lambda m: None)
    assert proxy.address == engine.boxes["new-v4"].address
    assert backend.current_version() == "v4"


def test_what_serves_cannot_be_told_without_the_proxy_so_nothing_is_done(tmp_path):
    backend, engine, proxy, log = operations(tmp_path)
    engine.put("old", "v1")

    def down():
        raise BackendError("the proxy is not running")

    proxy.serving = down
    with pytest.raises(BackendError, match="not running"):
        backend.current_version()
    with pytest.raises(BackendError, match="not running"):
        backend.stage("v2", ticket_id="T", on_step=lambda m: None)
    assert set(engine.boxes) == {"old"} and log == []
    engine.boxes.clear()  # no container at all: a first deploy, the proxy is started by ensure
    assert backend.current_version() is None
    # only containers from before `proxy:` (published ports): the proxy serves none of them
    engine.put("before", "v0", proxied=False)
    assert backend.current_version() == "v0"
    assert "not routed by the proxy yet" in backend.status().detail


def test_rollback_to_nothing_empties_the_proxy_and_removes_every_container(tmp_path):
    backend, engine, proxy, log = operations(tmp_path)
    first = engine.put("first", "v1")
    proxy.address = first.address
    backend.rollback(None, lambda m: None)
    assert engine.boxes == {} and ("forget", first.address) in log


def test_plan_and_rollback_steps_name_real_commands(tmp_path):
    backend, engine, proxy, log = operations(tmp_path)
    old = engine.put("oldcontainer1", "v1", running=False)
    bad = engine.put("badcontainer2", "v2")
    proxy.address = bad.address
    plan = "\n".join(backend.plan("v3"))
    assert "ports !override [127.0.0.1::8080]" in plan
    assert "up -d --no-deps --no-recreate --no-build --pull never --scale web=2" in plan
    assert "set server web-staging/s1 addr 127.0.0.1:HOSTPORT" in plan
    steps = backend.rollback_steps("v1")
    assert steps[0] == f"docker start {old.id[:12]}"
    assert any("set server web-staging/s1" in s for s in steps)
    assert steps[-1] == f"docker rm -f {bad.id[:12]}"


def test_a_failed_up_removes_what_it_started_and_says_so(tmp_path):
    from backends.deploy.compose import Run

    backend, engine, proxy, log = operations(tmp_path)
    serving = engine.put("old", "v1")
    proxy.address = serving.address
    staged = backend._staged
    del staged._compose_up  # the real one, on the engine double
    calls: list[list[str]] = []

    def up(override, *tail, **kw):
        calls.append(list(tail))
        engine.put("crashed", "v2", running=False)  # created, exited at once
        return Run(["compose", *tail], 1, ["container crashed exited (1)"], 0.1)

    backend._run = up
    with pytest.raises(BackendError) as err:
        staged.stage("v2", ticket_id="T", on_step=lambda m: None)
    assert "staging v2 failed: container crashed exited (1)" in str(err.value)
    assert "what serves is unchanged" in str(err.value)
    assert set(engine.boxes) == {"old"} and proxy.address == serving.address
    assert calls[0][calls[0].index("--scale") + 1] == "web=2"

    def up_unhealthy(override, *tail, **kw):
        engine.put("sick", "v3")  # runs; its own health check failed `--wait`
        return Run(["compose", *tail], 1, ["container sick is unhealthy"], 0.1)

    backend._run = up_unhealthy
    address = staged.stage("v3", ticket_id="T", on_step=lambda m: None)
    assert address == engine.boxes["sick"].address  # the direct checks decide


def test_the_record_names_the_blue_green_method_only_behind_a_proxy(tmp_path):
    assert staged_backend(tmp_path).method == "Docker Compose (blue/green behind HAProxy)"
    assert ComposeBackend("web", "staging", service_cfg(tmp_path)).method == "Docker Compose"
