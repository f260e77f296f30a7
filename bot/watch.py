"""Baseline before a deploy and the watch window after it: measure, compare, decide at once.

The same signals are measured before and after: health and smoke answers through the HTTP prober
(error ratio, latency p50/p95), Prometheus queries when configured, error-line patterns in the
service's logs, resource usage when the backend can tell it, and a data-integrity command. A rule
that trips ends the watch at once, so the pipeline rolls back without waiting for the window's end.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, Mapping, Sequence

from bot.childenv import allowed_environ
from bot.config import Service
from bot.errors import MetricsUnavailable
from bot.redact import clip
from bot.models import CheckStatus, VerificationResult
from bot.ports import (
    DeployBackend,
    HttpProbe,
    MetricsSource,
    ResourceUsage,
    StepCallback,
    Usage,
)

LOG_BASELINE = timedelta(hours=1)  # how far back the running version's error lines are read
MIB = 1024 * 1024

# A command runner: argv, timeout -> (exit code, output). None as exit code: it did not run.
CommandRunner = Callable[[list[str], float], tuple[int | None, str]]


def run_command(argv: list[str], timeout: float,
                env: Mapping[str, str] | None = None) -> tuple[int | None, str]:
    """`env`: the child's whole environment; None: PATH, HOME, LANG, LC_* only."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL,
                              env=dict(allowed_environ(os.environ) if env is None else env))
    except subprocess.TimeoutExpired:
        return None, f"no result within {timeout:g} s"
    except OSError as exc:
        return None, f"cannot run {argv[0]}: {exc.strerror or exc}"
    return proc.returncode, (proc.stdout + proc.stderr).strip()


# -- log fingerprints ---------------------------------------------------------------------------

_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d[T ][\d:.,]+(Z|[+-]\d\d:?\d\d)?\s*")
_VARIABLE = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # uuids
    r"|0x[0-9a-f]+|\b[0-9a-f]{7,}\b"  # addresses, hashes
    r"|\d+(\.\d+)*",  # numbers, versions, IPs
    re.IGNORECASE)


def fingerprint(line: str) -> str:
    """The shape of a log line: timestamps dropped, numbers, ids and hashes replaced by '#'."""
    text = _TIMESTAMP.sub("", line.strip())
    text = _VARIABLE.sub("#", text)
    return " ".join(text.split()).casefold()[:200]


def error_patterns(logs: str, pattern: str) -> Counter[str]:
    """Fingerprints of the error lines in `logs`, with how often each occurs."""
    rx = re.compile(pattern)
    return Counter(fingerprint(line) for line in logs.splitlines() if rx.search(line))


# -- measures -----------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


@dataclass
class Measures:
    """What the prober saw over a window."""

    probes: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def error_pct(self) -> float | None:
        return 100.0 * self.errors / self.probes if self.probes else None

    @property
    def p50(self) -> float | None:
        return percentile(self.latencies_ms, 50)

    @property
    def p95(self) -> float | None:
        return percentile(self.latencies_ms, 95)


def _sums(parts: Sequence[Measures]) -> Measures:
    return Measures(sum(m.probes for m in parts), sum(m.errors for m in parts),
                    [ms for m in parts for ms in m.latencies_ms])


@dataclass
class Baseline:
    measures: Measures = field(default_factory=Measures)
    prometheus: dict[str, float] = field(default_factory=dict)
    log_patterns: set[str] = field(default_factory=set)
    usage: Usage | None = None
    notes: list[str] = field(default_factory=list)
    taken_at: datetime | None = None  # new log lines count from here
    by_host: dict[str, Measures] = field(default_factory=dict)  # several hosts: each its own


@dataclass
class Trip:
    """A rule that tripped: which, the numbers, and when the evidence first appeared."""

    rule: str  # "error rate", "p95 latency", "new log errors", ...
    box: str  # the VerificationResult item: health, smoke, error_rate, latency, monitoring
    message: str
    first_bad: float  # monotonic time of the first failing observation
    decided: float  # monotonic time of the rollback decision
    host: str = ""  # the host whose own probes tripped it; "" for the service as a whole


