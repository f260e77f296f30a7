"""Start-up stays fast: importing the CLI (what `deploybot --help` does) must not import the
clients of the Kubernetes, Slack, Docker and scheduler machinery a command may never use, and
`deploybot status` loads only what it reads with (benchmarks/startup.py)."""

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
# `status` on a store that exists, with the pipeline built as the command builds it; the
# backends are not asked (that needs an engine): what the wiring and the store load.
STATUS = PROBE.replace("handlers.cli.build_parser()", """
from bot.store import Store
from handlers.terminal import TerminalApprover, TerminalReporter
from handlers.wiring import build_pipeline
import bot.config, bot.scheduler
path = sys.argv[1]
Store(path).close()
for m in [m for m in sys.modules if m.split('.')[0] in {HEAVY}]:
    del sys.modules[m]
config = bot.config.parse({CONFIG})
store = Store(path)
pipeline = build_pipeline(config, store, reporter=TerminalReporter(),
                          approver=TerminalApprover(None, interactive=False, config=config))
pipeline.active(); store.locks(); pipeline.outbox.undelivered()
""")
CONFIG = {"tracker": {"kind": "local"}, "environments": {"staging": {}},
          "services": {"web": {"image": "web", "backend": {"kind": "docker"},
                               "health": {"url": "http://127.0.0.1:9/health"}}}}


def _imported(code: str, *args: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_the_cli_and_its_parser_import_no_heavy_client() -> None:
    assert _imported(PROBE) == []


def test_the_probe_sees_a_heavy_import_when_there_is_one() -> None:
    # the same check, with a command's machinery used: it must see the import
    assert "docker" in _imported(PROBE.replace("handlers.cli.build_parser()",
                                               "handlers.cli.build_pipeline.__module__ and "
                                               "__import__('backends.deploy.docker')"))


def _status_code(**config: object) -> str:
    return STATUS.replace("{HEAVY}", repr(set(HEAVY))).replace(
        "{CONFIG}", repr({**CONFIG, **config}))


def test_status_reads_a_migrated_store_without_sqlite_utils_httpx_docker_or_apscheduler(
        tmp_path: Path) -> None:
    assert _imported(_status_code(), str(tmp_path / "deploybot.db")) == []


def test_a_new_store_runs_its_migrations_with_sqlite_utils(tmp_path: Path) -> None:
    # the same probe sees the migrations' library when they run (a store that is not there yet)
    code = _status_code().replace("Store(path).close()\n", "").replace(
        "store = Store(path)", "store = Store(path + '.new')")
    assert "sqlite_utils" in _imported(code, str(tmp_path / "deploybot.db"))
