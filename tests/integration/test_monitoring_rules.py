"""deploy/monitoring with Debian's promtool: the alert rules load, their unit tests pass, and
every dashboard query is valid PromQL. Fails (never skips) without promtool."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: apt-get install prometheus "
                    "(it is listed in .ci/apt-packages)", pytrace=False)
    return path


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_alert_rules_load(promtool):
    done = run(promtool, "check", "rules", str(MONITORING / "alerts.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 8 rules found" in done.stdout


def test_alert_rules_unit_tests(promtool):
    done = run(promtool, "test", "rules", str(MONITORING / "alerts_test.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_broken_rule_is_caught(promtool, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"alert": "X", "expr": "sum by (a (deploybot_ready)"}]}]}))
    assert run(promtool, "check", "rules", str(broken)).returncode != 0


def test_every_dashboard_query_is_valid_promql(promtool, tmp_path):
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    # Grafana's variables as a query would have them filled in
    filled = [e.replace("$__range", "1h").replace("$environment", ".*")
              .replace("$service", ".*") for e in exprs]
    rules = tmp_path / "dashboard-as-rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{n}", "expr": e} for n, e in enumerate(filled)]}]}))
    done = run(promtool, "check", "rules", str(rules))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in done.stdout
