"""The rollout of a service on several hosts (the SeveralHosts capability, Docker `hosts:`):
every host prepared first, then batch by batch deployed and verified against that host's own
address; a failing host rolls back its batch and every host done before, in reverse. Entered
from bot/rollout.py once the deployment is DEPLOYING."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from bot.config import Service
from bot.errors import BackendError
from bot.models import (CheckStatus, Deployment, DeploymentKind, DeploymentStatus, HostOutcome,
                        VerificationResult, hosts_from_text, hosts_to_text)
from bot.ports import DeployBackend, SeveralHosts, StepCallback
from bot.verify import checks_at, verify, wait_healthy
from bot.watch import WatchReport

if TYPE_CHECKING:
    from bot.rollout import Rollout

VERIFIED = "deployed and verified"


def in_batches(hosts: list[str], size: int) -> list[list[str]]:
    return [hosts[i:i + size] for i in range(0, len(hosts), size)]


MIXED = "mixed: "


def agreed(values: dict[str, str | None]) -> str | None:
    """The one value every host has, else "mixed: web1 v2, web2 v1" (per_host reads it)."""
    distinct = set(values.values())
    if len(distinct) == 1:
        return distinct.pop()
    return MIXED + ", ".join(f"{host} {v or 'nothing'}" for host, v in values.items())


def per_host(version: str | None) -> dict[str, str | None] | None:
    """What agreed() said of hosts that disagreed, host by host; None for one version.
    (Engines and versions hold no spaces: the configuration refuses them.)"""
    if not version or not version.startswith(MIXED):
        return None
    pairs = (item.rsplit(" ", 1) for item in version[len(MIXED):].split(", "))
    return {host: None if v == "nothing" else v for host, v in pairs}


def url_on_host(url: str, address: str | None) -> str:
    """`url` with its host part replaced by `address` (scheme, user, port and path kept)."""
    if not address:
        return url
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    netloc = (f"{user}@" if user else "") + address + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def service_on_host(svc: Service, address: str | None) -> Service:
    """The service's settings with its health and smoke URLs pointing at one host."""
    if not address:
        return svc
    return checks_at(svc, lambda url: url_on_host(url, address))


class Host:
    def __init__(self, name: str, backend: DeployBackend, svc: Service,
                 outcome: HostOutcome) -> None:
        self.name, self.backend, self.svc, self.outcome = name, backend, svc, outcome
        self.result: VerificationResult | None = None

    @classmethod
    def of(cls, o: HostOutcome, backend: SeveralHosts, svc: Service) -> "Host":
        """A host a stored rollout (d.hosts) names, checked at its own address."""
        return cls(o.host, backend.backend_for_host(o.host), service_on_host(svc, o.address), o)


def combined(hosts: list[Host]) -> VerificationResult:
    """One verification for the record: each check passed on every host verified, else the
    first host's failure; the reasons name the hosts."""
    checked = [h for h in hosts if h.result is not None]
    out = VerificationResult()
    for attr in ("health", "smoke"):
        states = [getattr(h.result, attr) for h in checked]
        setattr(out, attr, CheckStatus.FAILED if CheckStatus.FAILED in states
                else CheckStatus.PASSED if states and all(s is CheckStatus.PASSED for s in states)
                else CheckStatus.SKIPPED)
        setattr(out, f"{attr}_reason", "; ".join(
            f"{h.name}: {getattr(h.result, f'{attr}_reason')}" for h in checked))
    out.health_label = next((h.result.health_label for h in checked
                             if h.result.health is CheckStatus.FAILED), "health")
    out.notes = [f"{h.name}: {n}" for h in checked for n in h.result.notes]
    return out


