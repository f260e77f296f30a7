"""`deploybot demo` chooses its Docker engine: use one that answers, start a private one, or say
what to install / do. Probes are injected: no engine is asked and no dockerd is started here."""

from __future__ import annotations

from pathlib import Path

import pytest

from handlers import cli, demo, demo_engine
from handlers.demo_engine import DEFAULT_HOST, PrivateEngine, Probes, decide

ENGINE = PrivateEngine(Path("/tmp/dk-unit"), "dbot-unit0")
OTHER = "tcp://127.0.0.1:2375"


def probes(*, answering=(), tools=("dockerd", "docker", "ip"), root=True, busybox=True,
           base_image=False, pid=None) -> Probes:
    return Probes(answers=lambda host: host in answering,
                  which=lambda tool: f"/usr/bin/{tool}" if tool in tools else None,
                  is_root=lambda: root, busybox_ok=lambda: busybox,
                  has_base_image=lambda host: base_image, engine_pid=lambda engine: pid)


def test_no_engine_and_no_dockerd_prints_the_one_apt_command():
    d = decide({}, ENGINE, probes(tools=(), busybox=False))
    assert d.action == "install"
    assert d.apt_command == "apt-get install -y docker.io iproute2 busybox-static"
    assert DEFAULT_HOST in d.why


def test_no_engine_and_only_busybox_missing_names_only_that_package():
    d = decide({}, ENGINE, probes(busybox=False))
    assert (d.action, d.packages) == ("install", ("busybox-static",))


def test_no_engine_and_dockerd_present_starts_the_private_engine_as_root():
    d = decide({}, ENGINE, probes())
    assert (d.action, d.host) == ("start", ENGINE.host)


def test_no_engine_and_dockerd_present_but_not_root_says_what_to_do():
    d = decide({}, ENGINE, probes(root=False))
    assert d.action == "refuse"
    assert "as root" in d.why and "systemctl start docker" in d.why


def test_the_default_socket_is_used_when_it_answers():
    d = decide({}, ENGINE, probes(answering=(DEFAULT_HOST, ENGINE.host), base_image=True))
    assert (d.action, d.host, d.private_pid) == ("use", DEFAULT_HOST, None)


def test_docker_host_is_used_when_it_answers():
    d = decide({"DOCKER_HOST": OTHER}, ENGINE, probes(answering=(OTHER, DEFAULT_HOST)))
    assert (d.action, d.host) == ("use", OTHER)


def test_an_earlier_private_engine_is_reused_and_named():
    d = decide({}, ENGINE, probes(answering=(ENGINE.host,), pid=4242))
    assert (d.action, d.host, d.private_pid) == ("use", ENGINE.host, 4242)
    assert "earlier deploybot demo (pid 4242)" in d.why


def test_a_docker_host_that_does_not_answer_is_never_replaced_by_a_private_engine():
    d = decide({"DOCKER_HOST": OTHER}, ENGINE, probes(answering=(DEFAULT_HOST,)))
    assert d.action == "refuse"
    assert OTHER in d.why


def test_docker_host_naming_the_stopped_private_engine_starts_it_again():
    d = decide({"DOCKER_HOST": ENGINE.host}, ENGINE, probes())
    assert (d.action, d.host) == ("start", ENGINE.host)


def test_an_engine_that_answers_still_needs_the_docker_command_and_a_base():
    d = decide({}, ENGINE, probes(answering=(DEFAULT_HOST,), tools=(), busybox=False))
    assert (d.action, d.packages) == ("install", ("docker.io", "busybox-static"))
    d = decide({}, ENGINE, probes(answering=(DEFAULT_HOST,), tools=("docker",),
                                  busybox=False, base_image=True))
    assert d.action == "use"  # the base image is there: busybox-static is not needed


def test_the_command_changes_nothing_when_packages_are_missing(tmp_path, monkeypatch, capsys):
    started = []
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(demo_engine, "real_probes", lambda: probes(tools=(), busybox=False))
    monkeypatch.setattr(demo_engine, "start_private", lambda *a: started.append(a))
    folder = tmp_path / "demo"
    code = cli.main(["demo", "--dir", str(folder), "--engine-dir", str(tmp_path / "engine")])
    err = capsys.readouterr().err
    assert code == 1
    assert "apt-get install -y docker.io iproute2 busybox-static" in err
    assert "Nothing was changed" in err
    assert not folder.exists() and not (tmp_path / "engine").exists() and not started


def test_the_command_refuses_without_root_and_changes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(demo_engine, "real_probes", lambda: probes(root=False))
    monkeypatch.setattr(demo_engine, "start_private", lambda *a: pytest.fail("started"))
    folder = tmp_path / "demo"
    assert cli.main(["demo", "--dir", str(folder)]) == 1
    assert "run `deploybot demo` as root" in capsys.readouterr().err
    assert not folder.exists()


@pytest.mark.parametrize("used, expected", [
    ([], "172.30.0.1/24"),
    (["172.30.0.0/24", "172.31.5.1/16"], "10.213.0.1/24"),
    (["172.16.0.0/12", "10.0.0.0/8"], "192.168.213.1/24"),
    (["0.0.0.0/0"], None),
])
def test_the_bridge_network_is_one_nothing_on_the_machine_uses(used, expected):
    assert demo_engine.free_cidr(used) == expected


def test_the_demo_config_moves_both_ports():
    example = (demo.EXAMPLES / "deploybot.yaml").read_text()
    text = demo.demo_config(example, 28000)
    assert "18080" not in text and "18081" not in text
    assert text.count("127.0.0.1:28000") == example.count("127.0.0.1:18080")
    assert text.count("127.0.0.1:28001") == example.count("127.0.0.1:18081")


@pytest.mark.parametrize("bad", ["0", "65535", "http"])
def test_a_port_out_of_range_is_a_usage_error(bad, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--dir", str(tmp_path), "--port", bad])
    assert exit_.value.code == 2

