"""Which Docker engine `deploybot demo` uses: the one that answers, else a private one it starts.

The decision (`decide`) only asks its probes, so it can be tested without any engine; starting
the private engine is scripts/dockerd.sh's job (own data dir, socket, pidfile and bridge), the
same script the tests and CI use.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal, Mapping

DEFAULT_HOST = "unix:///var/run/docker.sock"
BASE_IMAGE = "deploybot/busybox:latest"
PROBE_TIMEOUT = 5  # seconds; an engine that answers does so at once
START_TIMEOUT = 120  # dockerd.sh gives the engine 60 s to answer, plus the bridge set-up

# Tool -> the Debian package that ships it.
PACKAGES = {"dockerd": "docker.io", "docker": "docker.io", "ip": "iproute2",
            "busybox": "busybox-static"}
# Networks tried in turn for the private engine's bridge: the first that no address or route
# of the machine overlaps.
BRIDGE_CANDIDATES = ("172.30.0.1/24", "172.31.0.1/24", "10.213.0.1/24", "192.168.213.1/24")


@dataclass(frozen=True)
class PrivateEngine:
    """Where the private engine lives (the DEPLOYBOT_DOCKER_DIR of scripts/dockerd.sh)."""

    dir: Path
    bridge: str

    @property
    def host(self) -> str:
        return f"unix://{self.dir}/docker.sock"

    @property
    def pidfile(self) -> Path:
        return self.dir / "docker.pid"

    def script_env(self, cidr: str) -> dict[str, str]:
        # No iptables: the demo publishes on 127.0.0.1 only (docker-proxy serves that), and the
        # machine's firewall rules stay as they were.
        return {"DEPLOYBOT_DOCKER_DIR": str(self.dir), "DEPLOYBOT_DOCKER_BRIDGE": self.bridge,
                "DEPLOYBOT_DOCKER_BRIDGE_CIDR": cidr, "DEPLOYBOT_DOCKER_IPTABLES": "false"}


@dataclass
class Probes:
    """What the decision looks at; real ones in `real_probes`, fakes in the unit tests."""

    answers: Callable[[str], bool]  # DOCKER_HOST value -> an engine answers there
    which: Callable[[str], str | None]
    is_root: Callable[[], bool]
    busybox_ok: Callable[[], bool]  # a static busybox with httpd for the base image
    has_base_image: Callable[[str], bool]
    engine_pid: Callable[[PrivateEngine], int | None]


@dataclass(frozen=True)
class Decision:
    action: Literal["use", "start", "install", "refuse"]
    host: str = ""
    why: str = ""  # one sentence for the person
    packages: tuple[str, ...] = field(default=())
    private_pid: int | None = None  # when the engine used is the private one

    @property
    def apt_command(self) -> str:
        return "apt-get install -y " + " ".join(self.packages)


def _missing(probes: Probes, tools: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for tool in tools:
        present = probes.busybox_ok() if tool == "busybox" else probes.which(tool) is not None
        if not present and PACKAGES[tool] not in out:
            out.append(PACKAGES[tool])
    return tuple(out)


def decide(environ: Mapping[str, str], engine: PrivateEngine, probes: Probes) -> Decision:
    """use an engine that answers / start the private one / say what to install / refuse.
    Nothing here changes the machine."""
    wanted = environ.get("DOCKER_HOST", "")
    found = ""
    if wanted:
        if probes.answers(wanted):
            found = wanted
        elif wanted != engine.host:  # someone else's engine: never replaced behind their back
            return Decision("refuse", why=(
                f"DOCKER_HOST={wanted} does not answer: start that engine, or unset DOCKER_HOST "
                "to let deploybot demo find (or, as root, start) one"))
    elif probes.answers(DEFAULT_HOST):
        found = DEFAULT_HOST
    elif probes.answers(engine.host):
        found = engine.host
    if found:
        ours = probes.engine_pid(engine) if found == engine.host else None
        tools = ["docker"] if probes.has_base_image(found) else ["docker", "busybox"]
        missing = _missing(probes, tools)
        if missing:
            return Decision("install", host=found, packages=missing, why=(
                "the demo images are built with the docker command on a busybox-static base"))
        how = (f"the private engine of an earlier deploybot demo (pid {ours})" if ours
               else "the Docker engine that answers")
        return Decision("use", host=found, why=f"{how} at {found}", private_pid=ours)
    where = wanted or DEFAULT_HOST
    missing = _missing(probes, ["dockerd", "docker", "ip", "busybox"])
    if missing:
        return Decision("install", packages=missing, why=(
            f"no Docker engine answers at {where}, and a private one needs "
            + ", ".join(missing)))
    if not probes.is_root():
        return Decision("refuse", why=(
            f"no Docker engine answers at {where}; run `deploybot demo` as root to start a "
            "private one, or start the machine's engine (systemctl start docker) or point "
            "DOCKER_HOST at one you may use"))
    return Decision("start", host=engine.host, why=f"no Docker engine answers at {where}")


# -- the real probes -------------------------------------------------------------------------------

def engine_answers(host: str) -> bool:
    import docker

    try:
        client = docker.DockerClient(base_url=host, timeout=PROBE_TIMEOUT)
    except Exception:  # the SDK asks the version at construction: no engine there
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def has_image(host: str, image: str = BASE_IMAGE) -> bool:
    import docker

    try:
        client = docker.DockerClient(base_url=host, timeout=PROBE_TIMEOUT)
    except Exception:
        return False
    try:
        client.images.get(image)
        return True
    except Exception:
        return False
    finally:
        client.close()


def busybox_ok(path: str = "/bin/busybox") -> bool:
    """The check scripts/build-base-image.sh makes: a busybox with the httpd applet."""
    try:
        out = subprocess.run([path, "--list"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "httpd" in out.stdout.split()


def running_pid(engine: PrivateEngine) -> int | None:
    """The PID in the engine's pidfile, if that process lives and is a dockerd."""
    try:
        pid = int(engine.pidfile.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == "dockerd" else None


def real_probes() -> Probes:
    return Probes(answers=engine_answers, which=shutil.which, is_root=lambda: os.geteuid() == 0,
                  busybox_ok=busybox_ok, has_base_image=has_image, engine_pid=running_pid)


# -- the private engine's bridge and start ---------------------------------------------------------

_INET = re.compile(r"\binet (\d+\.\d+\.\d+\.\d+/\d+)")


def free_cidr(used: Iterable[str], candidates: Iterable[str] = BRIDGE_CANDIDATES) -> str | None:
    """The first candidate gateway/prefix whose network overlaps none of `used`."""
    taken = [ipaddress.ip_network(u, strict=False) for u in used]
    for cidr in candidates:
        net = ipaddress.ip_interface(cidr).network
        if not any(net.overlaps(t) for t in taken):
            return cidr
    return None


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10,
                          check=True).stdout


