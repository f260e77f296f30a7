"""HAProxy's files and runtime answers (backends/proxy/haproxy_config.py), and HaproxyProxy's
decisions over a scripted runtime API (no HAProxy here: tests/integration/test_haproxy_*.py)."""

from __future__ import annotations

import shlex

import pytest

from backends.proxy import haproxy_config as cfg
from backends.proxy.haproxy import HaproxyProxy
from backends.proxy.haproxy_config import EMPTY, ProxyAnswerError, Slot
from bot.config import ProxySettings
from bot.errors import BackendError

HEADER = ("# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
          "srv_iweight srv_time_since_last_change srv_check_status srv_check_result "
          "srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id "
          "srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr "
          "srv_agent_port")


def servers_state(key: str, rows: list[tuple[str, str, int, int, int]]) -> str:
    """A `show servers state` answer as HAProxy 2.6 writes it: (slot, ip, port, op, admin)."""
    lines = ["1", HEADER]
    for i, (name, ip, port, op, admin) in enumerate(rows, 1):
        lines.append(f"3 {key} {i} {name} {ip} {op} {admin} 1 1 0 1 0 0 8 0 0 0 - {port} - 0 0 "
                     "- - 0")
    return "\n".join(lines) + "\n\n"


# -- files ------------------------------------------------------------------------------------

def test_the_global_file_has_the_runtime_sockets_and_safe_retries():
    text = cfg.render_global("/var/lib/deploybot/proxy")
    assert "    master-worker\n" in text
    assert ("stats socket /var/lib/deploybot/proxy/admin.sock mode 600 level admin "
            "expose-fd listeners") in text
    assert "pidfile /var/lib/deploybot/proxy/haproxy.pid" in text
    for line in ("mode http", "retries 3", "option redispatch",
                 "retry-on conn-failure empty-response", "hard-stop-after"):
        assert line in text


def test_only_the_serving_slot_is_written_enabled_and_the_file_reads_back():
    slots = {"s1": Slot("s1", "127.0.0.1:32768", "drain"),
             "s2": Slot("s2", "127.0.0.1:32769", "ready")}
    text = cfg.render_service("web-production", "0.0.0.0:80", slots)
    assert "frontend web-production\n    bind 0.0.0.0:80\n    default_backend web-production" in text
    assert "    server s1 127.0.0.1:32768 disabled\n" in text
    assert "    server s2 127.0.0.1:32769\n" in text
    listen, back = cfg.parse_service(text)
    assert listen == "0.0.0.0:80"
    assert back == {"s1": Slot("s1", "127.0.0.1:32768", "maint"),
                    "s2": Slot("s2", "127.0.0.1:32769", "ready")}


def test_a_service_never_routed_has_two_empty_disabled_slots():
    text = cfg.render_service("web", "127.0.0.1:18080", {})
    assert text.count(f"server s1 {EMPTY} disabled") == 1
    assert text.count(f"server s2 {EMPTY} disabled") == 1
    assert cfg.parse_service(text)[1] == {"s1": Slot("s1", None, "maint"),
                                          "s2": Slot("s2", None, "maint")}


# -- runtime answers --------------------------------------------------------------------------

def test_servers_state_reads_ready_drain_and_maintenance():
    # Real HAProxy 2.6 values: a config-disabled slot set ready keeps the informative CMAINT
    # bit (4); drain adds FDRAIN (8); a slot never set ready is FMAINT|CMAINT (5), op state 0.
    answer = servers_state("web", [("s1", "127.0.0.1", 32768, 2, 12),
                                   ("s2", "127.0.0.1", 32769, 2, 4)])
    assert cfg.parse_servers_state(answer, "web") == {
        "s1": Slot("s1", "127.0.0.1:32768", "drain"), "s2": Slot("s2", "127.0.0.1:32769", "ready")}
    answer = servers_state("web", [("s1", "127.0.0.1", 1, 0, 5), ("s2", "127.0.0.1", 32769, 0, 1)])
    assert cfg.parse_servers_state(answer, "web") == {
        "s1": Slot("s1", None, "maint"), "s2": Slot("s2", "127.0.0.1:32769", "maint")}


def test_servers_state_of_a_backend_the_proxy_does_not_have_is_none():
    assert cfg.parse_servers_state("Can't find backend.\n\n", "web") is None


@pytest.mark.parametrize("answer", ["Unknown command.\n", "1\n" + HEADER + "\n3 web 1 s1 x\n",
                                    servers_state("web", [("s1", "127.0.0.1", 80, 2, 0)])])
def test_servers_state_that_cannot_be_read_is_an_error_not_a_guess(answer):
    with pytest.raises(ProxyAnswerError):
        cfg.parse_servers_state(answer, "web")


