"""HAProxy's files and runtime answers, as text in and values out (no I/O here).

Layout of a proxy's `dir` (shared by the services of that dir):
    conf.d/00-global.cfg   master-worker, admin socket, defaults (render_global)
    conf.d/50-KEY.cfg      one service: frontend on `listen`, backend with slots s1/s2 (render_service)
    master.sock            the master CLI (haproxy -S): reload, show proc
    admin.sock             the worker's runtime API: set server, show servers state, show stat
"""

from __future__ import annotations

import csv
import ipaddress
import re
from dataclasses import dataclass

SLOTS = ("s1", "s2")
# An empty slot still needs an address in the file; port 1 (tcpmux) never hosts a web service,
# and an empty slot is always in maintenance, so nothing is ever sent there.
EMPTY = "127.0.0.1:1"
KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

# srv_admin_state bits (HAProxy's SRV_ADMF_*): any maintenance, any drain.
_ADMIN_MAINT = 0x01 | 0x02 | 0x20
_ADMIN_DRAIN = 0x08 | 0x10
_OP_STOPPED = 0


class ProxyAnswerError(ValueError):
    """HAProxy answered something this module cannot read (or an error): the text says what."""


@dataclass(frozen=True)
class Slot:
    name: str  # s1 | s2
    address: str | None  # HOST:PORT, None for an empty slot
    state: str  # ready | drain | maint


def check_key(key: str) -> str:
    if not KEY_RE.match(key):
        raise ValueError(f"{key!r} cannot name an HAProxy frontend/backend (letters, digits, "
                         "'.', '-', '_')")
    return key


def check_address(address: str) -> tuple[str, int]:
    """IPv4:PORT or [IPv6]:PORT -> (IP, port). The runtime API's `set server addr` takes an IP
    (an IPv6 one bare), and a checked address can never smuggle a second command (`;`) into a
    runtime API line: an IPv6 address must be written as HAProxy writes it back (compressed, no
    zone `%...`, no IPv4-mapped form), so the address routed is the address read back."""
    host, sep, port = address.rpartition(":")
    try:
        if host.startswith("[") and host.endswith("]"):
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(host[1:-1])
            if ip.scope_id is not None or ip.ipv4_mapped is not None or str(ip) != host[1:-1]:
                raise ValueError
        else:
            ip = ipaddress.IPv4Address(host)
        number = int(port)
    except ValueError:
        raise ValueError(f"{address!r}: the proxy routes to IPv4:PORT or [IPv6]:PORT, e.g. "
                         "127.0.0.1:32768 or [::1]:32768 (IPv6 compressed, without a zone)") \
            from None
    if not sep or not port.isdigit() or not 1 <= number <= 65535:
        raise ValueError(f"{address!r}: the port must be 1-65535")
    return str(ip), number


def join_address(ip: str, port: int) -> str:
    """The address as check_address takes it and `show stat` writes it: IPv6 in brackets."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def render_global(dir: str) -> str:
    # Defaults chosen so a switch loses nothing: retries go to the server that is ready now
    # (redispatch), and only where resending is safe (the connection failed, or the server
    # closed it without a byte of answer, e.g. an idle keep-alive connection the old version
    # dropped). hard-stop-after bounds how long a reload's old worker finishes its requests.
    return f"""# Written by deploybot (backends/proxy/haproxy.py); rewritten when it differs.
global
    master-worker
    stats socket {dir}/admin.sock mode 600 level admin expose-fd listeners
    pidfile {dir}/haproxy.pid
    hard-stop-after 120s

defaults
    mode http
    timeout connect 3s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout queue 10s
    retries 3
    option redispatch
    retry-on conn-failure empty-response
"""


def render_service(key: str, listen: str, slots: dict[str, Slot]) -> str:
    """The service's file; the serving slot alone is written without `disabled`, so a restarted
    (or reloaded) proxy serves what served. A draining slot is written disabled: it had no new
    requests already, and a reload's old worker finishes its in-flight ones."""
    lines = [f"# Written by deploybot for {key}; traffic is switched at runtime, then written here.",
             f"frontend {key}",
             f"    bind {listen}",
             f"    default_backend {key}",
             "",
             f"backend {key}"]
    for name in SLOTS:
        slot = slots.get(name) or Slot(name, None, "maint")
        disabled = "" if slot.state == "ready" and slot.address else " disabled"
        lines.append(f"    server {name} {slot.address or EMPTY}{disabled}")
    return "\n".join(lines) + "\n"


_BIND_RE = re.compile(r"^\s*bind\s+(\S+)", re.M)
_SERVER_RE = re.compile(r"^\s*server\s+(s[12])\s+(\S+)(\s+disabled)?\s*$", re.M)