def bridge_cidr(bridge: str) -> str:
    """The bridge's own address when it exists (a second start reuses it), else a free one."""
    try:
        mine = _INET.findall(_ip("-o", "-4", "addr", "show", "dev", bridge))
    except subprocess.CalledProcessError:  # no such device yet
        mine = []
    if mine:
        return mine[0]
    used = _INET.findall(_ip("-o", "-4", "addr", "show"))
    used += [line.split()[0] for line in _ip("-4", "route", "show").splitlines()
             if line and not line.startswith("default")]
    cidr = free_cidr(used)
    if cidr is None:
        raise RuntimeError(f"every network deploybot demo tries for its bridge is in use here "
                           f"({', '.join(BRIDGE_CANDIDATES)})")
    return cidr


def start_private(engine: PrivateEngine, script: Path, environ: Mapping[str, str]) -> tuple[str, int]:
    """Starts (or finds) the engine through scripts/dockerd.sh -> (DOCKER_HOST, pid). The engine
    outlives this process: dockerd.sh starts it in its own session."""
    env = {**environ, **engine.script_env(bridge_cidr(engine.bridge))}
    try:
        done = subprocess.run([str(script), "start"], env=env, capture_output=True, text=True,
                              timeout=START_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{script} start did not finish within {START_TIMEOUT} s "
                           f"(log: {engine.dir}/dockerd.log)") from None
    if done.returncode != 0:
        raise RuntimeError(f"the private Docker engine did not start:\n{done.stderr.strip()}")
    host = done.stdout.strip().rpartition("=")[2]
    pid = running_pid(engine)
    if host != engine.host or pid is None:
        raise RuntimeError(f"{script} start said {done.stdout.strip()!r}, but no dockerd runs "
                           f"from {engine.pidfile}")
    return host, pid