def run(rollout: "Rollout", d: Deployment, backend: SeveralHosts,
        pin: str | None) -> Deployment:
    """The rollout of `d` on backend's hosts, to its terminal status. Called by Rollout.deploy
    once it has done what it does for one engine up to `prepare` (previous version, build, the
    new version present on every host: SeveralHosts backends prepare them all); `pin`: the bytes
    a manual rollback puts back."""
    from bot.rollout import request_label, running_image  # bot.rollout imports this module

    ctx = rollout.ctx
    step = ctx.step_for(d)
    svc = ctx.config.service(d.service, d.environment)
    hosts: list[Host] = []
    try:
        # each host goes back to what runs there now, whatever the others run
        for name in backend.hosts():
            one = backend.backend_for_host(name)
            address = backend.address_of(name)
            hosts.append(Host(name, one, service_on_host(svc, address), HostOutcome(
                host=name, address=address, previous=one.current_version(),
                previous_image=running_image(one, step))))
    except BackendError as exc:
        return rollout.finishing.failed(d, f"cannot tell what runs on every host: {exc}; "
                                           "nothing was changed")
    d = ctx.store.update_deployment(d.id, hosts=hosts_to_text([h.outcome for h in hosts]))
    return HostRollout(rollout, d, backend, hosts, pin, request_label(ctx.config, d)).go()


