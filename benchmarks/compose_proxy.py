"""A Compose service deployed and rolled back under a constant load, without the proxy (compose
`up` recreates the container on its published port) and behind it (started beside, switched at
HAProxy, rolled back by a switch to the warm old container), interleaved round by round.

Needs the project's Docker engine (DOCKER_HOST, scripts/dockerd.sh), the busybox base image
(scripts/build-base-image.sh) and the proxy image (scripts/build-proxy-image.sh); builds the demo
image as v1 and v2 in a repository of its own and removes everything it started.

    python benchmarks/compose_proxy.py [--rounds 3] [--rate 50]

Prints per mode and phase (deploy v2, rollback to v1): requests, failed, p99 latency, and the
rollback's restore time (the rollback's start until the first request that v1 answers starts),
and until the switch returned (proxy) or `compose up` ended (without).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import docker
import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends.deploy.compose import ComposeBackend, find_compose, run_streaming  # noqa: E402
from bot import config as config_mod  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Load:
    """GET /version at a constant `rate` per second, one connection per request, each request
    in a thread of its own (a slow answer does not lower the rate)."""

    def __init__(self, address: str, rate: float) -> None:
        self.url, self.period = f"http://{address}/version", 1.0 / rate
        self.latencies: list[float] = []
        self.answers: list[tuple[float, str]] = []
        self.failed = 0
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _one(self) -> None:
        started = time.perf_counter()
        try:
            answer = httpx.get(self.url, timeout=5, headers={"Connection": "close"})
            ok = answer.status_code == 200
        except httpx.HTTPError:
            ok = False
        done = time.perf_counter()
        with self._lock:
            self.latencies.append(done - started)
            if ok:
                self.answers.append((started, answer.text.strip()))
            else:
                self.failed += 1

    def _run(self) -> None:
        due = time.perf_counter()
        while not self._stop.is_set():
            worker = threading.Thread(target=self._one, daemon=True)
            worker.start()
            self._workers.append(worker)
            due += self.period
            time.sleep(max(0.0, due - time.perf_counter()))

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        for worker in self._workers:
            worker.join(timeout=10)

    def p99_ms(self) -> float:
        if len(self.latencies) < 2:
            return float("nan")
        return statistics.quantiles(self.latencies, n=100)[98] * 1000


def restore_time(load: Load, since: float, version: str) -> float:
    """From the rollback's start to the start of the first request after it that `version`
    answered: from then on new requests reach it (their own latency is the p99's business)."""
    later = [t for t, v in load.answers if v == version and t >= since]
    return (min(later) - since) if later else float("nan")


def settings(folder: Path, repository: str, listen: str, proxy: bool, project: str):
    backend = {"kind": "compose", "file": str(folder / "compose.yml"), "project": project,
               "pull": "never", "timeout": 60, "stop_timeout": 1}
    if proxy:
        backend["proxy"] = {"listen": listen, "port": 8080, "drain": 2, "run": "container",
                            "image": "deploybot/haproxy:2.6",
                            "container_name": f"{project}-proxy", "dir": str(folder / "proxy")}
    return config_mod.parse({"environments": {"staging": {}}, "services": {"web": {
        "image": repository, "backend": backend,
        "health": {"url": f"http://{listen}/health"},
        "verify": {"timeout": 20, "interval": 0.5}}}}).service("web", "staging")


def one_round(mode: str, repository: str, rate: float, rows: list) -> None:
    folder = Path(tempfile.mkdtemp(prefix="czb-"))
    project = f"czb-{uuid.uuid4().hex[:6]}"
    direct = f"127.0.0.1:{free_port()}"
    (folder / "compose.yml").write_text(yaml.safe_dump({"services": {"web": {
        "image": f"{repository}:v1", "ports": [f"{direct}:8080"], "stop_grace_period": "1s"}}}))
    proxy = mode == "proxy"
    listen = f"127.0.0.1:{free_port()}" if proxy else direct
    backend = ComposeBackend("web", "staging", settings(folder, repository, listen, proxy,
                                                         project))
    switched: list[float] = []

    def quiet(message: str) -> None:
        if message.startswith("the proxy sends") or message.startswith("compose ps"):
            switched.append(time.perf_counter())  # the switch returned / `up` finished

    client = docker.from_env()
    try:
        backend.prepare("v1", quiet)
        backend.deploy("v1", ticket_id="B-1", on_step=quiet)
        if proxy:
            backend.finalize(quiet)
        for phase, action in (("deploy v2", lambda: (backend.prepare("v2", quiet),
                                                     backend.deploy("v2", ticket_id="B-2",
                                                                    on_step=quiet))),
                              ("rollback v1", lambda: backend.rollback("v1", quiet))):
            with Load(listen, rate) as load:
                time.sleep(1.0)
                switched.clear()
                started = time.perf_counter()
                action()
                time.sleep(1.0)
            rollback = phase.startswith("rollback")
            restore = restore_time(load, started, "v1") if rollback else None
            call = (switched[0] - started) if rollback and switched else None
            rows.append((mode, phase, len(load.latencies), load.failed, load.p99_ms(), restore,
                         call))
    finally:
        run_streaming([*find_compose().argv, "-p", project, "-f", str(folder / "compose.yml"),
                       "down", "--timeout", "1"], timeout=60)
        try:
            client.containers.get(f"{project}-proxy").remove(force=True)
        except docker.errors.NotFound:
            pass
        client.close()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=50.0)
    args = parser.parse_args()
    client = docker.from_env()
    repository = f"compose-bench-{uuid.uuid4().hex[:6]}"
    for tag in ("v1", "v2"):
        client.images.build(path=str(ROOT / "examples" / "demo"), tag=f"{repository}:{tag}",
                            buildargs={"VERSION": tag, "MODE": "healthy"}, rm=True)
    rows: list = []
    try:
        for _ in range(args.rounds):
            for mode in ("compose up", "proxy"):  # interleaved: the same machine load for both
                one_round(mode, repository, args.rate, rows)
    finally:
        for tag in ("v1", "v2"):
            client.images.remove(f"{repository}:{tag}", force=True)
        client.close()
    print(f"{'mode':<11} {'phase':<12} {'requests':>8} {'failed':>6} {'p99 ms':>8} "
          f"{'restore s':>9} {'switch s':>8}")
    for mode, phase, n, failed, p99, restore, call in rows:
        shown = f"{restore:9.3f}" if restore is not None else f"{'':>9}"
        shown += f" {call:8.3f}" if call is not None else ""
        print(f"{mode:<11} {phase:<12} {n:>8} {failed:>6} {p99:>8.1f} {shown}")
    print("restore s: the rollback's start until the first request answered by v1 started; "
          "switch s: until the switch returned (proxy) or `compose up` ended (without)")


if __name__ == "__main__":
    main()
