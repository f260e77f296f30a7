"""DockerBackend behind the proxy (StagedDeploy): names, routes and half states, on an in-memory
engine and proxy. The same behaviour against a real engine and HAProxy:
tests/integration/test_docker_proxy.py."""

from __future__ import annotations

import pytest

from backends.deploy.docker import DockerBackend
from bot.config import Service
from bot.errors import BackendError
from bot.ports import StagedDeploy
from fakes.core import InstantClock
from fakes.docker_engine import FakeEngine
from fakes.proxy import InMemoryProxy

NAME = "web-production"


class World:
    def __init__(self, *, proxy: bool = True, health_codes: dict[str, list[int | None]] | None = None):
        self.engine = FakeEngine()
        for v in ("v1", "v2", "v3"):
            self.engine.add_image(f"demo:{v}")
        self.proxy = InMemoryProxy(NAME)
        self.steps: list[str] = []
        self.probes: list[str] = []
        self.codes = health_codes or {}
        backend: dict = {"kind": "docker", "stop_timeout": 1}
        if proxy:
            backend["proxy"] = {"listen": "127.0.0.1:18080", "port": 8080, "drain": 3}
        else:
            backend["ports"] = {"8080": "127.0.0.1:18080"}
        self.settings = Service.model_validate({
            "image": "demo", "backend": backend,
            "health": {"url": "http://127.0.0.1:18080/health"},
            "verify": {"timeout": 5, "interval": 1}})
        self.clock = InstantClock()
        self.backend = self.make()

    def make(self) -> DockerBackend:
        """A new DockerBackend on the same engine and proxy: the next deploybot process."""
        return DockerBackend("web", "production", self.settings, client_factory=self.engine.client,
                             proxy_factory=self.factory, clock=self.clock, http_status=self.probe)

    def factory(self, settings, key, docker_client):
        assert key == NAME and settings.port == 8080 and callable(docker_client)
        return self.proxy

    def probe(self, url: str, timeout: float) -> int | None:
        self.probes.append(url)
        codes = self.codes.get(url.split("/")[2], [200])
        return codes.pop(0) if len(codes) > 1 else codes[0]

    def on_step(self, message: str) -> None:
        self.steps.append(message)

    def addr(self, name: str) -> str | None:
        c = self.engine.containers.get(name)
        if c is None or not c.running:
            return None
        return f"127.0.0.1:{c.published['8080/tcp'][0]['HostPort']}"

    def names(self) -> dict[str, tuple[str, bool]]:
        """name -> (version, running)."""
        return {n: (c.labels["io.deploybot.version"], c.running)
                for n, c in sorted(self.engine.containers.items())}

    def deploy(self, version: str) -> str:
        address = self.backend.stage(version, ticket_id="T-1", on_step=self.on_step)
        self.backend.switch(self.on_step)
        return address


@pytest.fixture
def w() -> World:
    return World()


def test_is_staged_only_with_a_proxy():
    assert World().backend.staged() is True
    assert isinstance(World().backend, StagedDeploy)
    assert World(proxy=False).backend.staged() is False


def test_the_record_names_the_blue_green_method_only_behind_a_proxy():
    assert World().backend.method == "Direct Container (blue/green behind HAProxy)"
    assert World(proxy=False).backend.method == "Direct Container"


def test_stage_starts_the_candidate_beside_on_an_engine_chosen_port_without_traffic(w):
    w.deploy("v1")
    address = w.backend.stage("v2", ticket_id="T-2", on_step=w.on_step)
    candidate = w.engine.containers[f"{NAME}--next"]
    assert candidate.ports_spec == {"8080/tcp": ("127.0.0.1", None)}
    assert address == w.addr(f"{NAME}--next") and address != w.addr(NAME)
    assert w.proxy.serving() == w.addr(NAME)
    assert w.backend.current_version() == "v1"
    assert w.backend.candidate_status().version == "v2"
    assert w.backend.candidate_status().running


def test_switch_routes_to_the_candidate_and_names_follow_the_old_one_stays_warm(w):
    first = w.deploy("v1")
    second = w.deploy("v2")
    assert w.proxy.serving() == second == w.addr(NAME)
    assert w.names() == {NAME: ("v2", True), f"{NAME}--previous": ("v1", True)}
    assert w.addr(f"{NAME}--previous") == first
    assert w.backend.current_version() == "v2" and w.backend.status().version == "v2"


