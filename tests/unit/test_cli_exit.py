"""A command closes its store itself (SQLite folds the WAL back into the file) and the
interpreter's last collection is skipped (gc.freeze at exit), so a deploy's exit is quick."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = {"tracker": {"kind": "local"}, "environments": {"staging": {}},
          "services": {"web": {"image": "web", "backend": {"kind": "docker"},
                               "health": {"url": "http://127.0.0.1:9/health"}}}}


def _deploybot(tmp_path: Path, *args: str, code: str = "") -> subprocess.CompletedProcess:
    config = tmp_path / "deploybot.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DEPLOYBOT_DB": str(tmp_path / "deploybot.db"),
           "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    script = code or "import sys, handlers.cli; sys.exit(handlers.cli.main())"
    return subprocess.run([sys.executable, "-c", script, *args, "--config", str(config)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def test_a_command_leaves_no_wal_behind(tmp_path: Path) -> None:
    done = _deploybot(tmp_path, "status")
    assert done.returncode == 0, done.stderr
    assert "Running now:" in done.stdout
    assert (tmp_path / "deploybot.db").exists()
    assert not (tmp_path / "deploybot.db-wal").exists()


def test_the_command_line_freezes_the_heap_at_exit_and_an_embedding_does_not(
        tmp_path: Path) -> None:
    # registered before main's handler, so it runs after it (atexit: last in, first out)
    probe = ("import atexit, gc, sys, handlers.cli\n"
             "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
             "handlers.cli.main({argv})\n")
    own = _deploybot(tmp_path, "status", code=probe.format(argv=""))
    assert own.returncode == 0, own.stderr
    assert "frozen True" in own.stdout
    embedded = _deploybot(tmp_path, code=probe.format(argv="['status', '--config', sys.argv[-1]]"))
    assert embedded.returncode == 0, embedded.stderr
    assert "frozen False" in embedded.stdout