def parse_service(text: str) -> tuple[str | None, dict[str, Slot]]:
    """(listen, slots) of a file render_service wrote; unknown lines are ignored."""
    bind = _BIND_RE.search(text)
    slots: dict[str, Slot] = {}
    for m in _SERVER_RE.finditer(text):
        address = None if m[2] == EMPTY else m[2]
        state = "maint" if m[3] or address is None else "ready"
        slots[m[1]] = Slot(m[1], address, state)
    return (bind[1] if bind else None), slots


def parse_servers_state(text: str, key: str) -> dict[str, Slot] | None:
    """`show servers state KEY` -> the slots; None when the running proxy has no such backend."""
    if "Can't find backend" in text:
        return None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    header = next((ln for ln in lines if ln.startswith("# be_id")), None)
    if header is None:
        raise ProxyAnswerError(f"unexpected answer to 'show servers state {key}': "
                               f"{text.strip()[:200]!r}")
    cols = header[2:].split()
    slots: dict[str, Slot] = {}
    for line in lines:
        if line.startswith("#") or line == "1":
            continue
        row = dict(zip(cols, line.split()))
        if row.get("be_name") != key or row.get("srv_name") not in SLOTS:
            continue
        try:
            admin = int(row["srv_admin_state"])
            op = int(row["srv_op_state"])
            address = join_address(row["srv_addr"], int(row["srv_port"]))
        except (KeyError, ValueError):
            raise ProxyAnswerError(f"unexpected server line for {key}: {line[:200]!r}") from None
        if address == EMPTY:
            address = None
        if admin & _ADMIN_MAINT or op == _OP_STOPPED or address is None:
            state = "maint"
        elif admin & _ADMIN_DRAIN:
            state = "drain"
        else:
            state = "ready"
        slots[row["srv_name"]] = Slot(row["srv_name"], address, state)
    if set(slots) != set(SLOTS):
        raise ProxyAnswerError(f"backend {key} of the running proxy has not the slots s1 and s2 "
                               f"deploybot writes (found: {', '.join(sorted(slots)) or 'none'})")
    return slots


def parse_sessions(text: str, key: str, address: str) -> int:
    """`show stat` (CSV) -> current sessions (scur) of this service's slots at `address`."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# pxname"):
        raise ProxyAnswerError(f"unexpected answer to 'show stat': {text.strip()[:200]!r}")
    rows = csv.DictReader([lines[0][2:], *lines[1:]])
    total = 0
    for row in rows:
        if row.get("pxname") == key and row.get("svname") in SLOTS and row.get("addr") == address:
            total += int(row.get("scur") or 0)
    return total


@dataclass(frozen=True)
class Processes:
    reloads: int  # the master's reloads so far
    failed: int  # failed reloads since the last successful one
    workers: dict[int, int]  # current worker pid -> reloads it has lived through (0: newest)


_MASTER_RE = re.compile(r"^(\d+)\s+master\s+(\d+)(?:\s+\[failed:\s*(\d+)\])?", re.M)


def parse_proc(text: str) -> Processes:
    """The master CLI's `show proc`."""
    master = _MASTER_RE.search(text)
    if master is None:
        raise ProxyAnswerError(f"unexpected answer to 'show proc': {text.strip()[:200]!r}")
    workers: dict[int, int] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("#"):
            section = line
            continue
        parts = line.split()
        if section == "# workers" and len(parts) >= 3 and parts[1] == "worker":
            workers[int(parts[0])] = int(parts[2])
    return Processes(int(master[2]), int(master[3] or 0), workers)


def parse_info_pid(text: str) -> int | None:
    m = re.search(r"^Pid:\s*(\d+)", text, re.M)
    return int(m[1]) if m else None


_ERRORS = ("No such", "Can't find", "Unknown command", "Permission denied", "Require ",
           "Invalid", "invalid", "Failed", "failed", "not allowed", "cannot", "Cannot")


def answer_errors(text: str) -> list[str]:
    """The lines of a runtime API answer that report an error (HAProxy answers errors in text)."""
    return [ln.strip() for ln in text.splitlines() if ln.strip().startswith(_ERRORS)]


def alerts(log: str, limit: int = 5) -> list[str]:
    """HAProxy's [ALERT] lines of a start or reload (the reason it refused), the last `limit`."""
    found = [re.sub(r"^\[ALERT\]\s*(\(\d+\)\s*)?:\s*", "", ln.strip())
             for ln in log.splitlines() if "[ALERT]" in ln]
    return found[-limit:]