STAT = ("# pxname,svname,qcur,qmax,scur,smax,status,addr,cookie\n"
        "web,FRONTEND,,,7,9,OPEN,,\n"
        "web,s1,0,0,3,4,DRAIN,127.0.0.1:32768,\n"
        "web,s2,0,0,4,5,no check,127.0.0.1:32769,\n"
        "api,s1,0,0,9,9,no check,127.0.0.1:32768,\n"
        "web,BACKEND,0,0,7,9,UP,,\n\n")


def test_sessions_are_the_current_sessions_of_this_services_slot():
    assert cfg.parse_sessions(STAT, "web", "127.0.0.1:32768") == 3
    assert cfg.parse_sessions(STAT, "web", "127.0.0.1:32769") == 4
    assert cfg.parse_sessions(STAT, "web", "127.0.0.1:9") == 0
    with pytest.raises(ProxyAnswerError):
        cfg.parse_sessions("Permission denied\n", "web", "127.0.0.1:32768")


PROC = ("#<PID>          <type>          <reloads>       <uptime>        <version>      \n"
        "27398           master          {reloads} [failed: {failed}]   0d00h00m24s     2.6.12\n"
        "# workers\n{workers}# old workers\n27408           worker          1               "
        "0d00h00m24s     2.6.12\n# programs\n\n")


def test_show_proc_tells_a_new_worker_from_a_failed_reload():
    ok = cfg.parse_proc(PROC.format(reloads=2, failed=0,
                                    workers="28108           worker          0               "
                                            "0d00h00m00s     2.6.12\n"))
    assert (ok.reloads, ok.failed, ok.workers) == (2, 0, {28108: 0})
    failed = cfg.parse_proc(PROC.format(reloads=1, failed=1, workers=""))
    assert failed.failed == 1 and failed.workers == {}
    with pytest.raises(ProxyAnswerError):
        cfg.parse_proc("Unknown command\n")


def test_errors_and_alerts_are_picked_out_of_haproxys_text():
    assert cfg.answer_errors("\nNo such server.\n\nCan't find backend.\n") == [
        "No such server.", "Can't find backend."]
    assert cfg.answer_errors("IP changed from '127.0.0.1' to '127.0.0.2'\n\n") == []
    log = ("[NOTICE]   (27398) : Reloading HAProxy\n"
           "[ALERT]    (27398) : Binding [conf.d/50-web.cfg:2] for frontend web: cannot bind "
           "socket (Address already in use) for [127.0.0.1:18932]\n")
    assert cfg.alerts(log) == ["Binding [conf.d/50-web.cfg:2] for frontend web: cannot bind "
                               "socket (Address already in use) for [127.0.0.1:18932]"]


@pytest.mark.parametrize("bad", ["web:8080", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536",
                                 "127.0.0.1:80; shutdown sessions server web/s1", "::1:80",
                                 "127.0.0.1:8o", "[::1]", "[::1]:0", "[0:0::1]:80",
                                 "[fe80::1%lo; shutdown sessions server web/s1]:80",
                                 "[fe80::1%lo]:80", "[::ffff:127.0.0.1]:80", "[127.0.0.1]:80",
                                 "[::1;]:80", "[::1]:80; shutdown sessions server web/s1"])
def test_only_an_ip_and_port_reach_a_runtime_api_line(bad):
    with pytest.raises(ValueError):
        cfg.check_address(bad)


def test_addresses_and_keys_that_are_fine():
    assert cfg.check_address("10.0.0.7:32768") == ("10.0.0.7", 32768)
    assert cfg.check_address("[::1]:32768") == ("::1", 32768)
    assert cfg.check_address("[2001:db8::7]:80") == ("2001:db8::7", 80)
    assert cfg.check_key("web-production") == "web-production"
    for bad in ("", "web production", "web;x", "-web"):
        with pytest.raises(ValueError):
            cfg.check_key(bad)


# -- HaproxyProxy over a scripted runtime API ---------------------------------------------------

class ScriptedApi:
    """Answers like HAProxy's runtime API for backend `web`, applying `set server` lines one by
    one (an error does not stop the next command); `refuse`: the slot whose `state ready`
    answers an error and changes nothing."""

    def __init__(self, slots: dict[str, tuple[str, int, str]], sessions: list[int] | None = None):
        self.slots = dict(slots)  # name -> (ip, port, ready|drain|maint)
        self.lines: list[str] = []
        self.refuse: str | None = None
        self.sessions = sessions or []
        self.path = ""

    def call(self, line: str) -> str:
        self.lines.append(line)
        out = []
        for cmd in (c.strip() for c in line.split(";")):
            words = cmd.split()
            if cmd == "show servers state web":
                admin = {"ready": 4, "drain": 12, "maint": 5}
                out.append(servers_state("web", [
                    (n, ip, port, 0 if st == "maint" else 2, admin[st])
                    for n, (ip, port, st) in sorted(self.slots.items())]))
            elif cmd == "show stat":
                scur = self.sessions.pop(0) if self.sessions else 0
                out.append("# pxname,svname,scur,addr\n" + "".join(
                    f"web,{n},{scur},{ip}:{port}\n" for n, (ip, port, _) in self.slots.items()))
            elif words[:2] == ["set", "server"]:
                name = words[2].split("/")[1]
                ip, port, state = self.slots[name]
                if words[3] == "addr":
                    self.slots[name] = (words[4], int(words[6]), state)
                elif name == self.refuse and words[4] == "ready":
                    out.append("Require 'backend/server'.\n")
                else:
                    self.slots[name] = (ip, port, words[4])
            else:
                out.append("Unknown command.\n")
        return "".join(out) + "\n"