def test_finalize_waits_for_the_drain_stops_and_forgets_the_old_one(w):
    w.deploy("v1")
    w.deploy("v2")
    old = w.addr(f"{NAME}--previous")
    w.backend.finalize(w.on_step)
    assert ("wait_drained", old, 3.0) in w.proxy.calls
    assert ("forget", old) in w.proxy.calls
    assert w.names()[f"{NAME}--previous"] == ("v1", False)


def test_finalize_goes_on_after_the_drain_timeout_and_says_so(w):
    w.deploy("v1")
    w.deploy("v2")
    old = w.addr(f"{NAME}--previous")
    w.proxy.sessions_of[old] = 4
    w.backend.finalize(w.on_step)
    assert any("still had 4 session(s) after 3 s" in s for s in w.steps)
    assert not w.engine.containers[f"{NAME}--previous"].running


def test_rollback_in_the_window_is_a_switch_no_start(w):
    w.deploy("v1")
    w.deploy("v2")
    warm = w.engine.containers[f"{NAME}--previous"]
    starts = warm.starts
    w.backend.rollback("v1", w.on_step)
    assert w.proxy.serving() == w.addr(NAME)
    assert w.engine.containers[NAME] is warm and warm.starts == starts
    assert w.names() == {NAME: ("v1", True)}
    assert w.probes == []  # a warm container was checked before it served: no start, no check


def test_rollback_starts_the_stopped_kept_one_checks_its_health_then_switches(w):
    w.deploy("v1")
    w.deploy("v2")
    w.backend.finalize(w.on_step)
    routes_before = len(w.proxy.routes())
    w.backend.rollback("v1", w.on_step)
    assert w.names() == {NAME: ("v1", True)}
    address = w.addr(NAME)
    assert w.probes == [f"http://{address}/health"]
    assert w.proxy.routes()[routes_before:] == [address]


def test_rollback_waits_until_the_started_one_answers_2xx(w):
    w.deploy("v1")
    w.deploy("v2")
    w.backend.finalize(w.on_step)
    next_port = w.engine.free_ports
    port = next(next_port)
    w.engine.free_ports = iter([port, *range(port + 1, port + 10)])
    w.codes[f"127.0.0.1:{port}"] = [None, 503, 200]
    w.backend.rollback("v1", w.on_step)
    assert len(w.probes) == 3 and w.proxy.serving() == f"127.0.0.1:{port}"


def test_a_kept_one_that_never_gets_healthy_is_stopped_again_and_nothing_changes(w):
    w.deploy("v1")
    new = w.deploy("v2")
    w.backend.finalize(w.on_step)
    w.codes = {}
    w.backend._http_status = lambda url, timeout: 500
    with pytest.raises(BackendError, match=r"v1 cannot serve again: .*not healthy within 5 s.*500"):
        w.backend.rollback("v1", w.on_step)
    assert w.proxy.serving() == new
    assert w.names() == {NAME: ("v2", True), f"{NAME}--previous": ("v1", False)}


def test_rollback_without_a_kept_container_creates_it_from_the_image(w):
    w.deploy("v1")
    w.deploy("v2")
    w.engine.containers[f"{NAME}--previous"].remove()
    w.backend.rollback("v1", w.on_step)
    assert w.names() == {NAME: ("v1", True)}
    assert ("create", f"{NAME}--previous", "demo:v1") in w.engine.log
    assert len(w.probes) == 1


def test_rollback_to_nothing_routes_nothing_and_removes(w):
    w.deploy("v1")
    w.backend.rollback(None, w.on_step)
    assert w.proxy.serving() is None and w.names() == {}


def test_rollback_when_the_previous_still_serves_only_discards_the_staged_one(w):
    w.deploy("v1")
    w.backend.stage("v2", ticket_id="T-2", on_step=w.on_step)
    routes = len(w.proxy.routes())
    w.backend.rollback("v1", w.on_step)
    assert w.names() == {NAME: ("v1", True)} and len(w.proxy.routes()) == routes


def test_discard_removes_the_candidate_and_what_serves_is_untouched(w):
    serving = w.deploy("v1")
    w.backend.stage("v2", ticket_id="T-2", on_step=w.on_step)
    w.backend.discard(w.on_step)
    assert w.names() == {NAME: ("v1", True)} and w.proxy.serving() == serving