@dataclass
class WatchReport:
    started: float = 0.0
    rounds: int = 0
    after: Measures = field(default_factory=Measures)
    prometheus: dict[str, float] = field(default_factory=dict)
    new_patterns: Counter[str] = field(default_factory=Counter)
    usage_peak: Usage | None = None
    integrity: str = ""
    inconclusive: list[str] = field(default_factory=list)
    trips: list[Trip] = field(default_factory=list)
    by_host: dict[str, Measures] = field(default_factory=dict)  # several hosts: each its own

    @property
    def tripped_hosts(self) -> list[str]:
        """The hosts whose own probes tripped a rule, in the order they tripped."""
        return list(dict.fromkeys(x.host for x in self.trips if x.host))

    @property
    def detection_seconds(self) -> float | None:
        """First failing observation -> rollback decision, for the first rule that tripped."""
        return self.trips[0].decided - self.trips[0].first_bad if self.trips else None


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f} ms"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}%"


def _on(x: Trip) -> str:
    return f" on {x.host}" if x.host else ""


@dataclass
class _Sampled:
    """One address the window probes (the service's URLs, or one host's) and what it saw."""

    host: str
    service: Service
    base: Measures
    after: Measures
    consecutive: int = 0
    first_health_bad: float | None = None
    first_error_at: float | None = None
    first_slow_at: float | None = None


def watch_enabled(service: Service) -> bool:
    """The default (window 0, nothing else configured) keeps the one-shot verification only."""
    return bool(service.watch.window > 0 or service.integrity_check or service.prometheus)


