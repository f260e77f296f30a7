"""Rollback restore of a Docker service: decision -> the previous version answering, and the
requests that failed meanwhile, side by side in the same run (rounds interleaved):

- proxy: deploybot behind HAProxy (`proxy:`), rollback within the window = a switch back to
  the warm previous container (DockerBackend.rollback, backends/deploy/docker_staged.py);
- kept: deploybot without a proxy, its kept stopped container renamed back and started;
- seed: `docker rm -f` of the bad one and `docker run` of the previous image.

Goal (issue 14): proxy restore under 0.1 s with 0 failed requests.

    eval "$(scripts/dockerd.sh start)"; scripts/build-base-image.sh; scripts/build-proxy-image.sh
    python benchmarks/docker_proxy_restore.py [--rounds 5]

A client loop GETs /version (one connection per request, a few ms each: the figures' resolution)
on the service's address the whole time; restore is when it first gets v1 after the decision.
Prints the median and max of each figure and the failed requests of each variant.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import docker
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends.deploy.docker import DockerBackend  # noqa: E402
from benchmarks.detection_and_restore import answering  # noqa: E402
from bot.config import Service  # noqa: E402
from tests.conftest import free_port  # noqa: E402

QUIET = lambda _msg: None  # noqa: E731


class Load:
    """GET /version in a loop; `failed` counts errors and non-200 answers, `answers` holds
    (perf_counter when the answer came, version)."""

    def __init__(self, base: str) -> None:
        self.url = f"{base}/version"
        self.failed = 0
        self.answers: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=5, trust_env=False, limits=limits) as client:
            while not self._stop.is_set():
                try:
                    r = client.get(self.url)
                    if r.status_code == 200:
                        self.answers.append((time.perf_counter(), r.text.strip()))
                    else:
                        self.failed += 1
                except httpx.HTTPError:
                    self.failed += 1
                time.sleep(0.002)

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def first(self, version: str, after: float, timeout: float = 30.0) -> float:
        """When the loop first got `version` after `after` (perf_counter)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            hit = next((t for t, v in list(self.answers) if t > after and v == version), None)
            if hit is not None:
                return hit
            time.sleep(0.005)
        raise SystemExit(f"{self.url} never answered {version}")


def service(repo: str, port: int, **backend) -> Service:
    return Service.model_validate({
        "image": repo,
        "backend": {"kind": "docker", "stop_timeout": 1, "pull": "never", **backend},
        "health": {"url": f"http://127.0.0.1:{port}/health"}})


def round_of(variant: str, backend: DockerBackend, base: str, repo: str, port: int
             ) -> tuple[float, int]:
    """Deploy v1 then v2, decide to roll back, return (restore s, failed requests)."""
    backend.deploy("v1", ticket_id="bench", on_step=QUIET)
    answering(f"{base}/version", "v1")
    backend.finalize(QUIET)
    backend.deploy("v2", ticket_id="bench", on_step=QUIET)
    answering(f"{base}/version", "v2")
    with Load(base) as load:
        time.sleep(0.3)
        before = load.failed
        decided = time.perf_counter()
        if variant == "seed":
            subprocess.run(["docker", "rm", "-f", backend.name, backend.kept_name],
                           capture_output=True, timeout=60, check=True)
            subprocess.run(["docker", "run", "-d", "--name", backend.name, "--restart", "no",
                            "-p", f"127.0.0.1:{port}:8080", f"{repo}:v1"],
                           capture_output=True, timeout=60, check=True)
        else:
            backend.rollback("v1", QUIET)
        restored = load.first("v1", decided) - decided
        time.sleep(0.3)
        failed = load.failed - before
    return restored, failed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    client = docker.from_env(timeout=60)
    token = uuid.uuid4().hex[:6]
    repo = f"demo-web-bench-{token}"
    for tag in ("v1", "v2"):
        client.images.build(path=str(ROOT / "examples" / "demo"), tag=f"{repo}:{tag}",
                            buildargs={"VERSION": tag, "MODE": "healthy"}, rm=True)
    proxy_dir = Path(tempfile.mkdtemp(prefix="dbb-", dir="/tmp"))  # short: its sockets
    proxy_port, kept_port, seed_port = free_port(), free_port(), free_port()
    proxy = {"listen": f"127.0.0.1:{proxy_port}", "port": 8080, "drain": 1, "run": "container",
             "image": "deploybot/haproxy:2.6", "container_name": f"bench-proxy-{token}",
             "dir": str(proxy_dir)}
    variants = {
        "proxy": (DockerBackend(f"bench-px-{token}", "bench", service(repo, proxy_port,
                                                                     proxy=proxy)), proxy_port),
        "kept": (DockerBackend(f"bench-kept-{token}", "bench", service(
            repo, kept_port, ports={"8080": f"127.0.0.1:{kept_port}"})), kept_port),
        "seed": (DockerBackend(f"bench-seed-{token}", "bench", service(
            repo, seed_port, ports={"8080": f"127.0.0.1:{seed_port}"})), seed_port),
    }
    figures: dict[str, list[tuple[float, int]]] = {k: [] for k in variants}
    try:
        for _ in range(args.rounds):
            for variant, (backend, port) in variants.items():  # interleaved
                figures[variant].append(round_of(variant, backend, f"http://127.0.0.1:{port}",
                                                 repo, port))
    finally:
        names = [f"bench-proxy-{token}"]
        for backend, _ in variants.values():
            names += [backend.name, backend.kept_name, backend.name + "--next"]
        subprocess.run(["docker", "rm", "-f", *names], capture_output=True, timeout=60)
        for tag in ("v1", "v2"):
            try:
                client.images.remove(f"{repo}:{tag}", force=True)
            except docker.errors.NotFound:
                pass
        shutil.rmtree(proxy_dir, ignore_errors=True)
    print(f"rollback restore, decision -> v1 answering; {args.rounds} rounds, interleaved")
    for variant, label in (("proxy", "deploybot behind HAProxy (switch to the warm one)"),
                           ("kept", "deploybot without proxy (kept container restarted)"),
                           ("seed", "seed's docker rm -f + docker run")):
        times = [t for t, _ in figures[variant]]
        failed = [f for _, f in figures[variant]]
        print(f"  {label}: median {statistics.median(times):.3f} s, max {max(times):.3f} s; "
              f"failed requests per rollback: {failed}")


if __name__ == "__main__":
    main()
