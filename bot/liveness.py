"""Is the process that drives a deployment still alive? A pid alone is not enough: pids are
reused, so a process is known by its pid and its start time (/proc/PID/stat, field 22)."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    return text[text.rfind(")") + 2:].split()


def start_marker(pid: int) -> str:
    """The start time of `pid` in clock ticks since boot ("" where /proc is not available)."""
    fields = _stat(pid)
    return fields[19] if fields and len(fields) > 19 else ""


_MINE: dict[int, str] = {}


def my_marker() -> str:
    pid = os.getpid()  # per pid: a forked child is a process of its own
    if pid not in _MINE:
        _MINE[pid] = start_marker(pid)
    return _MINE[pid]


def is_alive(pid: int | None, marker: str = "") -> bool:
    """True while `pid` runs and is the same process (same start time when one was recorded)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    fields = _stat(pid)
    if fields is None:
        return not Path("/proc/self/stat").exists()  # no /proc: the signal check is all we have
    if fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent: dead
        return False
    return not marker or fields[19] == marker


# -- replicas (several deploybot processes, maybe on several machines, on one PostgreSQL) --------

HOST_ENV = "DEPLOYBOT_REPLICA_HOST"


def host() -> str:
    """The machine, as replicas tell each other apart. A pod's hostname is its own; where two
    processes share a hostname but not a process table (two containers with `--uts host`), set
    DEPLOYBOT_REPLICA_HOST to something unique."""
    return os.environ.get(HOST_ENV) or socket.gethostname()


def my_replica() -> str:
    """This process among all deploybot processes: host/pid/start (per pid, like my_marker)."""
    return f"{host()}/{os.getpid()}/{my_marker()}"


def replica_parts(replica: str) -> tuple[str, int, str]:
    """(host, pid, start) of a replica id; ("", 0, "") parts where it has none."""
    host, pid, start = replica.rsplit("/", 2) if replica.count("/") >= 2 else ("", "0", "")
    return host, int(pid) if pid.isdigit() else 0, start


def replica_host(replica: str) -> str:
    return replica_parts(replica)[0]


def on_this_host(replica: str) -> bool:
    """Its process table is ours: whether it runs is known now, not after a heartbeat."""
    return replica_host(replica) == host()
