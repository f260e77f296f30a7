"""Recovery of interrupted deployments: run at the start of every deploybot process (and on the
scheduler's tick), it finds deployments whose process died mid-way and reconciles them with what
the backend really runs.

- requested / checking: nothing was touched; the deployment becomes `interrupted`, its lock freed.
- deploying: roll back first (the kept container, else the recorded image or tags or revision).
- verifying: verification gets the rest of its window (measured from when it started); a
  version that passes inside it succeeds, anything else is rolled back. With a watch window
  configured the watch cannot be resumed, so it is rolled back.
- rolling_back: the rollback is finished (nothing is touched when the previous version already
  runs healthy).
- interrupted / rollback_failed still marked `needs_recovery` (the engine was unreachable, or an
  older deploybot gave up): retried when the engine answers again.

Exactly one process recovers a deployment: Store.claim_recovery claims it in one transaction,
only when its owner (pid + start time) is dead and no live process holds the claim.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from typing import Callable

from bot import host_rollout, liveness, logcontext
from bot import watch as watching
from bot.errors import BackendError
from bot.models import CheckStatus, Deployment, DeploymentKind, DeploymentStatus
from bot.ports import DeployBackend, SeveralHosts
from bot.staged import staged
from bot.verify import verify, wait_healthy

log = logging.getLogger("deploybot.recovery")

Alive = Callable[[int | None, str], bool]


def recover(pipeline, *, is_alive: Alive = liveness.is_alive, service: str | None = None,
            environment: str | None = None) -> list[Deployment]:
    """Recover every interrupted deployment this process can claim; returns their outcomes."""
    done = []
    for d in pipeline.store.recovery_candidates(service, environment):
        claimed = pipeline.store.claim_recovery(d.id, is_alive)
        if claimed is None:
            continue
        try:
            with logcontext.deployment(claimed.id, claimed.ticket_id):
                outcome = Recovery(pipeline, claimed).run()
        except Exception as exc:  # one broken recovery must not stop the others, nor the process
            # the message for people; the traceback only at debug level (never in a terminal)
            log.error("recovery of deployment #%s failed: %s: %s", d.id, type(exc).__name__, exc)
            log.debug("recovery of deployment #%s failed", d.id, exc_info=True)
            pipeline.store.release_recovery(d.id)
            continue
        if outcome is not None:
            done.append(outcome)
    for d in pipeline.store.unrecorded(is_alive):
        if service is not None and (d.service, d.environment) != (service, environment):
            continue
        try:  # safe twice: the record_posted claim and the outbox keys post once
            done.append(pipeline.finishing.finish(d, None))
        except Exception as exc:
            log.error("the record of deployment #%s could not be written: %s: %s", d.id,
                      type(exc).__name__, exc)
    return done


def engine_unreachable(backend: DeployBackend) -> bool:
    try:
        backend.status()
    except BackendError:
        return True
    return False


class Recovery:
    def __init__(self, pipeline, d: Deployment) -> None:
        self.pipeline, self.store, self.d = pipeline, pipeline.store, d
        self.backend = pipeline.backend_for(d.service, d.environment)
        self.svc = pipeline.config.service(d.service, d.environment)
        self.was = d.status
        self.said = (f"recovered by process {os.getpid()} on {liveness.host()} after deploybot "
                     "was interrupted while "
                     f"{d.status.value.replace('_', ' ')}")

    def run(self) -> Deployment | None:
        """The outcome; None when nothing could be done yet (the engine does not answer)."""
        d, status = self.d, self.d.status
        if status in (DeploymentStatus.REQUESTED, DeploymentStatus.CHECKING,
                      DeploymentStatus.AWAITING_APPROVAL):
            return self._nothing_touched()
        if status in (DeploymentStatus.INTERRUPTED, DeploymentStatus.ROLLBACK_FAILED):
            if engine_unreachable(self.backend):
                self.store.release_recovery(d.id)  # try again when it answers
                return None
            self.said = (f"recovered by process {os.getpid()} on {liveness.host()} after the "
                         "deployment ended "
                         f"{status.value.replace('_', ' ')} earlier")
            self._move(DeploymentStatus.ROLLING_BACK, detail=self.said)
            return self._roll_back(d.failure)
        if d.kind is DeploymentKind.ROLLBACK:
            return self._complete_manual_rollback()
        if status is DeploymentStatus.DEPLOYING:
            self._move(DeploymentStatus.ROLLING_BACK, detail=self.said)
            return self._roll_back(f"deploybot was interrupted while deploying {d.version}")
        if status is DeploymentStatus.VERIFYING:
            return self._finish_verification()
        return self._roll_back(d.failure or "deploybot was interrupted during the rollback")

    # -- the outcomes ---------------------------------------------------------------------------

    def _move(self, status: DeploymentStatus, **values) -> Deployment:
        self.d = self.store.transition(self.d.id, status, **values)
        return self.d

    def _done(self, needs_recovery: bool = False) -> Deployment:
        self.store.release_recovery(self.d.id, needs_recovery=needs_recovery)
        return self.store.deployment(self.d.id)

    def _nothing_touched(self) -> Deployment:
        text = (f"interrupted while {self.was.value}: the deploybot process ended before "
                f"anything was deployed; {self.d.service} is unchanged, request it again")
        self._move(DeploymentStatus.INTERRUPTED, failure=text, detail=self.said)
        self.pipeline.report.alert(self.d, f"deployment #{self.d.id} {text} ({self.said})")
        self.pipeline.finishing.finish(self.d, None, post_record=not self.d.dry_run)
        return self._done()

    def _window_left(self) -> float:
        """Seconds left of the verification window, counted from when verification began."""
        started = [e["at"] for e in self.store.events(self.d.id) if e["kind"] == "verifying"]
        if not started:
            return 0.0
        since = datetime.fromisoformat(started[-1])
        elapsed = (self.pipeline.clock.now() - since).total_seconds()
        return min(self.svc.verify.timeout, max(0.0, self.svc.verify.timeout - elapsed))

    def _finish_verification(self) -> Deployment:
        d, step = self.d, self.pipeline.context.step_for(self.d)
        left = self._window_left()
        try:
            running = self.backend.current_version()
        except BackendError as exc:
            running, why = None, f"the engine did not answer ({exc.message})"
        else:
            why = f"{running or 'nothing'} runs, not {d.version}"
        if running == d.version and left > 0 and not watching.watch_enabled(self.svc):
            step(f"{self.said}: verifying {d.version} for the {left:.0f} s left of its window")
            result = self._verify_left(step, left)
            summary = f"health: {result.health_reason}; smoke: {result.smoke_reason}"
            if not result.failed:
                try:
                    self.backend.finalize(step)
                except BackendError as exc:
                    result.notes.append(f"could not clean up after the deploy: {exc}")
                result.notes.append(self.said)
                self._move(DeploymentStatus.SUCCEEDED, verification=summary, detail=self.said)
                self.pipeline.report.alert(self.d, f"deployment #{d.id} {self.said}: "
                                                     f"{d.version} passed verification")
                self.pipeline.finishing.finish(self.d, result)
                return self._done()
            reasons = "; ".join(result.failure_reasons)
            self._move(DeploymentStatus.ROLLING_BACK, verification=summary,
                       failure=f"verification failed ({reasons})", detail=self.said)
            return self._roll_back(f"verification failed ({reasons})", result)
        if running == d.version and left > 0:
            why = "its watch window cannot be resumed"
        elif running == d.version:
            why = "its verification window is over"
        self._move(DeploymentStatus.ROLLING_BACK, detail=f"{self.said}: {why}",
                   failure=f"verification did not complete: {why}")
        return self._roll_back(f"verification did not complete ({why})")

    def _verify_left(self, step, left: float):
        if isinstance(self.backend, SeveralHosts) and self.d.hosts:
            return host_rollout.verify_left(self.pipeline.context, self.d, self.backend, step, left)
        return verify(self.svc, self.backend, self.pipeline.probe, self.pipeline.clock, step,
                      timeout=left)

    def _roll_back(self, reason: str, result=None) -> Deployment:
        d, step = self.d, self.pipeline.context.step_for(self.d)
        previous = d.previous_version
        self.pipeline.report.alert(d, f"deployment #{d.id} {self.said}: {reason}; rolling "
                                        f"{d.service} in {d.environment} back to "
                                        f"{previous or 'nothing'}")
        try:
            if isinstance(self.backend, SeveralHosts) and d.hosts:
                # each host back to what ran there before, checked at its own address
                host_rollout.recover(self.pipeline.context, d, self.backend)
            else:
                state = self.backend.status()
                # Behind a proxy the previous version may serve while the staged one still runs
                # beside it: the backend's rollback removes that one, so it is always asked.
                if previous and state.running and state.version == previous \
                        and staged(self.backend) is None:
                    step(f"{previous} already runs again; checking its health")
                else:
                    self.backend.rollback(previous, step, image=d.previous_image_ref or None)
                if previous:
                    status, why = wait_healthy(self.svc, self.backend, self.pipeline.probe,
                                               self.pipeline.clock, self.svc.verify.timeout,
                                               self.svc.verify.interval)
                    if status is CheckStatus.FAILED:
                        raise BackendError(f"{previous} is back but not healthy: {why}")
        except BackendError as exc:
            down = engine_unreachable(self.backend)
            self._move(DeploymentStatus.ROLLBACK_FAILED, detail=self.said,
                       failure=f"{reason}; the rollback to {previous or 'nothing'} failed: {exc}"
                               + ("; retried when the engine answers again" if down else ""))
            self.pipeline.report.alert(self.d, f"ROLLBACK FAILED for {d.service} in "
                                                 f"{d.environment} ({self.said}): {exc}. "
                                + ("deploybot retries when the engine answers again."
                                   if down else "The service needs a person now."))
            self.pipeline.finishing.finish(self.d, result)
            return self._done(needs_recovery=down)
        back = f"rolled back to {previous or 'nothing'}"
        self._move(DeploymentStatus.ROLLED_BACK, detail=self.said,
                   failure=f"{reason}; {self.said}; {back}")
        self.pipeline.report.alert(self.d, f"deployment #{d.id} {self.said}: {back}"
                                             + (f"; {previous} is healthy" if previous else ""))
        self.pipeline.finishing.finish(self.d, result)
        return self._done()

    def _complete_manual_rollback(self) -> Deployment:
        """A manual rollback goes forward: the version asked for is what should run."""
        d, step = self.d, self.pipeline.context.step_for(self.d)
        pin = self.store.known_image(d.service, d.environment, d.version) or None
        try:
            if self.backend.current_version() != d.version:
                self.backend.rollback(d.version, step, image=pin)
        except BackendError as exc:
            return self._manual_failed(f"could not finish the rollback to {d.version}: {exc}")
        if d.status is DeploymentStatus.DEPLOYING:
            self._move(DeploymentStatus.VERIFYING, detail=self.said)
        result = verify(self.svc, self.backend, self.pipeline.probe, self.pipeline.clock, step)
        if result.failed:
            return self._manual_failed(f"rollback to {d.version} failed verification: "
                                       + "; ".join(result.failure_reasons), result)
        result.notes.append(self.said)
        self._move(DeploymentStatus.SUCCEEDED, detail=self.said,
                   verification=f"health: {result.health_reason}")
        self.pipeline.report.alert(self.d, f"manual rollback #{d.id} {self.said}: "
                                             f"{d.version} runs and passed verification")
        self.pipeline.finishing.finish(self.d, result)
        return self._done()

    def _manual_failed(self, text: str, result=None) -> Deployment:
        self._move(DeploymentStatus.FAILED, failure=f"{text} ({self.said})", detail=self.said)
        self.pipeline.report.alert(self.d, f"manual rollback #{self.d.id}: {text} "
                                             f"({self.said}); people decide what runs now")
        self.pipeline.finishing.finish(self.d, result)
        return self._done(needs_recovery=False)
