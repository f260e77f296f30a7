"""Requests are acknowledged and carried out while every deployment worker is busy: the
deployments run on a pool of their own (handlers/slack_app.SlackFrontEnd.deploy_executor)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bot.models import DeploymentStatus
from fakes.core import FakeBackend
from fakes.slack_harness import ALICE, fleet, ready_ticket, running_bot
from fakes.waiting import wait_until

pytestmark = pytest.mark.integration

DEPLOY_WORKERS = 2


@dataclass
class HeldBackend(FakeBackend):
    """deploy() meets the test at `inside`, then holds its worker until `release` is set."""

    inside: threading.Barrier | None = None
    release: threading.Event = field(default_factory=threading.Event)

    def deploy(self, version, *, ticket_id, on_step, image=None):
        if self.inside is not None:
            self.inside.wait(timeout=60)
            self.release.wait(timeout=60)
        super().deploy(version, ticket_id=ticket_id, on_step=on_step, image=image)


def test_requests_are_answered_while_every_deployment_worker_is_busy(tmp_path: Path):
    config, plain, edges = fleet(DEPLOY_WORKERS + 1)
    inside = threading.Barrier(DEPLOY_WORKERS + 1)  # the busy workers and this test
    release = threading.Event()
    held = list(plain)[:DEPLOY_WORKERS]  # the last one deploys at once when its turn comes
    backends = {name: HeldBackend(running="v1", inside=inside if name in held else None,
                                  release=release) for name in plain}
    edges["backend_for"] = lambda s, e: backends[s]
    services = list(backends)
    with running_bot(config, tmp_path / "deploybot.db", workers=2,
                     deploy_workers=DEPLOY_WORKERS, **edges) as bot:
        try:
            for name in services[:DEPLOY_WORKERS]:
                ticket = ready_ticket(bot.store, f"ship {name}")
                assert bot.send.command(f"{ticket} {name}@v2 to staging",
                                        user=ALICE).status_code == 200
            inside.wait(timeout=60)  # every deployment worker is inside a deploy now

            extra = ready_ticket(bot.store, f"ship {services[-1]}")
            assert bot.send.command(f"{extra} {services[-1]}@v2 to staging",
                                    user=ALICE).status_code == 200
            assert bot.send.command("status", user=ALICE).status_code == 200
            # Carried out meanwhile: the request is recorded, status is answered.
            queued = wait_until(lambda: [d for d in bot.store.deployments()
                                         if d.ticket_id == extra], 30, "the third request")
            wait_until(lambda: bot.slack.ephemerals(ALICE), 30, "the answer to status")
            busy = [d for d in bot.store.deployments() if d.ticket_id != extra]
            assert [d.status for d in busy] == [DeploymentStatus.DEPLOYING] * DEPLOY_WORKERS
            assert queued[0].status is DeploymentStatus.REQUESTED  # waits for a free worker
        finally:
            release.set()
        done = wait_until(lambda: (lambda rows: rows if all(d.status.terminal for d in rows)
                                   else None)(bot.store.deployments()), 60, "every deployment")
        assert [d.status for d in done] == [DeploymentStatus.SUCCEEDED] * (DEPLOY_WORKERS + 1)