def test_stage_reuses_a_kept_container_of_the_same_version(w):
    w.deploy("v1")
    w.deploy("v2")
    w.backend.finalize(w.on_step)
    kept = w.engine.containers[f"{NAME}--previous"]
    w.backend.stage("v1", ticket_id="T-3", on_step=w.on_step)
    assert w.engine.containers[f"{NAME}--next"] is kept and kept.running
    assert not [e for e in w.engine.log if e[0] == "create" and e[1] == f"{NAME}--next"][2:]


def test_stage_does_not_reuse_a_kept_container_of_other_bytes(w):
    w.deploy("v1")
    w.deploy("v2")
    w.backend.finalize(w.on_step)
    kept = w.engine.containers[f"{NAME}--previous"]
    w.backend.stage("v1", ticket_id="T-3", on_step=w.on_step, image=w.engine.images["demo:v3"])
    assert w.engine.containers[f"{NAME}--next"] is not kept


def test_stage_removes_a_stale_candidate_first(w):
    w.deploy("v1")
    w.backend.stage("v2", ticket_id="T-2", on_step=w.on_step)
    stale = w.engine.containers[f"{NAME}--next"]
    w.make().stage("v3", ticket_id="T-3", on_step=w.on_step)
    assert stale.removed and w.names()[f"{NAME}--next"] == ("v3", True)


def test_a_failed_switch_changes_nothing(w):
    serving = w.deploy("v1")
    w.backend.stage("v2", ticket_id="T-2", on_step=w.on_step)
    w.proxy.fail.add("route")
    with pytest.raises(BackendError, match="did not answer"):
        w.backend.switch(w.on_step)
    assert w.proxy.serving() == serving and w.backend.current_version() == "v1"


def test_switch_without_a_candidate_says_to_stage(w):
    w.deploy("v1")
    with pytest.raises(BackendError, match="nothing to switch to"):
        w.backend.switch(w.on_step)


def test_a_switch_killed_between_route_and_renames_is_finished_by_the_next_run(w):
    w.deploy("v1")
    w.backend.stage("v2", ticket_id="T-2", on_step=w.on_step)
    w.proxy.route(w.addr(f"{NAME}--next"), w.on_step)  # the route happened, no rename yet
    other = w.make()
    assert other.current_version() == "v2"  # read-only: by address, no rename
    assert f"{NAME}--next" in w.engine.containers
    other.finalize(w.on_step)
    assert w.names() == {NAME: ("v2", True), f"{NAME}--previous": ("v1", False)}


def test_a_switch_killed_between_the_two_renames_keeps_the_warm_old_one(w):
    w.deploy("v1")
    w.deploy("v2")
    w.backend.finalize(w.on_step)  # an older kept v1, stopped
    w.backend.stage("v3", ticket_id="T-3", on_step=w.on_step)
    w.engine.crash_after_rename = f"{NAME}--previous"
    with pytest.raises(KeyboardInterrupt):
        w.backend.switch(w.on_step)
    assert NAME not in w.engine.containers  # half done: v2 moved away, v3 not yet NAME
    w.make().rollback("v2", w.on_step)
    assert w.names() == {NAME: ("v2", True)}
    assert w.engine.containers[NAME].starts == 1  # the warm one, not restarted


def test_a_rollback_killed_after_its_route_is_finished_by_the_next_run(w):
    w.deploy("v1")
    w.deploy("v2")
    w.proxy.route(w.addr(f"{NAME}--previous"), w.on_step)  # the route back happened
    w.make().rollback("v1", w.on_step)
    assert w.names() == {NAME: ("v1", True)}


def test_first_switch_from_ports_stops_the_old_container_just_before_the_proxy_takes_the_port():
    w = World()
    old = w.engine.run(NAME, "demo:v1", labels={"io.deploybot.version": "v1"},
                       ports={"8080/tcp": ("127.0.0.1", 18080)})
    plan = w.backend.plan("v2")
    assert not [s for s in plan if s.startswith("make sure the proxy")]
    assert any(s.startswith("first switch to the proxy: stop web-production, which gives up 18080")
               for s in plan)
    w.backend.stage("v2", ticket_id="T-2", on_step=w.on_step)
    assert w.proxy.ensured == 0 and old.running  # the port is still the old container's
    assert w.backend.current_version() == "v1"
    port_free_at_ensure = []
    ensure = w.proxy.ensure
    w.proxy.ensure = lambda on_step: (port_free_at_ensure.append(not old.running), ensure(on_step))
    w.backend.switch(w.on_step)
    assert "first switch to the proxy: web-production gives up 18080" in w.steps
    assert port_free_at_ensure and all(port_free_at_ensure)
    assert w.names() == {NAME: ("v2", True), f"{NAME}--previous": ("v1", False)}
    # the kept ports: container cannot run beside the proxy: a rollback makes a new one
    w.backend.rollback("v1", w.on_step)
    assert w.names() == {NAME: ("v1", True)} and old.removed
    assert w.engine.containers[NAME].ports_spec == {"8080/tcp": ("127.0.0.1", None)}


