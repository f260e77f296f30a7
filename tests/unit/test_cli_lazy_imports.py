"""Start-up stays fast: importing the CLI (what `deploybot --help` does) must not import the
clients of the Kubernetes, Slack, Docker and scheduler machinery a command may never use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("kubernetes", "slack_bolt", "slack_sdk", "apscheduler", "docker", "httpx", "sqlite_utils")
PROBE = f"""
import json, sys
import handlers.cli
handlers.cli.build_parser()
print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))))
"""


def _imported(code: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_the_cli_and_its_parser_import_no_heavy_client() -> None:
    assert _imported(PROBE) == []


def test_the_probe_sees_a_heavy_import_when_there_is_one() -> None:
    # the same check, with a command's machinery used: it must see the import
    assert "apscheduler" in _imported(PROBE.replace("handlers.cli.build_parser()",
                                                    "handlers.cli.DeployScheduler.tick"))
