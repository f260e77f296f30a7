"""The monitoring setup check: health answers 200, the metrics endpoint speaks Prometheus text."""

from __future__ import annotations

import re

from bot.config import Service
from bot.ports import HttpProbe

# A sample line of the text exposition format: name{labels} value [timestamp]
_SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})?\s+'
                     r'([-+]?[0-9.]+([eE][-+]?[0-9]+)?|[-+]?Inf|NaN)(\s+-?\d+)?$')


def exposition_problem(text: str) -> str | None:
    """Why `text` is not the Prometheus text format (None when it is)."""
    samples = 0
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not _SAMPLE.match(line):
            return f"line {n} is not a metric sample: {line[:80]!r}"
        samples += 1
    return None if samples else "no metric samples"


def monitoring_setup(service: Service, probe: HttpProbe) -> tuple[list[str], list[str], list[str]]:
    """(failures, warnings, fine) about what the watch window will measure on a running service.

    A missing or broken metrics endpoint is a failure when `metrics_required`, else a warning.
    """
    failures: list[str] = []
    warnings: list[str] = []
    fine: list[str] = []
    if service.health:
        a = probe.get(str(service.health.url), service.health.timeout)
        if a.status_code == 200:
            fine.append(f"health {a.url} answers 200")
        else:
            failures.append(f"health {a.url} answered {a.status_code or a.error}, not 200")
    else:
        warnings.append("no health URL configured: the watch cannot see failures")
    if service.metrics_url:
        a = probe.get(str(service.metrics_url), service.health.timeout if service.health else 5.0)
        problem = (f"answered {a.status_code or a.error}" if not a.ok
                   else exposition_problem(a.body))
        if problem:
            text = f"metrics {a.url}: {problem}"
            (failures if service.metrics_required else warnings).append(text)
        else:
            fine.append(f"metrics {a.url} in Prometheus text format")
    elif service.metrics_required:
        failures.append("metrics_required is set but no metrics_url is configured")
    return failures, warnings, fine