class HostRollout:
    def __init__(self, rollout: "Rollout", d: Deployment, backend: SeveralHosts,
                 hosts: list[Host], pin: str | None, label: str) -> None:
        self.rollout, self.ctx, self.d, self.backend = rollout, rollout.ctx, d, backend
        self.hosts, self.by_name = hosts, {h.name: h for h in hosts}
        self.pin, self.label = pin, label
        self.step = self.ctx.step_for(d)
        self.done: list[Host] = []  # changed hosts, in order: what a rollback undoes

    def _save(self, **values) -> None:
        self.d = self.ctx.store.update_deployment(
            self.d.id, hosts=hosts_to_text([h.outcome for h in self.hosts]), **values)

    def go(self) -> Deployment:
        from bot.rollout import running_image

        d, ctx, stop, step = self.d, self.ctx, self.rollout.stop, self.step
        # The window probes each host at its own address against its own baseline: through the
        # service's URLs one bad host among several could pass unseen. Logs, resource usage,
        # Prometheus and the integrity check stay the service's as a whole.
        sampled = {h.name: h.svc for h in self.hosts}
        baseline = self.rollout._baseline(d, self.backend, step, sampled)
        failure = ""
        batches = self.backend.batches()
        for number, batch in enumerate(batches, 1):
            if stop:
                failure = f"stopped ({stop.why}) before batch {number}"
                break
            step(f"batch {number} of {len(batches)}: {', '.join(batch)}")
            failure = self._deploy(batch)
            if self.done and self.d.status is DeploymentStatus.DEPLOYING:
                self.d = ctx.store.transition(
                    self.d.id, DeploymentStatus.VERIFYING,
                    image_ref=running_image(self.done[0].backend, step))
            self._save()
            if failure:
                break
            failure = self._verify(batch)
            self._save()
            if failure:
                break
        result = combined(self.hosts)
        if not failure and baseline is not None:
            report = self.rollout._watch(self.d, self.backend, baseline, result, step, sampled)
            if result.failed:
                failure = self._watch_failed(report, result)
        if not failure:
            return self._succeed(result)
        if not self.done:
            return self.rollout.finishing.failed(self.d, f"{failure}; nothing else was changed")
        summary = "; ".join(f"{k}: {v}" for k, v in ((result.health_label, result.health_reason),
                                                     ("smoke", result.smoke_reason)))
        if self.d.kind is DeploymentKind.ROLLBACK:
            # As with one engine: a manual rollback failing verification is left to people.
            self.d = ctx.store.transition(self.d.id, DeploymentStatus.FAILED,
                                          verification=summary,
                                          failure=f"rollback to {d.version} failed: {failure}")
            ctx.report.alert(self.d, f"manual rollback of {d.service} in {d.environment} to "
                                     f"{d.version} failed: {failure}")
            return self.rollout.finishing.finish(self.d, result)
        return self._roll_back(result, summary, failure)

    def _watch_failed(self, report: WatchReport, result: VerificationResult) -> str:
        """The window's verdict: the hosts whose own probes tripped a rule are named in the
        failure and in their outcome (the others' outcome stays; all are rolled back)."""
        bad = report.tripped_hosts
        for name in bad:
            h = self.by_name[name]
            said = "; ".join(f"{x.rule}: {x.message}" for x in report.trips if x.host == name)
            h.outcome.outcome += f"; failed in the watch window: {said}"
        self._save()
        return (f"watch window{' on ' + ', '.join(bad) if bad else ''}: "
                + "; ".join(result.failure_reasons))

    def _deploy(self, batch: list[str]) -> str:
        """Deploy each host of the batch; the first failure, "" when none."""
        for name in batch:
            h = self.by_name[name]
            # stored first: a deploybot killed now leaves the record saying where it was
            h.outcome.outcome = "interrupted while being deployed"
            self._save()
            try:
                h.backend.deploy(self.d.version, ticket_id=self.label, on_step=self.step,
                                 image=self.pin)
            except BackendError as exc:
                # The backend's contract: a failed deploy restored what ran on that host.
                h.outcome.outcome = f"failed: {exc}"
                return f"deploying {self.d.version} failed {exc}"
            h.outcome.outcome = "deployed, not verified yet"
            self.done.append(h)
        return ""

    def _verify(self, batch: list[str]) -> str:
        """Verify each host of the batch against its own address; the failures, "" when none."""
        stop = self.rollout.stop
        failures = []
        for name in batch:
            h = self.by_name[name]
            self.step(f"verifying {name}" + (f" at {h.outcome.address}" if h.outcome.address
                                             else ""))
            h.result = verify(h.svc, h.backend, self.ctx.probe, self.ctx.clock, self.step,
                              stop=lambda: stop.why if stop else "")
            if h.result.failed:
                reasons = "; ".join(h.result.failure_reasons)
                h.outcome.outcome = f"failed: {reasons}"
                failures.append(f"{name}: {reasons}")
            else:
                h.outcome.outcome = VERIFIED
        return "; ".join(failures)

    def _succeed(self, result: VerificationResult) -> Deployment:
        for h in self.hosts:
            try:
                h.backend.finalize(self.step)
            except BackendError as exc:
                result.notes.append(f"could not clean up after the deploy on {h.name}: {exc}")
        summary = "; ".join(f"{k}: {v}" for k, v in (("health", result.health_reason),
                                                     ("smoke", result.smoke_reason)))
        self.d = self.ctx.store.transition(self.d.id, DeploymentStatus.SUCCEEDED,
                                           verification=summary)
        return self.rollout.finishing.finish(self.d, result)

    def _roll_back(self, result: VerificationResult, summary: str,
                   failure: str) -> Deployment:
        """Every changed host back to what ran there before, the last one changed first."""
        ctx, d = self.ctx, self.d
        d = self.d = ctx.store.transition(d.id, DeploymentStatus.ROLLING_BACK,
                                          verification=summary,
                                          failure=f"verification failed ({failure})")
        names = ", ".join(h.name for h in reversed(self.done))
        ctx.report.alert(d, f"automatic rollback of {d.service} {d.version} in {d.environment} "
                            f"on {names}: {failure}")
        not_restored, unreachable = [], False
        for h in reversed(self.done):
            try:
                back = restore(h, ctx, self.step)
                h.outcome.outcome += f"; rolled back to {h.outcome.previous or 'nothing'}"
                if back:
                    result.notes.append(f"after rollback {h.name} is healthy: {back}")
            except BackendError as exc:
                from bot.recovery import engine_unreachable

                unreachable = unreachable or engine_unreachable(h.backend)
                h.outcome.outcome += f"; ROLLBACK FAILED: {exc}"
                not_restored.append(h.name)
            self._save()
        if not_restored:
            d = self.d = ctx.store.transition(
                d.id, DeploymentStatus.ROLLBACK_FAILED, needs_recovery=int(unreachable),
                failure=f"verification failed ({failure}); the rollback failed on "
                        f"{', '.join(not_restored)}" + ("; retried when the engine answers again"
                                                        if unreachable else ""))
            ctx.report.alert(d, f"ROLLBACK FAILED for {d.service} in {d.environment} on "
                                f"{', '.join(not_restored)}. "
                                + ("deploybot retries when the engine answers again."
                                   if unreachable else "The service needs a person now."))
            return self.rollout.finishing.finish(d, result)
        d = self.d = ctx.store.transition(
            d.id, DeploymentStatus.ROLLED_BACK,
            failure=f"verification failed ({failure}); rolled back on {names}")
        return self.rollout.finishing.finish(d, result)


