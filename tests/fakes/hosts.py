"""The rollout host by host in a test Pipeline, entered as bot/rollout.py enters it."""

from __future__ import annotations

from bot import host_rollout
from bot.errors import BackendError
from bot.models import DeploymentStatus


def use_host_rollout(pipeline, backend) -> None:
    """Make `pipeline` deploy through bot/host_rollout.py: what Rollout.deploy does up to its
    prepare (the previous version, the new one present on every host), then its one call."""
    rollout, store = pipeline.rollout, pipeline.store

    def deploy(d):
        d = store.transition(d.id, DeploymentStatus.DEPLOYING)
        d = store.update_deployment(d.id, previous_version=backend.current_version())
        try:
            backend.prepare(d.version, rollout.ctx.step_for(d))
        except BackendError as exc:
            return rollout.finishing.failed(d, f"could not prepare {d.version}: {exc}")
        return host_rollout.run(rollout, d, backend, pin=None)

    rollout.deploy = deploy
