"""HaproxyProxy against a real HAProxy (run: host, started as the systemd unit would start it):
switches through the runtime API, drains, reloads that keep what serves, and the errors a
person sees when the proxy is down or the port is taken."""

from __future__ import annotations

import shutil
import socket
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from backends.proxy.haproxy import HaproxyProxy
from backends.proxy.haproxy_config import Slot, parse_proc, parse_service
from bot.config import ProxySettings
from bot.errors import BackendError
from fakes.waiting import wait_until
from haproxy_harness import ClientLoop, HostHaproxy, Upstream, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy_dir():
    # Short: the sockets' paths must fit a unix socket address (107 bytes).
    d = Path(tempfile.mkdtemp(prefix="dbhp-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def upstreams():
    made: list[Upstream] = []

    def make(name: str, host: str = "127.0.0.1") -> Upstream:
        made.append(Upstream(name, host))
        return made[-1]

    yield make
    for u in made:
        u.close()


@pytest.fixture
def haproxy(proxy_dir):
    h = HostHaproxy(proxy_dir)
    yield h
    h.stop()


def settings(proxy_dir: Path, listen: str, **extra) -> ProxySettings:
    return ProxySettings(listen=listen, port=8080, run="host", dir=str(proxy_dir), timeout=5,
                         **extra)


def get(listen: str, path: str = "/") -> str:
    with urllib.request.urlopen(f"http://{listen}{path}", timeout=5) as resp:
        return resp.read().decode()


def reloads(proxy: HaproxyProxy) -> int:
    return parse_proc(proxy.master.call("show proc")).reloads


@pytest.fixture
def running(proxy_dir, haproxy):
    """A proxy for service `web` on a free port, started after the first ensure() wrote its
    files (what a person does after reading the "not running" message)."""
    listen = f"127.0.0.1:{free_port()}"
    proxy = HaproxyProxy(settings(proxy_dir, listen), "web")
    with pytest.raises(BackendError, match="systemctl start deploybot-proxy"):
        proxy.ensure(lambda m: None)
    haproxy.start()
    return proxy, listen


@pytest.fixture
def serving_a(running, upstreams):
    """`running`, ensured, with upstreams A and B and A serving: (proxy, listen, a, b)."""
    proxy, listen = running
    proxy.ensure(lambda m: None)
    a, b = upstreams("A"), upstreams("B")
    proxy.route(a.address, lambda m: None)
    return proxy, listen, a, b


def test_proxy_down_says_how_to_start_it_and_ensure_reloads_only_on_change(running, haproxy):
    proxy, listen = running
    steps: list[str] = []
    proxy.ensure(steps.append)
    proxy.ensure(steps.append)
    assert reloads(proxy) == 0, "the files were loaded at start: nothing to reload"
    assert proxy.serving() is None
    assert "503" in _status(listen)  # no version routed yet: HAProxy says so itself

    haproxy.stop()
    with pytest.raises(BackendError) as err:
        proxy.ensure(steps.append)
    assert "the proxy is not running" in str(err.value)
    assert "systemctl start deploybot-proxy" in str(err.value)
    with pytest.raises(BackendError, match="does not answer"):
        proxy.serving()


def _status(listen: str) -> str:
    try:
        get(listen)
        return "200"
    except urllib.error.HTTPError as exc:
        return str(exc.code)


def test_route_switches_new_requests_and_back(running, upstreams):
    proxy, listen = running
    proxy.ensure(lambda m: None)
    a, b = upstreams("A"), upstreams("B")
    steps: list[str] = []

    assert proxy.route(a.address, steps.append) is None
    assert proxy.serving() == a.address and get(listen) == "A"
    assert proxy.route(a.address, steps.append) is None, "routing to what serves changes nothing"

    assert proxy.route(b.address, steps.append) == a.address
    assert proxy.serving() == b.address
    assert {get(listen) for _ in range(5)} == {"B"}

    assert proxy.route(a.address, steps.append) == b.address  # switch back to the draining slot
    assert {get(listen) for _ in range(5)} == {"A"}
    assert any(f"new requests to {a.address}" in s for s in steps)
    assert reloads(proxy) == 0, "switches never reload"


def test_an_ipv6_upstream_on_loopback_is_switched_to_drained_forgotten_and_kept_by_a_restart(
        serving_a, upstreams, haproxy, proxy_dir):
    proxy, listen, a, _ = serving_a
    six = upstreams("SIX", "::1")
    assert six.address.startswith("[::1]:")
    assert proxy.route(six.address, lambda m: None) == a.address
    assert proxy.serving() == six.address and {get(listen) for _ in range(5)} == {"SIX"}
    assert proxy.sessions(six.address) == 0  # `show stat` names it [::1]:PORT too
    assert f"server s2 {six.address}\n" in (proxy_dir / "conf.d" / "50-web.cfg").read_text()
    haproxy.stop()
    haproxy.start()  # from the file: [::1]:PORT as HAProxy reads it
    assert proxy.serving() == six.address and get(listen) == "SIX"
    assert proxy.route(a.address, lambda m: None) == six.address and get(listen) == "A"
    assert proxy.wait_drained(six.address, 5, lambda m: None)
    proxy.forget(six.address, lambda m: None)
    assert six.address not in {s.address for s in proxy._loaded_slots().values()}
    with pytest.raises(BackendError, match=r"IPv4:PORT or \[IPv6\]:PORT"):
        proxy.route("[::1%lo]:80; shutdown sessions server web/s1", lambda m: None)
    assert proxy.serving() == a.address


def test_route_writes_the_file_so_a_restarted_proxy_serves_the_same(serving_a, haproxy):
    proxy, listen, a, b = serving_a
    proxy.route(b.address, lambda m: None)

    haproxy.stop()
    haproxy.start()
    assert proxy.serving() == b.address
    assert get(listen) == "B"
    proxy.ensure(lambda m: None)
    assert reloads(proxy) == 0, "the file written at the switch is what it loaded"
    assert proxy.route(a.address, lambda m: None) == b.address, "A is still in its slot"
    assert get(listen) == "A"


def test_a_reload_for_another_service_keeps_what_serves(serving_a, proxy_dir):
    proxy, listen, a, b = serving_a
    proxy.route(b.address, lambda m: None)

    other_listen = f"127.0.0.1:{free_port()}"
    other = HaproxyProxy(settings(proxy_dir, other_listen), "api")
    steps: list[str] = []
    other.ensure(steps.append)
    assert reloads(proxy) == 1 and any("reloading" in s for s in steps)
    assert other.serving() is None
    assert proxy.serving() == b.address and get(listen) == "B"
    other.route(a.address, lambda m: None)
    assert get(other_listen) == "A"

    other.ensure(lambda m: None)
    proxy.ensure(lambda m: None)
    assert reloads(proxy) == 1, "nothing changed: no second reload"


def test_a_changed_listen_is_reloaded_and_served_there(serving_a, proxy_dir):
    proxy, listen, a, b = serving_a

    moved = f"127.0.0.1:{free_port()}"
    again = HaproxyProxy(settings(proxy_dir, moved), "web")
    again.ensure(lambda m: None)
    assert get(moved) == "A", "the slot state survived the reload"
    with pytest.raises(OSError):
        get(listen)


def test_a_switch_cut_short_is_written_from_the_running_proxy_without_reload(serving_a):
    """deploybot died after writing a switch's file, before the runtime line (kill -9)."""
    proxy, listen, a, b = serving_a
    slots = proxy._slots()
    idle = "s2" if slots["s1"].address == a.address else "s1"
    slots[idle] = Slot(idle, b.address, "ready")
    proxy._write_service(slots)  # the file says B, the proxy serves A

    proxy.ensure(lambda m: None)
    assert reloads(proxy) == 0
    assert parse_service(proxy.service_file.read_text())[1][idle].state == "maint"
    assert proxy.serving() == a.address and get(listen) == "A"


def test_a_reload_cut_short_is_done_by_the_next_ensure(serving_a, proxy_dir):
    """deploybot died after writing a changed listen, before the reload (kill -9)."""
    proxy, listen, a, b = serving_a
    moved = f"127.0.0.1:{free_port()}"
    dying = HaproxyProxy(settings(proxy_dir, moved), "web")

    def killed(container):
        raise KeyboardInterrupt("kill -9")

    dying._reload = killed
    with pytest.raises(KeyboardInterrupt):
        dying.ensure(lambda m: None)
    assert parse_service(dying.service_file.read_text())[0] == moved, "written, not loaded"

    HaproxyProxy(settings(proxy_dir, moved), "web").ensure(lambda m: None)
    assert reloads(proxy) == 1
    assert get(moved) == "A"
    assert not dying.pending.exists()


def test_a_port_taken_by_another_program_is_named_and_changes_nothing(serving_a, proxy_dir):
    proxy, listen, a, b = serving_a

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        port = squatter.getsockname()[1]
        other = HaproxyProxy(settings(proxy_dir, f"127.0.0.1:{port}"), "api")
        with pytest.raises(BackendError) as err:
            other.ensure(lambda m: None)
    assert f"port {port}" in str(err.value) and "taken by another program" in str(err.value)
    assert not other.service_file.exists(), "the refused file is not left for the next reload"
    assert reloads(proxy) == 0
    assert get(listen) == "A"


def test_a_port_haproxy_itself_cannot_bind_is_its_own_reason(serving_a, proxy_dir):
    """The port check before a reload is a courtesy: when it passes but HAProxy still cannot
    bind (here: taken between the check and the reload), the master's failed reload is seen,
    the files are put back and the old worker keeps serving."""
    proxy, listen, a, b = serving_a

    squatter = socket.socket()
    port = free_port()
    other = HaproxyProxy(settings(proxy_dir, f"127.0.0.1:{port}"), "api")

    def take_port_after_check():
        squatter.bind(("127.0.0.1", port))
        squatter.listen(1)

    other._check_port_free = take_port_after_check  # the race, made certain
    try:
        with pytest.raises(BackendError) as err:
            other.ensure(lambda m: None)
    finally:
        squatter.close()
    assert "refused the new configuration of api" in str(err.value)
    assert "journalctl -u deploybot-proxy" in str(err.value)
    assert not other.service_file.exists()
    assert get(listen) == "A", "the old worker kept serving"
    other2 = HaproxyProxy(settings(proxy_dir, f"127.0.0.1:{free_port()}"), "api")
    other2.ensure(lambda m: None)  # the next reload works: the bad file was put back
    assert other2.serving() is None and get(listen) == "A"


def test_a_port_another_service_of_the_proxy_listens_on_is_named(running, proxy_dir):
    proxy, listen = running
    proxy.ensure(lambda m: None)
    other = HaproxyProxy(settings(proxy_dir, listen), "api")
    with pytest.raises(BackendError) as err:
        other.ensure(lambda m: None)
    assert "is the listen of web in the same proxy" in str(err.value)
    assert not other.service_file.exists() and reloads(proxy) == 0


@pytest.mark.parametrize("keep_alive", [True, False], ids=["keep-alive", "close"])
def test_no_request_fails_while_switching_back_and_forth(serving_a, keep_alive):
    proxy, listen, a, b = serving_a
    with ClientLoop(listen, keep_alive) as client:
        for target in (b, a, b, a, b):
            client.wait_more(20)
            proxy.route(target.address, lambda m: None)
        client.wait_more(20)
        mark = client.count()
        client.wait_more(20)
    assert client.failures == [], client.failures[:5]
    assert set(client.answers[mark:]) == {"B"}, "after the last switch only B answers"
    assert {"A", "B"} <= set(client.answers)


@pytest.mark.parametrize("keep_alive", [True, False], ids=["keep-alive", "close"])
def test_no_request_fails_when_the_drained_version_stops(serving_a, upstreams, keep_alive):
    """The old version is stopped after its drain (finalize): HAProxy may still hold idle
    keep-alive connections to it, which must not cost a request."""
    proxy, listen, a, b = serving_a
    with ClientLoop(listen, keep_alive) as client:
        client.wait_more(20)
        proxy.route(b.address, lambda m: None)
        assert proxy.wait_drained(a.address, 10, lambda m: None)
        a.close()
        client.wait_more(50)
        c = upstreams("C")
        proxy.route(c.address, lambda m: None)  # into the slot the stopped one had
        client.wait_more(50)
    assert client.failures == [], client.failures[:5]
    assert client.answers[-1] == "C"


@pytest.mark.realtime  # a request held open on purpose while the drain is watched
def test_sessions_and_wait_drained_follow_an_in_flight_request(serving_a):
    proxy, listen, a, b = serving_a
    answers: list[str] = []
    slow = threading.Thread(target=lambda: answers.append(get(listen, "/slow")), daemon=True)
    slow.start()
    assert a.in_slow.wait(10)
    assert proxy.sessions(a.address) == 1

    assert proxy.route(b.address, lambda m: None) == a.address
    assert get(listen) == "B", "new requests go to B while A finishes its request"
    assert proxy.wait_drained(a.address, 0.3, lambda m: None) is False
    a.release.set()
    slow.join(10)
    assert answers == ["A"], "the in-flight request finished on the draining version"
    assert proxy.wait_drained(a.address, 10, lambda m: None) is True
    assert proxy.sessions(a.address) == 0 and proxy.sessions("127.0.0.1:9") == 0


def test_forget_empties_the_slot(serving_a, haproxy):
    proxy, listen, a, b = serving_a
    proxy.route(b.address, lambda m: None)
    proxy.forget(a.address, lambda m: None)
    assert a.address not in proxy.service_file.read_text()
    assert proxy.serving() == b.address
    proxy.forget(b.address, lambda m: None)
    assert proxy.serving() is None
    haproxy.stop()
    haproxy.start()
    assert proxy.serving() is None


def test_route_refuses_what_the_runtime_api_cannot_take(running):
    proxy, listen = running
    proxy.ensure(lambda m: None)
    for bad in ("web:8080", "127.0.0.1:80; shutdown sessions", "127.0.0.1:0"):
        with pytest.raises(BackendError, match="proxy"):
            proxy.route(bad, lambda m: None)
    assert proxy.serving() is None


def test_by_hand_commands_switch_the_traffic_when_run(serving_a):
    """The record's by-hand line, run through a tiny socat stand-in (socket module)."""
    import shlex

    proxy, listen, a, b = serving_a
    switch, check = proxy.by_hand(b.address)
    words = shlex.split(switch)
    assert words[0] == "echo" and words[2:] == ["|", "socat", "stdio",
                                                f"unix-connect:{proxy.admin.path}"]
    proxy.admin.call(words[1])
    assert get(listen) == "B"
    assert "show servers state web" in check


def test_route_round_trip_time(serving_a, capsys):
    """Not a timed assertion: prints the time of one route() for the report (benchmarks own
    the figures)."""
    proxy, listen, a, b = serving_a
    took = []
    for target in (b, a) * 25:
        t = time.perf_counter()
        proxy.route(target.address, lambda m: None)
        took.append(time.perf_counter() - t)
    with capsys.disabled():
        print(f"\nroute() over 50 switches: median {statistics.median(took) * 1000:.2f} ms, "
              f"max {max(took) * 1000:.2f} ms")
    assert proxy.serving() == a.address
