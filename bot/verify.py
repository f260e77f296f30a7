"""Post-deployment verification: health, detailed health and smoke tests, with a bounded wait."""

from __future__ import annotations

import json
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

from pydantic import AnyHttpUrl

from bot.clock import Clock
from bot.config import Service
from bot.errors import BackendError
from bot.models import BackendStatus, CheckStatus, VerificationResult
from bot.ports import DeployBackend, HttpProbe, ProbeResult, StepCallback

HEALTHY_WORDS = {"ok", "up", "pass", "passing", "healthy", "green", "true"}


def detailed_url(health_url: str, path: str) -> str:
    parts = urlsplit(health_url)
    if not path.startswith("/"):  # relative: below the health URL (proxy paths stay intact)
        path = parts.path.rstrip("/") + "/" + path
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def checks_at(service: Service, rewrite: Callable[[str], str]) -> Service:
    """The service with its health and smoke URLs passed through `rewrite` (the detailed health
    URL follows the health URL): checks aimed at one host, or at a staged version's own port."""
    update: dict = {"smoke": [t.model_copy(update={"url": AnyHttpUrl(rewrite(str(t.url)))})
                              for t in service.smoke]}
    if service.health:
        update["health"] = service.health.model_copy(
            update={"url": AnyHttpUrl(rewrite(str(service.health.url)))})
    return service.model_copy(update=update)


def unhealthy_components(payload: object) -> list[str]:
    """Names of components not ok in a detailed-health JSON body.

    Accepts the common shapes: {"components": {"db": "ok"}}, {"checks": {"db": {"status": "UP"}}},
    {"db": {"status": "pass"}}; a top-level "status" that is not ok counts as well.
    """
    if not isinstance(payload, dict):
        return ["(body is not a JSON object)"]
    bad = []

    def healthy(value: object) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, dict):
            value = value.get("status", value.get("healthy"))
            return healthy(value) if value is not None else True
        return str(value).strip().casefold() in HEALTHY_WORDS

    top = payload.get("status")
    if top is not None and not healthy(top):
        bad.append(f"status={top}")
    groups = [payload[k] for k in ("components", "checks", "details", "dependencies")
              if isinstance(payload.get(k), dict)]
    if not groups:
        groups = [{k: v for k, v in payload.items() if isinstance(v, dict)}]
    for group in groups:
        for name, value in group.items():
            if not healthy(value):
                shown = value.get("status") if isinstance(value, dict) else value
                bad.append(f"{name}={shown}")
    return bad


def failing_now(answer: ProbeResult | None, state: BackendStatus) -> str:
    """Why this probe shows the version up and failing; "" when it may just not be up yet.

    An explicit 5xx or the engine's own verdict (exited, crash-looping, health check unhealthy)
    is a failure; a refused connection, a timeout or a container still starting is not.
    """
    reasons = []
    if answer is not None and answer.status_code is not None and answer.status_code >= 500:
        reasons.append(f"{answer.url} answered {answer.status_code}")
    if state.failing:
        reasons.append(state.failing)
    return "; ".join(reasons)


def wait_healthy(service: Service, backend: DeployBackend, probe: HttpProbe, clock: Clock,
                 timeout: float, interval: float,
                 stop: Callable[[], str] | None = None) -> tuple[CheckStatus, str]:
    """Poll until the backend reports running and the health URL answers 2xx, or time out.

    An engine that does not answer is one more failed poll, retried within the window.
    `stop` (a reason when a stop was asked for) ends the wait after the current poll.
    `verify.failing_probes` probes in a row that show the version up and failing end it early,
    and so does an engine that has given up itself: waiting longer would only keep a broken
    version serving.
    """
    deadline = clock.monotonic() + timeout
    limit = service.verify.failing_probes
    attempts = streak = 0
    while True:
        attempts += 1
        try:
            state = backend.status()
        except BackendError as exc:
            state = BackendStatus(running=False, version=None,
                                  detail=f"unknown: the engine did not answer ({exc.message})")
        answer = probe.get(str(service.health.url), service.health.timeout) if service.health else None
        if state.running and (answer is None or answer.ok):
            if answer is None:
                return CheckStatus.PASSED, f"running ({state.detail}); no health URL configured"
            return CheckStatus.PASSED, (
                f"{answer.url} answered {answer.status_code} in {answer.elapsed_ms:.0f} ms "
                f"after {attempts} probe(s)")
        problems = []
        if answer is not None and not answer.ok:
            problems.append(f"{answer.url} answered {answer.status_code or answer.error}")
        if not state.running or state.detail.endswith("unhealthy"):
            problems.append(f"container {state.detail}")
        last = "; ".join(problems)
        failing = failing_now(answer, state)
        streak = streak + 1 if failing else 0
        if state.final and state.failing:
            return CheckStatus.FAILED, (f"{last}; the engine gave up on it ({state.failing}), "
                                        f"after {attempts} probe(s)")
        if limit and streak >= limit:
            return CheckStatus.FAILED, (f"{last}; up and failing {streak} probes in a row "
                                        f"({failing}), after {attempts} probe(s)")
        why = stop() if stop else ""
        if why:
            return CheckStatus.FAILED, f"{last}; stopped ({why}) after {attempts} probe(s)"
        if clock.monotonic() >= deadline:
            return CheckStatus.FAILED, f"{last}, still after {timeout:.0f} s ({attempts} probes)"
        clock.sleep(min(interval, max(0.0, deadline - clock.monotonic())))