def restore(h: Host, ctx, step: StepCallback) -> str:
    """Put back what ran on one host and wait for its health; BackendError if it is not."""
    previous = h.outcome.previous
    h.backend.rollback(previous, step, image=h.outcome.previous_image or None)
    if not previous:
        return ""
    status, why = wait_healthy(h.svc, h.backend, ctx.probe, ctx.clock, h.svc.verify.timeout,
                               h.svc.verify.interval)
    if status is CheckStatus.FAILED:
        raise BackendError(f"{previous} is back on {h.name} but not healthy: {why}")
    return why


def recover(ctx, d: Deployment, backend: SeveralHosts) -> list[str]:
    """bot/recovery.py's rollback of an interrupted rollout on several hosts: each host back to
    what ran there before (d.hosts), the last in order first, then health-checked at its
    address; a host still running its previous version is only checked. Returns what each
    host's check said; BackendError names every host that could not be restored (the others
    are restored all the same)."""
    step = ctx.step_for(d)
    svc = ctx.config.service(d.service, d.environment)
    outcomes = hosts_from_text(d.hosts)
    said, failed = [], []
    for o in reversed(outcomes):
        h = Host.of(o, backend, svc)
        try:
            if o.previous and h.backend.current_version() == o.previous:
                step(f"{o.host}: {o.previous} runs; checking its health")
                status, why = wait_healthy(h.svc, h.backend, ctx.probe, ctx.clock,
                                           svc.verify.timeout, svc.verify.interval)
                if status is CheckStatus.FAILED:
                    raise BackendError(f"{o.previous} runs on {o.host} but is not healthy: {why}")
            else:
                why = restore(h, ctx, step)
                o.outcome += f"; rolled back to {o.previous or 'nothing'} by the recovery"
            said.append(f"{o.host}: {why or 'nothing runs'}")
        except BackendError as exc:
            o.outcome += f"; ROLLBACK FAILED: {exc}"
            failed.append(str(exc))
    ctx.store.update_deployment(d.id, hosts=hosts_to_text(outcomes))
    if failed:
        raise BackendError("; ".join(failed))
    return said


def verify_left(ctx, d: Deployment, backend: SeveralHosts, step: StepCallback,
                left: float) -> VerificationResult:
    """bot/recovery.py's verification of the rest of the window: each host at its own address,
    as the rollout does (the service's URLs as written reach one host at most, so a host killed
    before its checks would otherwise pass unseen); the first failing host ends it."""
    svc = ctx.config.service(d.service, d.environment)
    hosts, until = [], ctx.clock.monotonic() + left
    for o in hosts_from_text(d.hosts):
        h = Host.of(o, backend, svc)
        step(f"verifying {o.host}" + (f" at {o.address}" if o.address else ""))
        h.result = verify(h.svc, h.backend, ctx.probe, ctx.clock, step,
                          timeout=max(until - ctx.clock.monotonic(), 0.0))
        hosts.append(h)
        if h.result.failed:
            break
    return combined(hosts)