class Watcher:
    def __init__(self, service: Service, backend: DeployBackend, probe: HttpProbe, clock,
                 metrics: MetricsSource | None = None, run: CommandRunner = run_command,
                 hosts: Mapping[str, Service] | None = None) -> None:
        """`hosts`: several hosts, each name with the service's URLs at its address: health
        and smoke are probed and judged host by host, each against its own baseline; None
        probes the service's URLs as written."""
        self.service = service
        self.hosts = dict(hosts or {})
        self.backend = backend
        self.probe = probe
        self.clock = clock
        self.metrics = metrics
        self.run = run
        self.rules = service.watch.rules

    # -- one round of samples -----------------------------------------------------------------

    def _probe_round(self, into: Sequence[Measures], svc: Service | None = None,
                     ) -> tuple[str | None, list[str], float | None]:
        """Probe health and smoke of `svc` (default: the service) once, counting each answer
        in every Measures of `into`. Returns (health problem, smoke problems, slowest ms)."""
        svc = svc or self.service
        timeout = svc.health.timeout if svc.health else 5.0

        def count(a, error: bool) -> None:
            for m in into:
                m.probes += 1
                if a.status_code is not None:
                    m.latencies_ms.append(a.elapsed_ms)
                if error:
                    m.errors += 1

        health_problem = None
        slowest = None
        if svc.health:
            a = self.probe.get(str(svc.health.url), timeout)
            count(a, not a.ok)
            if a.status_code is not None:
                slowest = a.elapsed_ms
            if not a.ok:
                health_problem = f"{a.url} answered {a.status_code or a.error}"
        smoke_problems = []
        for test in svc.smoke:
            a = self.probe.get(str(test.url), timeout)
            if a.status_code is not None:
                slowest = max(slowest or 0.0, a.elapsed_ms)
            problem = None
            if a.status_code != test.expect_status:
                problem = (f"{test.url} answered {a.status_code or a.error}, "
                           f"expected {test.expect_status}")
            elif test.contains and test.contains not in a.body:
                problem = f"{test.url} body lacks {test.contains!r}"
            count(a, problem is not None)
            if problem:
                smoke_problems.append(problem)
        return health_problem, smoke_problems, slowest

    def _prometheus_round(self, into: dict[str, float], inconclusive: list[str]) -> None:
        if not self.metrics or not self.service.prometheus:
            return
        for name, expr in self.service.prometheus.queries.model_dump().items():
            if not expr:
                continue
            try:
                value = self.metrics.query(expr)
            except MetricsUnavailable as exc:
                note = f"Prometheus {name}: inconclusive ({exc})"
            else:
                if value is not None:
                    into[name] = value
                    continue
                note = f"Prometheus {name}: inconclusive (the query returned no data)"
            if note not in inconclusive:
                inconclusive.append(note)

    def _usage(self, inconclusive: list[str]) -> Usage | None:
        if not isinstance(self.backend, ResourceUsage):
            return None
        if self.rules.cpu_percent is None and self.rules.memory_mb is None:
            return None
        try:
            return self.backend.usage()
        except Exception as exc:  # a backend error is inconclusive, never a crash of the watch
            note = f"resource usage: inconclusive ({exc})"
            if note not in inconclusive:
                inconclusive.append(note)
            return None

    def _logs(self, since: datetime, inconclusive: list[str]) -> Counter[str]:
        try:
            return error_patterns(self.backend.logs(since), self.rules.log_error_pattern)
        except Exception as exc:
            note = f"logs: inconclusive ({exc})"
            if note not in inconclusive:
                inconclusive.append(note)
            return Counter()

    # -- baseline -------------------------------------------------------------------------------

    def baseline(self, on_step: StepCallback) -> Baseline:
        """Sample what runs now for `watch.baseline_window` seconds (one round when 0)."""
        b = Baseline()
        cfg = self.service.watch
        end = self.clock.monotonic() + cfg.baseline_window
        on_step(f"baseline: sampling the running version for {cfg.baseline_window:g} s")
        b.by_host = {name: Measures() for name in self.hosts}
        while True:
            if self.hosts:
                for name, svc in self.hosts.items():
                    self._probe_round([b.by_host[name], b.measures], svc)
            else:
                self._probe_round([b.measures])
            self._prometheus_round(b.prometheus, b.notes)
            usage = self._usage(b.notes)
            if usage:
                b.usage = usage
            if self.clock.monotonic() >= end:
                break
            self.clock.sleep(min(cfg.interval, max(0.0, end - self.clock.monotonic())))
        b.taken_at = self.clock.now()
        b.log_patterns = set(self._logs(b.taken_at - LOG_BASELINE, b.notes))
        m = b.measures
        if self.hosts:
            for name, hm in b.by_host.items():
                if hm.probes and not hm.latencies_ms:
                    b.notes.append(f"baseline: nothing answered on {name} (first deployment "
                                   "there?); its error rate and latency are judged without a "
                                   "baseline")
                    b.by_host[name] = Measures()
            b.measures = _sums(list(b.by_host.values()))
        elif m.probes and not m.latencies_ms:
            b.notes.append("baseline: nothing answered (first deployment?); error rate and "
                           "latency are judged without a baseline")
            b.measures = Measures()
        on_step(f"baseline: error rate {_pct(b.measures.error_pct)}, p50 {_ms(b.measures.p50)}, "
                f"p95 {_ms(b.measures.p95)}, {len(b.log_patterns)} known error pattern(s)")
        for name, hm in b.by_host.items():
            on_step(f"baseline on {name}: error rate {_pct(hm.error_pct)}, p50 {_ms(hm.p50)}, "
                    f"p95 {_ms(hm.p95)}")
        return b

    # -- the watch window ---------------------------------------------------------------------

    def watch(self, baseline: Baseline, on_step: StepCallback) -> WatchReport:
        """Measure every `interval` for `window` seconds; stop at the first rule that trips."""
        cfg, rules = self.service.watch, self.rules
        clock = self.clock
        r = WatchReport(started=clock.monotonic())
        end = r.started + cfg.window
        on_step(f"watching for {cfg.window:g} s, every {cfg.interval:g} s")
        if self.hosts:
            sampled = [_Sampled(name, svc, baseline.by_host.get(name, Measures()),
                                r.by_host.setdefault(name, Measures()))
                       for name, svc in self.hosts.items()]
        else:
            sampled = [_Sampled("", self.service, baseline.measures, r.after)]
        while True:
            r.rounds += 1
            t = clock.monotonic()
            answers = [self._probe_round([x.after, r.after] if x.host else [x.after], x.service)
                       for x in sampled]
            now = clock.monotonic()

            def trip(rule: str, box: str, message: str, first_bad: float, host: str = "") -> None:
                r.trips.append(Trip(rule, box, message, first_bad, clock.monotonic(), host))

            for x, answer in zip(sampled, answers):
                self._judge_probes(x, answer, trip, t)
            self._judge_prometheus(baseline, r, trip, t)
            self._judge_usage(r, trip, t)
            if rules.new_log_errors is not None:
                found = self._logs(baseline.taken_at or self.clock.now(), r.inconclusive)
                r.new_patterns = Counter({p: n for p, n in found.items()
                                          if p not in baseline.log_patterns})
                count = sum(r.new_patterns.values())
                if count > rules.new_log_errors:
                    shown = "; ".join(f"{n}× {p!r}" for p, n in r.new_patterns.most_common(3))
                    trip("new log errors", "monitoring",
                         f"{count} error line(s) of {len(r.new_patterns)} new pattern(s) in the "
                         f"logs (more than {rules.new_log_errors} allowed): {shown}", t)
            last_round = now >= end
            if self.service.integrity_check and (r.rounds == 1 or last_round) and not r.trips:
                self._judge_integrity(r, trip)
            if r.trips:
                on_step("watch: " + "; ".join(f"{x.rule}{_on(x)}: {x.message}" for x in r.trips))
                return r
            if clock.monotonic() >= end:
                break
            clock.sleep(min(cfg.interval, max(0.0, end - clock.monotonic())))
        on_step(f"watch: {r.rounds} round(s), no rule tripped")
        return r

    def _judge_probes(self, x: _Sampled, answer: tuple[str | None, list[str], float | None],
                      trip, t: float) -> None:
        """The rules on what the prober saw at one address, against that address's baseline."""
        rules, base, after = self.rules, x.base, x.after
        health_problem, smoke_problems, slowest = answer

        def tripped(rule: str, box: str, message: str, first_bad: float) -> None:
            trip(rule, box, message, first_bad, x.host)

        if health_problem:
            x.consecutive += 1
            x.first_health_bad = x.first_health_bad if x.first_health_bad is not None else t
        else:
            x.consecutive, x.first_health_bad = 0, None
        if rules.health_failures and x.consecutive >= rules.health_failures:
            tripped("health check failing", "health",
                    f"{x.consecutive} consecutive failed health probes (limit "
                    f"{rules.health_failures}): {health_problem}", x.first_health_bad)
        if rules.smoke and smoke_problems:
            tripped("smoke test broken", "smoke", "; ".join(smoke_problems), t)
        if after.errors and x.first_error_at is None:
            x.first_error_at = t
        if (rules.error_rate_points is not None and after.error_pct is not None
                and after.probes >= rules.error_rate_min_probes):
            before = base.error_pct or 0.0
            if after.error_pct > before + rules.error_rate_points:
                tripped("error rate", "error_rate",
                        f"error rate {before:.1f}% → {after.error_pct:.1f}% (baseline + "
                        f"{rules.error_rate_points:.1f} pts allowed; {after.errors} of "
                        f"{after.probes} probes)", x.first_error_at or t)
        if rules.latency_factor is not None and base.p95 is not None and after.p95:
            limit = max(base.p95 * rules.latency_factor, rules.latency_floor_ms)
            if slowest is not None and slowest > limit and x.first_slow_at is None:
                x.first_slow_at = t
            if after.p95 > limit:
                tripped("p95 latency", "latency",
                        f"p95 {base.p95:.0f} ms → {after.p95:.0f} ms "
                        f"(×{rules.latency_factor:.1f} allowed, floor "
                        f"{rules.latency_floor_ms:.0f} ms)", x.first_slow_at or t)

    def _judge_prometheus(self, baseline: Baseline, r: WatchReport, trip, t: float) -> None:
        self._prometheus_round(r.prometheus, r.inconclusive)
        rules, before, after = self.rules, baseline.prometheus, r.prometheus
        if rules.error_rate_points is not None and "error_rate" in after:
            b, a = before.get("error_rate", 0.0) * 100, after["error_rate"] * 100
            if a > b + rules.error_rate_points:
                trip("error rate (Prometheus)", "error_rate",
                     f"error rate {b:.1f}% → {a:.1f}% (baseline + {rules.error_rate_points:.1f} "
                     f"pts allowed)", t)
        if rules.latency_factor is not None and "latency_p95" in after and "latency_p95" in before:
            b, a = before["latency_p95"] * 1000, after["latency_p95"] * 1000
            if a > max(b * rules.latency_factor, rules.latency_floor_ms):
                trip("p95 latency (Prometheus)", "latency",
                     f"p95 {b:.0f} ms → {a:.0f} ms (×{rules.latency_factor:.1f} allowed)", t)
        if rules.cpu_percent is not None and after.get("cpu", 0.0) > rules.cpu_percent:
            trip("CPU (Prometheus)", "monitoring",
                 f"CPU {before.get('cpu', 0.0):.0f}% → {after['cpu']:.0f}% "
                 f"(limit {rules.cpu_percent:.0f}%)", t)
        if rules.memory_mb is not None and after.get("memory", 0.0) > rules.memory_mb * MIB:
            trip("memory (Prometheus)", "monitoring",
                 f"memory {before.get('memory', 0.0) / MIB:.1f} MiB → "
                 f"{after['memory'] / MIB:.1f} MiB (limit {rules.memory_mb:g} MiB)", t)

    def _judge_usage(self, r: WatchReport, trip, t: float) -> None:
        usage = self._usage(r.inconclusive)
        if usage is None:
            return
        peak = r.usage_peak
        r.usage_peak = Usage(max(usage.cpu_percent, peak.cpu_percent if peak else 0.0),
                             max(usage.memory_bytes, peak.memory_bytes if peak else 0.0))
        rules = self.rules
        if rules.cpu_percent is not None and usage.cpu_percent > rules.cpu_percent:
            trip("CPU", "monitoring",
                 f"CPU {usage.cpu_percent:.0f}% (limit {rules.cpu_percent:.0f}%)", t)
        if rules.memory_mb is not None and usage.memory_bytes > rules.memory_mb * MIB:
            trip("memory", "monitoring", f"memory {usage.memory_bytes / MIB:.1f} MiB "
                                         f"(limit {rules.memory_mb:g} MiB)", t)

    def _judge_integrity(self, r: WatchReport, trip) -> None:
        argv = self.service.integrity_check
        assert argv
        t = self.clock.monotonic()
        code, output = self.run(argv, self.service.integrity_timeout)
        shown = clip(output.splitlines()[-1], 200) if output else ""
        if code == 0:
            r.integrity = f"integrity check `{' '.join(argv)}` passed"
            return
        if code is None:
            r.integrity = f"integrity check `{' '.join(argv)}`: {output}"
        else:
            r.integrity = (f"integrity check `{' '.join(argv)}` exited {code}"
                           + (f": {shown}" if shown else ""))
        trip("data integrity", "monitoring", r.integrity, t)