class Clock:
    def __init__(self):
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def make(tmp_path, api: ScriptedApi, clock: Clock | None = None) -> HaproxyProxy:
    clock = clock or Clock()
    proxy = HaproxyProxy(ProxySettings(listen="127.0.0.1:18080", port=8080, run="host",
                                       dir=str(tmp_path)), "web",
                         sleep=clock.sleep, monotonic=clock.monotonic)
    proxy.conf_d.mkdir()
    api.path = proxy.admin.path
    proxy.admin = api
    return proxy


def test_route_sets_the_idle_slot_then_switches_in_one_line_and_writes_it_down(tmp_path):
    api = ScriptedApi({"s1": ("127.0.0.1", 32768, "ready"), "s2": ("127.0.0.1", 1, "maint")})
    proxy = make(tmp_path, api)
    steps: list[str] = []
    assert proxy.route("127.0.0.1:32769", steps.append) == "127.0.0.1:32768"
    assert "set server web/s2 addr 127.0.0.1 port 32769" in api.lines
    assert "set server web/s2 state ready; set server web/s1 state drain" in api.lines
    assert api.slots == {"s1": ("127.0.0.1", 32768, "drain"), "s2": ("127.0.0.1", 32769, "ready")}
    assert cfg.parse_service(proxy.service_file.read_text())[1]["s2"] == Slot(
        "s2", "127.0.0.1:32769", "ready")
    assert steps == ["proxy: new requests to 127.0.0.1:32769; 127.0.0.1:32768 drains"]

    api.lines.clear()  # back to the draining one: no address to set
    assert proxy.route("127.0.0.1:32768", steps.append) == "127.0.0.1:32769"
    assert not any("addr" in line for line in api.lines)


def test_a_refused_switch_changes_nothing_that_serves_and_says_why(tmp_path):
    api = ScriptedApi({"s1": ("127.0.0.1", 32768, "ready"), "s2": ("127.0.0.1", 1, "maint")})
    proxy = make(tmp_path, api)
    api.refuse = "s2"
    with pytest.raises(BackendError) as err:
        proxy.route("127.0.0.1:32769", lambda m: None)
    assert "Require 'backend/server'" in str(err.value)
    assert "127.0.0.1:32768 still serves" in str(err.value)
    assert api.slots["s1"][2] == "ready" and api.slots["s2"][2] == "maint"
    _, written = cfg.parse_service(proxy.service_file.read_text())
    assert written["s1"] == Slot("s1", "127.0.0.1:32768", "ready")
    assert written["s2"].state == "maint", "the file follows the proxy, not the wish"


def test_route_without_the_service_loaded_says_so(tmp_path):
    api = ScriptedApi({})
    api.call = lambda line: "Can't find backend.\n\n"
    proxy = make(tmp_path, api)
    assert proxy.serving() is None
    with pytest.raises(BackendError, match="has no service web"):
        proxy.route("127.0.0.1:32769", lambda m: None)


def test_wait_drained_polls_sessions_on_the_injected_clock(tmp_path):
    clock = Clock()
    api = ScriptedApi({"s1": ("127.0.0.1", 32768, "drain"), "s2": ("127.0.0.1", 32769, "ready")},
                      sessions=[3, 2, 1, 0])
    proxy = make(tmp_path, api, clock)
    assert proxy.wait_drained("127.0.0.1:32768", 10, lambda m: None) is True
    assert len(clock.slept) == 3 and clock.now < 10

    api.sessions = [5] * 1000
    clock.slept.clear()
    steps: list[str] = []
    assert proxy.wait_drained("127.0.0.1:32768", 2, steps.append) is False
    assert sum(clock.slept) == pytest.approx(2)
    assert steps == ["proxy: 127.0.0.1:32768 still has 5 session(s) after 2 s"]


