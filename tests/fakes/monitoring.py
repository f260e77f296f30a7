"""deploy/monitoring read the way the tests need it: which deploybot_* metrics the dashboard and
the alert rules query, and which names a /metrics answer exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
METRIC = re.compile(r"\bdeploybot_[a-z_]+\b")


def dashboard() -> dict:
    return json.loads((MONITORING / "grafana-dashboard.json").read_text())


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def queried_metrics(exprs: list[str]) -> set[str]:
    return {m for expr in exprs for m in METRIC.findall(expr)}


def exposed_names(text: str) -> set[str]:
    """Sample names, and family names as declared (a labelled metric with no child yet)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(s.name for s in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + end for end in ("_bucket", "_sum", "_count"))
    return names