def apply(result: VerificationResult, baseline: Baseline, report: WatchReport,
          service: Service) -> None:
    """Fill the record's boxes and notes from the baseline and the watch."""
    rules = service.watch.rules
    by_box: dict[str, list[Trip]] = {}
    for x in report.trips:
        by_box.setdefault(x.box, []).append(x)
    base, after = baseline.measures, report.after

    def failed(box: str) -> str | None:
        return "; ".join(f"rule '{x.rule}' tripped{_on(x)}: {x.message}"
                         for x in by_box.get(box, [])) or None

    def each(say: Callable[[str, Measures, Measures], str]) -> str:
        """`say(on, before, after)` of the service (on ""), or of every host (on " on h1")."""
        if not report.by_host:
            return say("", base, after)
        return "; ".join(say(f" on {host}", baseline.by_host.get(host, Measures()), m)
                         for host, m in report.by_host.items())

    for box in ("health", "smoke"):
        why = failed(box)
        if why:
            setattr(result, box, CheckStatus.FAILED)
            setattr(result, f"{box}_reason", why)
    why = failed("error_rate")
    if why:
        result.error_rate, result.error_rate_reason = CheckStatus.FAILED, why
    elif after.probes:
        allowed = (f"baseline + {rules.error_rate_points:.1f} pts allowed"
                   if rules.error_rate_points is not None else "rule off")
        result.error_rate_reason = each(lambda on, b, a: f"error rate{on} {_pct(b.error_pct or 0.0)}"
                                        f" → {_pct(a.error_pct)}") + f" ({allowed})"
        counted = [(f" on {host}", m) for host, m in report.by_host.items()] or [("", after)]
        short = [(on, m) for on, m in counted
                 if m.errors and m.probes < rules.error_rate_min_probes]
        if short:
            on, m = short[0]
            result.error_rate = CheckStatus.SKIPPED  # errors seen, too few probes to judge
            result.error_rate_reason += (f"; not judged{on}: {m.probes} probe(s), fewer than "
                                         f"{rules.error_rate_min_probes}")
        else:
            result.error_rate = CheckStatus.PASSED
    why = failed("latency")
    if why:
        result.latency, result.latency_reason = CheckStatus.FAILED, why
    elif after.p95 is not None:
        result.latency = CheckStatus.PASSED
        allowed = (f"×{rules.latency_factor:.1f} allowed" if rules.latency_factor is not None
                   else "rule off")
        result.latency_reason = each(lambda on, b, a: f"p95{on} {_ms(b.p95)} → {_ms(a.p95)}, p50 "
                                     f"{_ms(b.p50)} → {_ms(a.p50)}") + f" ({allowed})"
        if base.p95 is None:
            result.latency_reason += "; no baseline to compare with"
    why = failed("monitoring")
    parts = []
    if rules.new_log_errors is not None:
        parts.append(f"{sum(report.new_patterns.values())} line(s) of new error patterns "
                     f"({len(baseline.log_patterns)} known before)")
    if report.integrity:
        parts.append(report.integrity)
    if report.usage_peak:
        parts.append(f"peak CPU {report.usage_peak.cpu_percent:.0f}%, memory "
                     f"{report.usage_peak.memory_bytes / MIB:.1f} MiB")
    for name, value in report.prometheus.items():
        parts.append(f"Prometheus {name} {baseline.prometheus.get(name, float('nan')):.4g} → "
                     f"{value:.4g}")
    inconclusive = baseline.notes[:] + report.inconclusive
    inconclusive = [n for n in inconclusive if "inconclusive" in n]
    if why:
        result.monitoring, result.monitoring_reason = CheckStatus.FAILED, why
    elif inconclusive and service.watch.inconclusive_fails:
        result.monitoring = CheckStatus.FAILED
        result.monitoring_reason = "INCONCLUSIVE: " + "; ".join(inconclusive)
    elif inconclusive:
        result.monitoring = CheckStatus.SKIPPED
        result.monitoring_reason = "INCONCLUSIVE (not counted as healthy): " + "; ".join(inconclusive)
    elif parts:
        result.monitoring, result.monitoring_reason = CheckStatus.PASSED, "; ".join(parts)
    # The numbers, baseline beside after, for the record's Notes.
    result.notes.append(
        f"Watch: {report.rounds} round(s) over "
        f"{service.watch.window:g} s window (every {service.watch.interval:g} s); baseline "
        f"{base.probes} probe(s), after {after.probes} probe(s)")
    for status, reason in ((result.error_rate, result.error_rate_reason),
                           (result.latency, result.latency_reason),
                           (result.monitoring, result.monitoring_reason)):
        if status is CheckStatus.PASSED:  # a ticked box shows no reason: the numbers go here
            result.notes.append(reason[:1].upper() + reason[1:])
    for x in report.trips:
        result.notes.append(f"Rule tripped: {x.rule}{_on(x)}: {x.message} (decided "
                            f"{x.decided - x.first_bad:.2f} s after the first failing "
                            f"observation, {x.decided - report.started:.2f} s into the watch)")
    result.notes += [f"Warning: {n}" for n in baseline.notes + report.inconclusive]
