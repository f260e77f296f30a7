"""Times the watch window's failure detection and the rollback's restore on a real Docker engine.

Detection: a bad version is deployed and watched (bot/watch.py, real HTTP prober); the figure
is the first failing observation -> rollback decision, and deploy finished -> decision.
Restore: rollback decision -> the previous version answering /version, for deploybot's kept
container (DockerBackend.rollback) against the seed's `docker rm -f; docker run` of the previous
image. Goals: detection within one probe interval + 1 s; restore <= 1 s.

    export DOCKER_HOST=unix:///tmp/deploybot-docker/docker.sock   # or scripts/dockerd.sh start
    python benchmarks/detection_and_restore.py [--rounds 3] [--interval 0.5]

Prints the median of each figure over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import docker
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends.deploy.docker import DockerBackend  # noqa: E402
from backends.monitoring.probe import HttpxProbe  # noqa: E402
from bot.config import Service  # noqa: E402
from bot.clock import SystemClock  # noqa: E402
from bot.watch import Watcher  # noqa: E402
from tests.conftest import free_port  # noqa: E402


def answering(url: str, version: str, timeout: float = 30.0) -> float:
    """Poll `url` every 5 ms until it answers `version`; returns when (perf_counter)."""
    deadline = time.perf_counter() + timeout
    with httpx.Client(timeout=1, trust_env=False) as client:
        while time.perf_counter() < deadline:
            try:
                if client.get(url).text.strip() == version:
                    return time.perf_counter()
            except httpx.HTTPError:
                pass
            time.sleep(0.005)
    raise SystemExit(f"{url} never answered {version}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args()
    client = docker.from_env(timeout=60)
    repo = f"demo-web-bench-{uuid.uuid4().hex[:6]}"
    for tag, mode in (("v1", "healthy"), ("v-500", "smoke-broken"), ("v-slow", "slow")):
        client.images.build(path=str(ROOT / "examples" / "demo"), tag=f"{repo}:{tag}",
                            buildargs={"VERSION": tag, "MODE": mode}, rm=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    svc = Service.model_validate({
        "image": repo,
        "backend": {"kind": "docker", "ports": {"8080": f"127.0.0.1:{port}"}, "stop_timeout": 1,
                    "pull": "never", "restart_policy": "no"},
        "health": {"url": f"{base}/health"},
        "smoke": [{"url": f"{base}/api/ping", "contains": "pong"}],
        "watch": {"window": 30, "interval": args.interval, "baseline_window": 1,
                  "rules": {"new_log_errors": None}}})
    backend = DockerBackend(f"bench-watch-{uuid.uuid4().hex[:6]}", "bench", svc)
    name = backend.name
    probe, clock = HttpxProbe(), SystemClock()
    quiet = lambda _msg: None  # noqa: E731
    figures: dict[str, list[float]] = {k: [] for k in (
        "detect_first_bad_500", "detect_since_deploy_500", "detect_first_bad_slow",
        "detect_since_deploy_slow", "restore_kept", "restore_seed_rerun")}
    try:
        for _ in range(args.rounds):
            for bad in ("v-500", "v-slow"):
                backend.deploy("v1", ticket_id="bench", on_step=quiet)
                answering(f"{base}/version", "v1")
                backend.finalize(quiet)
                watcher = Watcher(svc, backend, probe, clock)
                baseline = watcher.baseline(quiet)
                backend.deploy(bad, ticket_id="bench", on_step=quiet)
                answering(f"{base}/version", bad)
                deployed = time.monotonic()
                report = watcher.watch(baseline, quiet)
                assert report.trips, f"{bad} was not caught"
                key = "500" if bad == "v-500" else "slow"
                figures[f"detect_first_bad_{key}"].append(report.detection_seconds)
                figures[f"detect_since_deploy_{key}"].append(report.trips[0].decided - deployed)
                decided = time.perf_counter()
                if bad == "v-500":  # deploybot: the kept previous container comes back
                    backend.rollback("v1", quiet)
                    figures["restore_kept"].append(answering(f"{base}/version", "v1") - decided)
                else:  # the seed: remove the bad one, run the previous image again
                    subprocess.run(["docker", "rm", "-f", name, backend.kept_name],
                                   capture_output=True, timeout=60, check=True)
                    subprocess.run(["docker", "run", "-d", "--name", name, "--restart", "no",
                                    "-p", f"127.0.0.1:{port}:8080", f"{repo}:v1"],
                                   capture_output=True, timeout=60, check=True)
                    figures["restore_seed_rerun"].append(
                        answering(f"{base}/version", "v1") - decided)
                    subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
                backend.finalize(quiet)
    finally:
        for n in (name, name + "--previous"):
            subprocess.run(["docker", "rm", "-f", n], capture_output=True, timeout=60)
        for tag in ("v1", "v-500", "v-slow"):
            try:
                client.images.remove(f"{repo}:{tag}", force=True)
            except docker.errors.NotFound:
                pass
    med = {k: statistics.median(v) for k, v in figures.items()}
    goal = args.interval + 1.0
    print(f"rounds: {args.rounds}, probe interval {args.interval:g} s (median of each)")
    for key, what in (("500", "smoke endpoint serving 500s"), ("slow", "5x+ slower version")):
        print(f"detection, {what}: first failing probe -> decision "
              f"{med[f'detect_first_bad_{key}']:.3f} s; deploy done -> decision "
              f"{med[f'detect_since_deploy_{key}']:.3f} s (goal <= {goal:.1f} s)")
    print(f"restore, kept container (deploybot): decision -> v1 answering "
          f"{med['restore_kept']:.3f} s (goal <= 1 s)")
    print(f"restore, seed's docker rm -f + docker run of v1: {med['restore_seed_rerun']:.3f} s")


if __name__ == "__main__":
    main()