def test_a_failed_first_switch_gives_the_port_back_to_the_old_container():
    w = World()
    old = w.engine.run(NAME, "demo:v1", labels={"io.deploybot.version": "v1"},
                       ports={"8080/tcp": ("127.0.0.1", 18080)})
    w.backend.stage("v2", ticket_id="T-2", on_step=w.on_step)
    w.proxy.fail.add("ensure")
    with pytest.raises(BackendError, match="serves 18080 again"):
        w.backend.switch(w.on_step)
    assert old.running and old.name == NAME and w.proxy.serving() is None


def test_deploy_is_stage_then_switch(w):
    w.backend.deploy("v1", ticket_id="T-1", on_step=w.on_step)
    w.backend.deploy("v2", ticket_id="T-2", on_step=w.on_step)
    assert w.names() == {NAME: ("v2", True), f"{NAME}--previous": ("v1", True)}


def test_plan_and_rollback_steps_name_the_proxy_steps(w):
    w.deploy("v1")
    plan = "\n".join(w.backend.plan("v2"))
    assert "start web-production--next from demo:v2 beside web-production (v1)" in plan
    assert "switch the proxy (127.0.0.1:18080)" in plan and "up to 3 s" in plan
    assert ("make sure the proxy (HAProxy in /var/lib/deploybot/proxy, container deploybot-proxy, "
            "started when it is not running) has this service on 127.0.0.1:18080") in plan
    w.deploy("v2")
    warm = w.addr(f"{NAME}--previous")
    assert w.backend.rollback_steps("v1")[0] == w.proxy.by_hand(warm)[0]
    w.backend.finalize(w.on_step)
    steps = w.backend.rollback_steps("v1")
    assert steps[0] == f"docker start {NAME}--previous"
    assert any("curl -fsS http://127.0.0.1:PORT/health" in s for s in steps)


def test_without_proxy_nothing_changes():
    w = World(proxy=False)
    w.backend.deploy("v1", ticket_id="T-1", on_step=w.on_step)
    w.backend.deploy("v2", ticket_id="T-2", on_step=w.on_step)
    assert w.names() == {NAME: ("v2", True), f"{NAME}--previous": ("v1", False)}
    assert w.proxy.calls == []


def test_a_rollback_in_the_window_asks_the_proxy_no_more_than_it_must(w):
    w.deploy("v1")
    w.deploy("v2")
    w.proxy.calls.clear()
    w.backend.rollback("v1", w.on_step)
    assert ("ensure",) not in w.proxy.calls  # it answered with this service's route
    assert w.proxy.routes() == [w.addr(NAME)]


def test_a_rollback_with_the_proxy_down_starts_it_first(w):
    w.deploy("v1")
    w.deploy("v2")
    w.proxy.fail.add("serving")  # the proxy container is gone: ensure() brings it back
    w.backend.rollback("v1", w.on_step)
    assert w.proxy.calls.index(("ensure",)) < w.proxy.calls.index(("route", w.addr(NAME)))
    assert w.names() == {NAME: ("v1", True)}


def test_a_rollback_fails_closed_when_the_proxy_cannot_be_started(w):
    w.deploy("v1")
    serving = w.deploy("v2")
    # down for the switch back at once, for the look at what it serves and for the start
    w.proxy.fail |= {"route", "serving", "ensure"}
    with pytest.raises(BackendError, match="did not answer"):
        w.backend.rollback("v1", w.on_step)
    assert w.proxy.serving() == serving
    assert w.names() == {NAME: ("v2", True), f"{NAME}--previous": ("v1", True)}


def test_a_rollback_in_the_window_switches_back_before_reading_the_engine_again(w):
    w.deploy("v1")
    w.deploy("v2")  # v1 warm as NAME--previous, not finalized
    w.proxy.calls.clear()
    w.backend.rollback("v1", w.on_step)
    # the first thing the proxy hears is the switch back, no look at what it serves before it
    assert w.proxy.calls[0] == ("route", w.addr(NAME))
    assert w.names() == {NAME: ("v1", True)}
    assert any("was still running: the proxy sends new requests to it again" in s
               for s in w.steps)
