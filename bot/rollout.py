"""The rollout: deploy, verify, watch, and roll back what fails. Entered only after the
checklist, the gates and the re-check before the rollout (bot/gating.py) have passed."""

from __future__ import annotations

import functools
import threading
from typing import Callable, Mapping

from bot import host_rollout
from bot import watch as watching
from bot.childenv import allowed_environ
from bot.config import Config, Service
from bot.errors import BackendError, StateError
from bot.finishing import Finishing
from bot.models import CheckStatus, Deployment, DeploymentKind, DeploymentStatus, VerificationResult
from bot.ports import (DeployBackend, ImageBuilder, MetricsSource, SeveralHosts, StagedDeploy,
                       StepCallback)
from bot.run_context import RunContext
from bot.staged import CandidateView, DirectProbe, direct_service, staged
from bot.verify import verify, wait_healthy


def request_label(config: Config, d: Deployment) -> str:
    """What the backend records as the request (Kubernetes' change-cause, a container label):
    a deploy's ticket; a manual rollback's own request, never the ticket of the version left."""
    if d.kind is DeploymentKind.ROLLBACK:
        return f"rollback by {config.canonical(d.requested_by)}"
    return d.ticket_id


class StopRequest:
    """A request to stop, from a signal handler: read between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.why = ""
        self.rollout_started = False  # from here on a stop completes or rolls back

    def set(self, why: str) -> None:
        self.why = self.why or why
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()


def running_image(backend: DeployBackend, step: StepCallback) -> str:
    """The bytes running now; not knowing them is said, never a reason to stop (a manual
    rollback in an emergency must not fail because pods disagree about their image)."""
    try:
        return backend.running_image() or ""
    except BackendError as exc:
        step(f"note: cannot tell which image bytes run ({exc.message}); a rollback would "
             "go back by tag")
        return ""


class Rollout:
    def __init__(self, ctx: RunContext, finishing: Finishing, *, stop: StopRequest,
                 recover: Callable[[str, str], None],
                 image_builder: ImageBuilder | None = None,
                 metrics_for: Callable[[str, str], MetricsSource | None] | None = None,
                 run_command: watching.CommandRunner | None = None) -> None:
        """`recover(service, environment)`: bot/recovery.py for interrupted rollouts there.
        `metrics_for` None keeps the watch window's metrics off; `run_command` None runs
        integrity checks with the child environment (bot/childenv.py)."""
        self.ctx = ctx
        self.finishing = finishing
        self.stop = stop
        self.recover = recover
        self.image_builder = image_builder
        self.metrics_for = metrics_for
        self.run_command = run_command

    def unresolved(self, d: Deployment) -> list[Deployment]:
        """Interrupted rollouts of the same service and environment that are not resolved:
        their kept container (or recorded version) may still be what a rollback needs."""
        return [u for u in self.ctx.store.unresolved(d.service, d.environment) if u.id != d.id]

    def deploy(self, d: Deployment) -> Deployment:
        ctx, finishing = self.ctx, self.finishing
        if self.stop:
            return finishing.failed(d, f"stopped ({self.stop.why}) before the rollout; nothing "
                                       "was changed")
        if self.unresolved(d):
            self.recover(d.service, d.environment)
            waiting = self.unresolved(d)
            if waiting:
                u = waiting[0]
                return finishing.failed(d, f"deployment #{u.id} ({u.service} {u.version}, "
                                           f"{u.status.value.replace('_', ' ')}) was interrupted "
                                           "and is not recovered yet (its process still runs, or "
                                           "the engine does not answer); nothing was changed: "
                                           f"deploy again once it is (deploybot show {u.id})")
        self.stop.rollout_started = True
        try:
            # Only one caller wins this transition: a double approval cannot deploy twice.
            d = ctx.store.transition(d.id, DeploymentStatus.DEPLOYING)
        except StateError:
            return ctx.store.deployment(d.id)
        backend = ctx.backend_for(d.service, d.environment)
        step = ctx.step_for(d)
        previous = d.previous_version
        try:
            now_running = backend.current_version()
            if now_running != previous:
                step(f"note: {now_running or 'nothing'} runs now, not {previous or 'nothing'} "
                     "as at check time; rolling back would return to what runs now")
                previous = now_running
                d = ctx.store.update_deployment(d.id, previous_version=previous)
            # The bytes that run now: what an automatic rollback restores, whatever the tag
            # names by then.
            d = ctx.store.update_deployment(d.id,
                                            previous_image_ref=running_image(backend, step))
            # A manual rollback puts back the bytes that version was, not what its tag names now.
            pin = (ctx.store.known_image(d.service, d.environment, d.version) or None
                   if d.kind is DeploymentKind.ROLLBACK else None)
            svc = ctx.config.service(d.service, d.environment)
            if svc.build and d.kind is DeploymentKind.DEPLOY:
                if self.image_builder is None:
                    raise BackendError(f"{d.service} is built from source but no image builder "
                                       "is configured")
                digest = self.image_builder.build(svc.image, d.version, svc.build, step)
                d = ctx.store.update_deployment(d.id, image_digest=digest)
            backend.prepare(d.version, step, image=pin)
        except BackendError as exc:
            return finishing.failed(d, f"could not prepare {d.version}: {exc}; "
                                       f"{previous or 'nothing'} is still running, nothing changed")
        if isinstance(backend, SeveralHosts):
            return host_rollout.run(self, d, backend, pin)
        baseline = self._baseline(d, backend, step)
        blue_green = staged(backend)
        if blue_green is not None:
            return self._staged(d, blue_green, baseline, step, pin, previous)
        try:
            backend.deploy(d.version, ticket_id=request_label(ctx.config, d), on_step=step,
                           image=pin)
        except BackendError as exc:
            return finishing.failed(d, f"deploying {d.version} failed: {exc}")
        d = ctx.store.transition(d.id, DeploymentStatus.VERIFYING,
                                 image_ref=running_image(backend, step))
        return self._verify_and_finish(d, backend, baseline, step)

    def _stopped(self) -> str:
        return self.stop.why if self.stop else ""

    def _staged(self, d: Deployment, backend: StagedDeploy, baseline: watching.Baseline | None,
                step: StepCallback, pin: str | None, previous: str | None) -> Deployment:
        """Blue/green behind the proxy: the new version is checked on its own address before
        it gets a request; after the switch the old one stays warm until the end of the watch
        window, so a rollback is a switch back."""
        ctx, finishing = self.ctx, self.finishing
        serving = previous or "nothing"
        try:
            address = backend.stage(d.version, ticket_id=request_label(ctx.config, d),
                                    on_step=step, image=pin)
        except BackendError as exc:
            return finishing.failed(d, f"starting {d.version} beside {serving} failed: {exc}; "
                                       f"{serving} kept serving, nothing changed")
        d = ctx.store.transition(d.id, DeploymentStatus.VERIFYING)
        svc = ctx.config.service(d.service, d.environment)
        step(f"checking {d.version} directly at {address}; it gets no traffic yet")
        direct = verify(direct_service(svc, address), CandidateView(backend),
                        DirectProbe(ctx.probe, svc, address), ctx.clock, step, stop=self._stopped)
        before = f"checked at {address} before the switch: {direct.health_reason}"
        if direct.failed:
            reasons = "; ".join(direct.failure_reasons)
            try:
                backend.discard(step)
            except BackendError as exc:
                direct.notes.append(f"could not remove the failed {d.version}: {exc}")
            direct.notes.append(f"{d.version} never received traffic; {serving} kept serving")
            summary = "; ".join(f"{k}: {v}" for k, v in ((direct.health_label,
                                                          direct.health_reason),
                                                         ("smoke", direct.smoke_reason)))
            d = ctx.store.transition(
                d.id, DeploymentStatus.FAILED, verification=summary,
                failure=f"{d.version} failed its checks at {address} before the switch "
                        f"({reasons}); {serving} kept serving, no request reached {d.version}")
            if d.kind is DeploymentKind.ROLLBACK:
                ctx.report.alert(d, f"manual rollback of {d.service} in {d.environment} to "
                                    f"{d.version} failed its checks before the switch: "
                                    f"{reasons}; {serving} kept serving")
            return finishing.finish(d, direct)
        if self.stop:
            try:
                backend.discard(step)
            except BackendError as exc:
                step(f"could not remove the staged {d.version}: {exc}")
            return self._stopped_before_switch(d, serving)
        try:
            backend.switch(step)
        except BackendError as exc:
            try:
                backend.discard(step)
            except BackendError as again:
                step(f"could not remove the staged {d.version}: {again}")
            d = ctx.store.transition(d.id, DeploymentStatus.FAILED,
                                     failure=f"switching the proxy to {d.version} failed: {exc}; "
                                             f"{serving} kept serving")
            return finishing.finish(d, direct)
        d = ctx.store.update_deployment(d.id, image_ref=running_image(backend, step))
        return self._verify_and_finish(d, backend, baseline, step, notes=[before])

    def _stopped_before_switch(self, d: Deployment, serving: str) -> Deployment:
        d = self.ctx.store.transition(
            d.id, DeploymentStatus.FAILED,
            failure=f"stopped ({self.stop.why}) before the switch; {serving} kept serving, "
                    f"no request reached {d.version}")
        return self.finishing.finish(d, None)

    def _verify_and_finish(self, d: Deployment, backend: DeployBackend,
                           baseline: watching.Baseline | None, step: StepCallback,
                           notes: list[str] | None = None) -> Deployment:
        ctx, finishing = self.ctx, self.finishing
        svc = ctx.config.service(d.service, d.environment)
        result = verify(svc, backend, ctx.probe, ctx.clock, step, stop=self._stopped)
        result.notes[:0] = notes or []
        if baseline is not None and not result.failed:
            self._watch(d, backend, baseline, result, step)
        summary = "; ".join(f"{k}: {v}" for k, v in ((result.health_label, result.health_reason),
                                                     ("smoke", result.smoke_reason)))
        if not result.failed:
            try:
                backend.finalize(step)
            except BackendError as exc:
                result.notes.append(f"could not clean up after the deploy: {exc}")
            d = ctx.store.transition(d.id, DeploymentStatus.SUCCEEDED, verification=summary)
            return finishing.finish(d, result)
        reasons = "; ".join(result.failure_reasons)
        if d.kind is DeploymentKind.ROLLBACK:
            # A manual rollback that fails verification is not rolled back again: people decide.
            d = ctx.store.transition(d.id, DeploymentStatus.FAILED, verification=summary,
                                     failure=f"rollback to {d.version} failed verification: "
                                             f"{reasons}")
            ctx.report.alert(d, f"manual rollback of {d.service} in {d.environment} to "
                                f"{d.version} failed verification: {reasons}")
            return finishing.finish(d, result)
        return self._roll_back(d, backend, result, summary, reasons)

    # -- the watch window (bot/watch.py) ------------------------------------------------------------

    def watcher(self, d: Deployment, backend: DeployBackend,
                hosts: Mapping[str, Service] | None = None) -> watching.Watcher:
        """`hosts`: what to probe host by host (watching.Watcher); None: the service's URLs."""
        ctx = self.ctx
        svc = ctx.config.service(d.service, d.environment)
        metrics = self.metrics_for(d.service, d.environment) if self.metrics_for else None
        run = self.run_command or functools.partial(
            watching.run_command, env=allowed_environ(ctx.environ, ctx.config.child_env))
        return watching.Watcher(svc, backend, ctx.probe, ctx.clock, metrics, run, hosts=hosts)

    def _baseline(self, d: Deployment, backend: DeployBackend, step: StepCallback,
                  hosts: Mapping[str, Service] | None = None) -> watching.Baseline | None:
        """Sample what runs now, before the deploy, when the service has a watch configured."""
        if d.kind is not DeploymentKind.DEPLOY or \
                not watching.watch_enabled(self.ctx.config.service(d.service, d.environment)):
            return None
        return self.watcher(d, backend, hosts).baseline(step)

    def _watch(self, d: Deployment, backend: DeployBackend, baseline: watching.Baseline,
               result: VerificationResult, step: StepCallback,
               hosts: Mapping[str, Service] | None = None) -> watching.WatchReport:
        """Measure the new version for the window; a tripped rule fails `result` at once."""
        svc = self.ctx.config.service(d.service, d.environment)
        report = self.watcher(d, backend, hosts).watch(baseline, step)
        watching.apply(result, baseline, report, svc)
        return report

    # -- the automatic rollback --------------------------------------------------------------------

    def _roll_back(self, d: Deployment, backend: DeployBackend, result: VerificationResult,
                   summary: str, reasons: str) -> Deployment:
        ctx = self.ctx
        previous = d.previous_version
        d = ctx.store.transition(d.id, DeploymentStatus.ROLLING_BACK, verification=summary,
                                 failure=f"verification failed ({reasons})")
        ctx.report.alert(d, f"automatic rollback of {d.service} {d.version} in "
                            f"{d.environment} to {previous or 'nothing'}: {reasons}")
        step = ctx.step_for(d)
        try:
            backend.rollback(previous, step, image=d.previous_image_ref or None)
            if previous:
                svc = ctx.config.service(d.service, d.environment)
                status, why = wait_healthy(svc, backend, ctx.probe, ctx.clock,
                                           svc.verify.timeout, svc.verify.interval)
                if status is CheckStatus.FAILED:
                    raise BackendError(f"{previous} is back but not healthy: {why}")
                result.notes.append(f"after rollback {previous} is healthy: {why}")
        except BackendError as exc:
            from bot.recovery import engine_unreachable

            down = engine_unreachable(backend)
            d = ctx.store.transition(
                d.id, DeploymentStatus.ROLLBACK_FAILED, needs_recovery=int(down),
                failure=f"verification failed ({reasons}); the rollback to "
                        f"{previous or 'nothing'} failed too: {exc}"
                        + ("; retried when the engine answers again" if down else ""))
            ctx.report.alert(d, f"ROLLBACK FAILED for {d.service} in {d.environment}: {exc}. "
                                + ("deploybot retries when the engine answers again."
                                   if down else "The service needs a person now."))
            return self.finishing.finish(d, result)
        d = ctx.store.transition(
            d.id, DeploymentStatus.ROLLED_BACK,
            failure=f"verification failed ({reasons}); rolled back to {previous or 'nothing'}")
        return self.finishing.finish(d, result)
