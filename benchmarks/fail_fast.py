"""Times how soon verification gives up on a bad version on a real Docker engine (no watch window).

The default path the pipeline takes: DockerBackend.deploy of a version whose /health answers
500, bot.verify.verify with the real HTTP prober, then DockerBackend.rollback to the kept v1.
Figures per round: first failing probe -> rollback decision, and the whole bad deploy (deploy
start -> v1 answering again). Two sides, interleaved round by round on the same engine:
`verify.failing_probes: 3` (now) against `failing_probes: null` (waiting out verify.timeout,
as before). Goal: first failing probe -> decision within 3 probe intervals + 1 s.

    eval "$(scripts/dockerd.sh start)"; scripts/build-base-image.sh
    python benchmarks/fail_fast.py [--rounds 3] [--interval 0.5] [--timeout 20]

Prints the median of each figure and the ratio.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends.deploy.docker import DockerBackend  # noqa: E402
from backends.monitoring.probe import HttpxProbe  # noqa: E402
from benchmarks.detection_and_restore import answering  # noqa: E402
from bot.config import Service  # noqa: E402
from bot.clock import SystemClock  # noqa: E402
from bot.verify import verify  # noqa: E402
from tests.conftest import free_port  # noqa: E402


class FirstFailure:
    """The real prober, noting when the first 5xx came back."""

    def __init__(self) -> None:
        self.probe, self.first = HttpxProbe(), None

    def get(self, url, timeout):
        answer = self.probe.get(url, timeout)
        if self.first is None and answer.status_code and answer.status_code >= 500:
            self.first = time.perf_counter()
        return answer


def one_round(svc: Service, backend: DockerBackend, base: str) -> tuple[float, float]:
    quiet = lambda _msg: None  # noqa: E731
    backend.deploy("v1", ticket_id="bench", on_step=quiet)
    answering(f"{base}/version", "v1")
    backend.finalize(quiet)
    probe = FirstFailure()
    started = time.perf_counter()
    backend.deploy("v-500", ticket_id="bench", on_step=quiet)
    result = verify(svc, backend, probe, SystemClock(), quiet)
    decided = time.perf_counter()
    assert result.failed and probe.first is not None, result.health_reason
    backend.rollback("v1", quiet)
    back = answering(f"{base}/version", "v1")
    backend.finalize(quiet)
    return decided - probe.first, back - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()
    client = docker.from_env(timeout=60)
    repo = f"demo-web-bench-{uuid.uuid4().hex[:6]}"
    for tag, mode in (("v1", "healthy"), ("v-500", "unhealthy")):
        client.images.build(path=str(ROOT / "examples" / "demo"), tag=f"{repo}:{tag}",
                            buildargs={"VERSION": tag, "MODE": mode}, rm=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def service(failing_probes: int | None) -> Service:
        return Service.model_validate({
            "image": repo,
            "backend": {"kind": "docker", "ports": {"8080": f"127.0.0.1:{port}"},
                        "stop_timeout": 1, "pull": "never", "restart_policy": "no",
                        "healthcheck": ["/bin/busybox", "wget", "-q", "-O-",
                                        "http://127.0.0.1:8080/health"]},
            "health": {"url": f"{base}/health"},
            "verify": {"timeout": args.timeout, "interval": args.interval,
                       "failing_probes": failing_probes}})

    sides = {"now (failing_probes 3)": service(3), "before (wait out the timeout)": service(None)}
    backends = {k: DockerBackend("bench-fail", "bench", svc) for k, svc in sides.items()}
    figures: dict[str, dict[str, list[float]]] = {k: {"decide": [], "total": []} for k in sides}
    try:
        for _ in range(args.rounds):
            for side, svc in sides.items():  # interleaved: one of each per round
                decide, total = one_round(svc, backends[side], base)
                figures[side]["decide"].append(decide)
                figures[side]["total"].append(total)
    finally:
        name = next(iter(backends.values())).name
        for n in (name, name + "--previous"):
            subprocess.run(["docker", "rm", "-f", n], capture_output=True, timeout=60)
        for tag in ("v1", "v-500"):
            try:
                client.images.remove(f"{repo}:{tag}", force=True)
            except docker.errors.NotFound:
                pass
    med = {side: {k: statistics.median(v) for k, v in f.items()} for side, f in figures.items()}
    now, before = med["now (failing_probes 3)"], med["before (wait out the timeout)"]
    goal = 3 * args.interval + 1.0
    print(f"Docker, /health answering 500; rounds: {args.rounds}, probe interval "
          f"{args.interval:g} s, verify.timeout {args.timeout:g} s (median of each)")
    for side, m in med.items():
        print(f"  {side:31s} first failing probe -> decision {m['decide']:6.3f} s; "
              f"bad deploy total (deploy -> v1 answering again) {m['total']:6.3f} s")
    print(f"decision: {now['decide']:.3f} s (goal <= {goal:.1f} s: "
          f"{'met' if now['decide'] <= goal else 'MISSED'}); ratio now/before "
          f"{now['decide'] / before['decide']:.3f}; total ratio {now['total'] / before['total']:.3f}")


if __name__ == "__main__":
    main()