def test_by_hand_names_the_slots_from_the_file_and_quotes_the_line(tmp_path):
    api = ScriptedApi({"s1": ("127.0.0.1", 32768, "ready"), "s2": ("127.0.0.1", 1, "maint")})
    proxy = make(tmp_path, api)
    proxy.route("127.0.0.1:32769", lambda m: None)
    api.call = None  # by_hand reads the file: it works with the proxy down
    switch, check = proxy.by_hand("127.0.0.1:32768")
    words = shlex.split(switch)
    assert words[1] == "set server web/s1 state ready; set server web/s2 state drain"
    assert words[2:] == ["|", "socat", "stdio", f"unix-connect:{tmp_path}/admin.sock"]
    assert shlex.split(check)[1] == "show servers state web"


def test_a_key_haproxy_cannot_name_and_a_dir_too_long_for_sockets_are_refused(tmp_path):
    settings = ProxySettings(listen="127.0.0.1:18080", port=8080, run="host", dir=str(tmp_path))
    with pytest.raises(BackendError, match="cannot name an HAProxy"):
        HaproxyProxy(settings, "web prod")
    long_dir = ProxySettings(listen="127.0.0.1:18080", port=8080, run="host",
                             dir="/" + "d" * 120)
    with pytest.raises(BackendError, match="too long for its sockets"):
        HaproxyProxy(long_dir, "web").ensure(lambda m: None)


def test_run_container_without_an_engine_is_said(tmp_path):
    settings = ProxySettings(listen="127.0.0.1:18080", port=8080, run="container",
                             dir=str(tmp_path))
    with pytest.raises(BackendError, match="needs a Docker engine"):
        HaproxyProxy(settings, "web").ensure(lambda m: None)


def test_a_switch_whose_answer_is_lost_is_judged_by_the_proxys_state(tmp_path):
    api = ScriptedApi({"s1": ("127.0.0.1", 32768, "ready"), "s2": ("127.0.0.1", 1, "maint")})
    proxy = make(tmp_path, api)
    call = api.call

    def applied_but_timed_out(line):
        answer = call(line)
        if "state drain" in line:
            raise BackendError("the proxy did not answer on admin.sock within 5 s")
        return answer

    api.call = applied_but_timed_out
    assert proxy.route("127.0.0.1:32769", lambda m: None) == "127.0.0.1:32768"
    assert cfg.parse_service(proxy.service_file.read_text())[1]["s2"].state == "ready"

    gone: list[str] = []

    def lost(line):  # the proxy stops answering once the switch line is sent
        if gone or "state drain" in line:
            gone.append(line)
            raise BackendError("the proxy did not answer on admin.sock within 5 s")
        return call(line)

    api.call = lost
    with pytest.raises(BackendError) as err:
        proxy.route("127.0.0.1:32768", lambda m: None)
    assert "unknown" in str(err.value) and "show servers state web" in str(err.value)


def test_the_systemd_unit_and_the_container_start_haproxy_the_same_way():
    """run: host and run: container must give deploybot the same sockets and files."""
    from pathlib import Path

    from backends.proxy.haproxy_container import haproxy_command

    unit = (Path(__file__).resolve().parents[2] / "deploy" / "haproxy"
            / "deploybot-proxy.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    words = exec_start.split("=", 1)[1].replace("${DIR}", "/var/lib/deploybot/proxy").split()
    command = haproxy_command("/var/lib/deploybot/proxy")
    assert words[1] == "-Ws" and command[1] == "-W"  # -s: systemd's notify only
    assert words[2:] == command[2:]
    assert "Environment=DIR=/var/lib/deploybot/proxy" in unit  # ProxySettings.dir's default


def test_ipv6_slots_are_bracketed_in_the_file_and_read_back_from_the_runtime_api():
    text = cfg.render_service("web", "127.0.0.1:18080",
                              {"s1": Slot("s1", "[::1]:40001", "ready")})
    assert "    server s1 [::1]:40001\n" in text
    assert cfg.parse_service(text)[1]["s1"] == Slot("s1", "[::1]:40001", "ready")
    header = ("# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state "
              "srv_uweight srv_iweight srv_time_since_last_change srv_check_status "
              "srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id "
              "srv_f_forced_id srv_fqdn srv_port srvrecord")
    # as HAProxy 2.6 answers after `set server web/s1 addr ::1 port 40789`
    answer = ("1\n" + header + "\n3 web 1 s1 ::1 2 4 1 1 0 1 0 0 8 0 0 0 - 40789 -\n"
              "3 web 2 s2 127.0.0.1 0 5 1 1 0 1 0 0 8 0 0 0 - 1 -\n")
    slots = cfg.parse_servers_state(answer, "web")
    assert slots["s1"] == Slot("s1", "[::1]:40789", "ready") and slots["s2"].address is None
    assert cfg.join_address("::1", 80) == "[::1]:80" and cfg.join_address("10.0.0.7", 80) == \
        "10.0.0.7:80"