class LastAnswer:
    """A probe that remembers its last answer: the failure says which check really failed."""

    def __init__(self, probe: HttpProbe) -> None:
        self.probe = probe
        self.answer: ProbeResult | None = None

    def get(self, url: str, timeout: float) -> ProbeResult:
        self.answer = self.probe.get(url, timeout)
        return self.answer


def verify(service: Service, backend: DeployBackend, probe: HttpProbe, clock: Clock,
           on_step: StepCallback, *, timeout: float | None = None,
           stop: Callable[[], str] | None = None) -> VerificationResult:
    result = VerificationResult()
    timeout = service.verify.timeout if timeout is None else timeout
    on_step(f"verifying: waiting up to {timeout:.0f} s for health")
    last = LastAnswer(probe)
    result.health, result.health_reason = wait_healthy(
        service, backend, last, clock, timeout, service.verify.interval, stop)
    if result.health is CheckStatus.FAILED and last.answer is not None and last.answer.ok:
        # the URL was fine (old pods may answer it): what failed is the new version's rollout
        result.health_label = "rollout"
        result.health_reason = (f"{last.answer.url} answered {last.answer.status_code}, but "
                                f"the new version failed: {result.health_reason}")
    if result.health is CheckStatus.FAILED:
        result.smoke_reason = "not run: health failed"
        return result
    if service.health and service.health.detailed_path:
        url = detailed_url(str(service.health.url), service.health.detailed_path)
        answer = probe.get(url, service.health.timeout)
        if answer.status_code == 404:
            result.notes.append(f"no detailed health endpoint ({url} answered 404)")
        elif not answer.ok:
            result.health = CheckStatus.FAILED
            result.health_reason = f"{url} answered {answer.status_code or answer.error}"
            result.smoke_reason = "not run: detailed health failed"
            return result
        else:
            try:
                bad = unhealthy_components(json.loads(answer.body))
            except ValueError:
                bad = ["(body is not JSON)"]
            if bad:
                result.health = CheckStatus.FAILED
                result.health_reason = f"{url}: not ok: {', '.join(bad)}"
                result.smoke_reason = "not run: detailed health failed"
                return result
            result.health_reason += "; detailed health all ok"
    on_step(f"health ok: {result.health_reason}")
    if not service.smoke:
        result.smoke_reason = "no smoke endpoints configured"
        return result
    failures, passed = [], []
    for test in service.smoke:
        answer = probe.get(str(test.url), service.health.timeout if service.health else 5.0)
        if answer.status_code != test.expect_status:
            failures.append(f"{test.url} answered {answer.status_code or answer.error}, "
                            f"expected {test.expect_status}")
        elif test.contains and test.contains not in answer.body:
            failures.append(f"{test.url} body lacks {test.contains!r}")
        else:
            passed.append(f"{test.url} {answer.status_code} in {answer.elapsed_ms:.0f} ms")
    if failures:
        result.smoke, result.smoke_reason = CheckStatus.FAILED, "; ".join(failures)
    else:
        result.smoke, result.smoke_reason = CheckStatus.PASSED, "; ".join(passed)
        on_step(f"smoke tests passed ({len(passed)})")
    return result
