"""Issue 6 (schedules) through the `deploybot` command: --at, --queue and `deploybot scheduler`
against a real Docker engine."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import yaml

from bot.models import DeploymentStatus
from fakes.processes import stop as stop_process
from fakes.waiting import wait_until as wait_for
from tests.integration.test_docker_deploys import service  # noqa: F401 - the fixture


def status_of(bot, deployment_id: int) -> DeploymentStatus:
    store = bot.store()
    try:
        return store.deployment(deployment_id).status
    finally:
        store.close()


def test_scheduled_and_queued_deploys_run_from_the_foreground_scheduler(service, http_get):  # noqa: F811
    bot, web = service, service.name
    assert "in the past" in bot("deploy", bot.ready_ticket("old"), f"{web}@v1", "--at",
                                "2020-01-01T00:00", check=2).stderr
    tid = bot.ready_ticket("v1 tonight")
    # far enough ahead that three CLI starts on a loaded machine do not pass it
    at = (datetime.now(timezone.utc) + timedelta(seconds=20)).isoformat(timespec="seconds")
    out = bot("deploy", tid, f"{web}@v1", "--at", at).stdout
    assert "deployment #1 scheduled for" in out  # the refused one was never stored
    assert "the checklist passes now (dry run #2)" in out
    assert "waiting: scheduled for" in bot("status").stdout
    assert status_of(bot, 1) is DeploymentStatus.REQUESTED

    scheduler = subprocess.Popen([sys.executable, "-m", "handlers.cli", "scheduler", "--tick",
                                  "0.5"], cwd=bot.workdir, env=bot.env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: status_of(bot, 1).terminal, 90, "the scheduled deployment to finish")
        assert status_of(bot, 1) is DeploymentStatus.SUCCEEDED
        assert http_get(f"{bot.base}/version").text.strip() == "v1"

        bot("lock", "staging", "--reason", "database migration", "--as", "ops-erin")
        proc = bot("deploy", bot.ready_ticket("v2 when free"), f"{web}@v2", "--queue", check=3)
        assert "queued for env:staging, position 1" in proc.stderr
        assert "waiting: queued for env:staging, position 1" in bot("status").stdout
        bot("unlock", "staging", "--reason", "migration done", "--as", "ops-erin")
        wait_for(lambda: status_of(bot, 3).terminal, 90, "the queued deployment to finish")
        assert status_of(bot, 3) is DeploymentStatus.SUCCEEDED
        assert http_get(f"{bot.base}/version").text.strip() == "v2"
    finally:
        output = stop_process(scheduler)
    assert scheduler.returncode == 0, output
    assert "deploybot scheduler: every 0.5 s" in output


def test_a_freeze_refuses_production_until_two_people_break_the_glass(service, http_get):  # noqa: F811
    bot, web = service, service.name
    config = yaml.safe_load(bot.config_path.read_text())
    today = datetime.now(timezone.utc).date().isoformat()
    config["environments"]["production"]["freeze"] = [{"date": today, "reason": "release day"}]
    bot.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    tid = bot.ready_ticket("hotfix")
    refused = bot("deploy", tid, f"{web}@v2", "--env", "production", check=4).stderr
    assert "refused: production is frozen" in refused and "release day" in refused
    assert "--break-glass" in refused

    waiting = bot("deploy", tid, f"{web}@v2", "--env", "production", "--break-glass",
                  "payments are down", check=3).stderr
    assert waiting.count("approve") >= 3  # two break-glass gates and the usual approval
    still = bot("approve", "1", "--as", "bob", check=3).stderr
    assert "bob gave one break-glass approval already" in still
    bot("approve", "1", "--as", "dana")
    assert http_get(f"{bot.prod_base}/version").text.strip() == "v2"
    shown = bot("show", "1").stdout
    assert "break_glass: approved by bob" in shown and "break_glass: approved by dana" in shown
