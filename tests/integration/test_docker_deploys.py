"""Issue 2's acceptance, through the `deploybot` command against a real Docker engine."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from bot.store import Store
from fakes.people import SHARED_BOX


class Deploybot:
    """Runs `deploybot` as a person would: a new process each time, one config, one database."""

    def __init__(self, workdir: Path, config: dict):
        self.workdir = workdir
        self.config_path = workdir / "deploybot.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        # PYTHONPATH: run this tree's code, whatever `pip install -e` pointed at last
        self.env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
                    "DEPLOYBOT_CONFIG": str(self.config_path),
                    "DEPLOYBOT_DB": str(workdir / "deploybot.db"), "DEPLOYBOT_USER": "alice"}

    def __call__(self, *args: str, check: int | None = 0) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "handlers.cli", *args], cwd=self.workdir,
                              env=self.env, capture_output=True, text=True, timeout=180,
                              stdin=subprocess.DEVNULL)
        if check is not None and proc.returncode != check:
            raise AssertionError(f"deploybot {' '.join(args)} exited {proc.returncode}, "
                                 f"expected {check}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def ready_ticket(self, title: str, target: str | None = None) -> str:
        tid = self("ticket", "create", title, "--status", "Ready for Production").stdout.strip()
        self("ticket", "comment", tid, "--by", "bob", "CQ approved")
        self("ticket", "comment", tid, "--by", "carol", "QA PASS, all green on staging")
        if target:
            self("ticket", "comment", tid, "--by", "alice", f"deploy: {target}")
        return tid

    def comments(self, tid: str) -> str:
        return self("ticket", "show", tid).stdout

    def store(self) -> Store:
        return Store(self.workdir / "deploybot.db")


@pytest.fixture
def service(docker_client, demo_image, free_port, container_cleanup, tmp_path):
    """A demo service `web` with v1, v2 (healthy), v3 (unhealthy) on a port of its own."""
    # versions of their own: the demo repository is shared by the whole test session
    for tag, mode in (("v1", "healthy"), ("v2", "healthy"), ("v3-unhealthy", "unhealthy"),
                      ("v4-smoke-broken", "smoke-broken")):
        demo_image(tag, mode)
    port, prod_port = free_port(), free_port()
    name = f"dbt-web-{uuid.uuid4().hex[:6]}"
    container_cleanup(f"{name}-staging")
    container_cleanup(f"{name}-staging--previous")
    container_cleanup(f"{name}-production")
    container_cleanup(f"{name}-production--previous")
    env_file = tmp_path / "web.env"
    env_file.write_text("GREETING=hello from the env file\nDATABASE_URL=sqlite:///x\n")
    base = f"http://127.0.0.1:{port}"
    config = {
        **SHARED_BOX,
        "tracker": {"kind": "local", "rules": {
            "cq_approval": {"pattern": r"(?im)^\s*CQ\s*approved\b", "authors": ["bob", "dana"]},
            "qa_pass": {"pattern": r"(?im)^\s*QA\s*PASS\b", "authors": ["carol"]}}},
        "environments": {
            "staging": {},
            "production": {"production": True, "approvals_required": 1,
                           "approvers": ["bob", "dana"]}},
        "services": {name: {
            "image": demo_image.repository,
            "backend": {"kind": "docker", "ports": {"8080": f"127.0.0.1:{port}"},
                        "stop_timeout": 1, "pull": "never", "env_file": str(env_file),
                        "restart_policy": "no"},
            "required_env": ["DATABASE_URL"],
            "health": {"url": f"{base}/health"},
            "smoke": [{"url": f"{base}/api/ping", "contains": "pong"}],
            "verify": {"timeout": 8, "interval": 0.3}}},
        "overrides": {"production": {name: {
            "backend": {"ports": {"8080": f"127.0.0.1:{prod_port}"}},
            "health": {"url": f"http://127.0.0.1:{prod_port}/health"},
            "smoke": [{"url": f"http://127.0.0.1:{prod_port}/api/ping"}]}}},
    }
    bot = Deploybot(tmp_path, config)
    bot.name, bot.base, bot.prod_base = name, base, f"http://127.0.0.1:{prod_port}"
    return bot


def test_v1_then_v2_are_deployed_and_the_record_names_v1_as_previous(service, http_get):
    bot, web = service, service.name
    t1 = bot.ready_ticket("First release", target=f"{web}@v1")
    out = bot("deploy", t1).stdout
    assert "[ok] CQ approval" in out and "deployment #1: succeeded" in out
    assert http_get(f"{bot.base}/version").text.strip() == "v1"

    t2 = bot.ready_ticket("Second release")
    out = bot("deploy", t2, f"{web}@v2").stdout
    assert http_get(f"{bot.base}/version").text.strip() == "v2"
    assert http_get(f"{bot.base}/api/greeting").text.strip() == "hello from the env file"
    assert "**Previous Version:** v1" in out
    shown = bot.comments(t2)
    assert shown.count("## Deployment Record") == 1
    assert "**Version:** v2" in shown and "- [x] Dependencies in place" in shown


def test_unhealthy_v3_is_rolled_back_to_v2_and_the_ticket_says_why(service, http_get,
                                                                    docker_client):
    bot, web = service, service.name
    bot("deploy", bot.ready_ticket("v1"), f"{web}@v1")
    bot("deploy", bot.ready_ticket("v2"), f"{web}@v2")
    t3 = bot.ready_ticket("v3 with the new cache")
    proc = bot("deploy", t3, f"{web}@v3-unhealthy", check=1)
    assert "rolled_back" in proc.stdout
    assert http_get(f"{bot.base}/version").text.strip() == "v2"
    shown = bot.comments(t3)
    assert "ROLLED BACK" in shown
    assert "- [ ] Health checks passing — FAILED" in shown and "answered 500" in shown
    # the kept v2 container came back: no container of v3 is left, no kept copy either
    names = {c.name for c in docker_client.containers.list(all=True)}
    assert f"{web}-staging" in names and f"{web}-staging--previous" not in names
    d = bot.store().deployments(limit=1)[0]
    assert d.status.value == "rolled_back" and "answered 500" in d.failure


def test_a_version_up_and_failing_is_rolled_back_after_three_probes_not_the_timeout(
        service, http_get):
    """v3 answers 500 at once: the rollback starts after 3 failing probes, while waiting out
    the 120 s verification timeout at 0.3 s would take 400 probes (counted, not timed)."""
    bot, web = service, service.name
    config = yaml.safe_load(bot.config_path.read_text())
    config["services"][web]["verify"] = {"timeout": 120, "interval": 0.3}
    bot.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    bot("deploy", bot.ready_ticket("v2"), f"{web}@v2")
    proc = bot("deploy", bot.ready_ticket("v3"), f"{web}@v3-unhealthy", check=1)
    assert "rolled_back" in proc.stdout
    assert http_get(f"{bot.base}/version").text.strip() == "v2"
    d = bot.store().deployments(limit=1)[0]
    assert "answered 500" in d.failure and "up and failing 3 probes in a row" in d.failure
    probes = int(re.search(r"after (\d+) probe\(s\)", d.failure).group(1))
    assert probes <= 3 + 10  # 3 failing ones after at most a few "not up yet" while it starts


def test_broken_smoke_test_rolls_back(service, http_get):
    bot, web = service, service.name
    bot("deploy", bot.ready_ticket("v2"), f"{web}@v2")
    proc = bot("deploy", bot.ready_ticket("v4"), f"{web}@v4-smoke-broken", check=1)
    assert "api/ping answered 500" in proc.stdout
    assert http_get(f"{bot.base}/version").text.strip() == "v2"


def test_image_that_does_not_exist_fails_and_v2_keeps_serving(service, http_get, docker_client):
    bot, web = service, service.name
    bot("deploy", bot.ready_ticket("v2"), f"{web}@v2")
    before = docker_client.containers.get(f"{web}-staging").id
    t = bot.ready_ticket("typo in the version")
    proc = bot("deploy", t, f"{web}@v99", check=1)
    assert "is not on this Docker host" in proc.stdout
    assert http_get(f"{bot.base}/version").text.strip() == "v2"
    assert docker_client.containers.get(f"{web}-staging").id == before
    assert "FAILED" in bot.comments(t)


@pytest.mark.parametrize("missing,expect", [
    ("qa", "no QA PASS comment"),
    ("status", "not 'Ready for Production'"),
    ("own_cq", "by the requester"),
])
def test_ticket_that_fails_a_gate_is_blocked_and_nothing_is_touched(service, docker_client,
                                                                    missing, expect):
    bot, web = service, service.name
    bot("deploy", bot.ready_ticket("v1"), f"{web}@v1")
    before = docker_client.containers.get(f"{web}-staging").id
    tid = bot("ticket", "create", "Gate test", "--status",
              "In Review" if missing == "status" else "Ready for Production").stdout.strip()
    bot("ticket", "comment", tid, "--by", "alice" if missing == "own_cq" else "bob",
        "CQ approved")
    if missing != "qa":
        bot("ticket", "comment", tid, "--by", "carol", "QA PASS")
    proc = bot("deploy", tid, f"{web}@v2", check=1)
    assert "BLOCKED" in proc.stdout and expect in proc.stdout
    assert docker_client.containers.get(f"{web}-staging").id == before
    assert "Deployment blocked" in bot.comments(tid)


def test_lock_blocks_a_second_deployment_until_unlocked(service):
    bot, web = service, service.name
    bot("lock", "staging", "--reason", "database migration running", "--as", "ops-erin")
    proc = bot("deploy", bot.ready_ticket("v1"), f"{web}@v1", check=1)
    assert "held by ops-erin" in proc.stdout and "database migration running" in proc.stdout
    status = bot("status").stdout
    assert "env:staging is held by ops-erin" in status
    assert bot("unlock", "staging", check=2).returncode == 2  # argparse: --reason is required
    refused = bot("unlock", "staging", "--reason", "migration finished", check=4)  # alice
    assert "Only ops-erin (who took the lock)" in refused.stderr
    bot("unlock", "staging", "--reason", "migration finished", "--as", "ops-erin")
    bot("deploy", bot.ready_ticket("v1 again"), f"{web}@v1")


def test_production_gate_survives_a_restart_and_resumes_from_the_store(service, http_get):
    bot, web = service, service.name
    t = bot.ready_ticket("to production")
    proc = bot("deploy", t, f"{web}@v2", "--env", "production", "--as", "dana", check=3)
    assert "waiting for 1 gate" in proc.stderr and "deploybot approve 1" in proc.stderr
    # new processes: dana may not approve her own production deployment, mallory no one's
    refused = bot("approve", "1", "--as", "dana", check=4)
    assert "requested this deployment and cannot approve it" in refused.stderr
    refused = bot("approve", "1", "--as", "mallory", check=4)
    assert "mallory may not approve deployment #1" in refused.stderr
    assert "Only the approvers of production (bob, dana) may" in refused.stderr
    done = bot("approve", "1", "--as", "bob")
    assert "deployment #1: succeeded" in done.stdout
    assert http_get(f"{bot.prod_base}/version").text.strip() == "v2"
    again = bot("approve", "1", "--as", "dana", check=1)
    assert "approved by bob" in again.stderr
    # a production deploy moves the ticket on
    assert "status: Deployed" in bot.comments(t)


def test_dry_run_prints_the_plan_and_changes_nothing(service, docker_client):
    bot, web = service, service.name
    proc = bot("deploy", bot.ready_ticket("dry"), f"{web}@v1", "--dry-run")
    assert "Planned steps" in proc.stdout and "docker run -d" in proc.stdout
    assert not docker_client.containers.list(all=True, filters={"name": f"{web}-staging"})


@pytest.mark.parametrize("args,expect", [
    (["deploy", "nonsense"], "is not a ticket id"),
    (["deploy", "DEMO-1", "web@v1;reboot"], "not a valid version"),
    (["deploy", "DEMO-1", "ghost@v1"], "unknown service"),
    (["deploy", "DEMO-1", "x@v1", "--env", "mars"], "unknown environment"),
])
def test_bad_input_exits_2_and_changes_nothing(service, args, expect):
    proc = service(*args, check=2)
    assert expect in proc.stderr
    assert service.store().deployments() == []


def test_manual_rollback_to_the_previous_version(service, http_get):
    bot, web = service, service.name
    bot("deploy", bot.ready_ticket("v1"), f"{web}@v1")
    bot("deploy", bot.ready_ticket("v2"), f"{web}@v2")
    proc = bot("rollback", web)
    assert "Manual rollback of" in proc.stdout
    assert http_get(f"{bot.base}/version").text.strip() == "v1"
    history = bot("history", web).stdout
    assert "rollback v1 (was v2)" in history
