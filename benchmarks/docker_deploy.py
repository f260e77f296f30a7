"""Times `deploybot deploy` of a healthy image against the seed's raw shell commands.

The seed deploys with `docker stop; docker rm; docker run` and polls /health. deploybot adds the
whole checklist, keeps the previous container for a fast rollback, verifies health, detailed
health and a smoke test, and writes the record. Run against a real engine:

    eval "$(scripts/dockerd.sh start)" && scripts/build-base-image.sh
    python benchmarks/docker_deploy.py [--rounds 5]

Prints the median wall time of each and the ratio deploybot / seed.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def wait_health(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} never became healthy")


def seed_deploy(name: str, image: str, port: int, stop_timeout: int | None) -> float:
    start = time.perf_counter()
    stop = ["docker", "stop"] + (["-t", str(stop_timeout)] if stop_timeout is not None else [])
    subprocess.run(stop + [name], capture_output=True, timeout=60)
    subprocess.run(["docker", "rm", name], capture_output=True, timeout=60)
    run(["docker", "run", "-d", "--name", name, "--restart", "unless-stopped",
         "-p", f"127.0.0.1:{port}:8080", image])
    wait_health(f"http://127.0.0.1:{port}/health")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    repo = f"bench-web-{uuid.uuid4().hex[:6]}"
    for tag in ("v1", "v2"):
        run(["docker", "build", "-q", "--build-arg", f"VERSION={tag}", "-t", f"{repo}:{tag}",
             str(ROOT / "examples/demo")])
    port_seed, port_bot = free_port(), free_port()
    seed_name, bot_name = f"{repo}-seed", f"{repo}-bot"
    work = Path(tempfile.mkdtemp(prefix="deploybot-bench-"))
    config = {
        "tracker": {"kind": "local"},
        # one OS login plays the requester and the reviewers, as on a shared operations box
        "people": {n: {"tracker": n} for n in ("bench", "bob", "carol")},
        "terminal": {"trust_as": True},
        "environments": {"staging": {}},
        "services": {"web": {
            "image": repo,
            "backend": {"kind": "docker", "container_name": bot_name, "pull": "never",
                        "ports": {"8080": f"127.0.0.1:{port_bot}"}, "stop_timeout": 1},
            "health": {"url": f"http://127.0.0.1:{port_bot}/health"},
            "smoke": [{"url": f"http://127.0.0.1:{port_bot}/api/ping", "contains": "pong"}],
            "verify": {"timeout": 30, "interval": 0.1}}},
    }
    (work / "deploybot.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "DEPLOYBOT_CONFIG": str(work / "deploybot.yaml"),
           "DEPLOYBOT_DB": str(work / "deploybot.db"), "DEPLOYBOT_USER": "bench"}

    def bot(*a: str) -> subprocess.CompletedProcess:
        return run([sys.executable, "-m", "handlers.cli", *a], env=env, cwd=ROOT)

    seed_default, seed_t1, ours = [], [], []
    try:
        seed_deploy(seed_name, f"{repo}:v1", port_seed, 1)
        for i in range(args.rounds):
            tag = "v2" if i % 2 == 0 else "v1"
            seed_default.append(seed_deploy(seed_name, f"{repo}:{tag}", port_seed, None))
            seed_t1.append(seed_deploy(seed_name, f"{repo}:{tag}", port_seed, 1))
        def ticket() -> str:  # a deploy moves its ticket to Deployed: one ready ticket each
            tid = bot("ticket", "create", "bench", "--status", "Ready for Production").stdout.strip()
            bot("ticket", "comment", tid, "--by", "cq", "CQ approved")
            bot("ticket", "comment", tid, "--by", "qa", "QA PASS")
            return tid

        bot("deploy", ticket(), "web@v1")
        for i in range(args.rounds):
            tag = "v2" if i % 2 == 0 else "v1"
            tid = ticket()
            start = time.perf_counter()
            bot("deploy", tid, f"web@{tag}")
            ours.append(time.perf_counter() - start)
    finally:
        for name in (seed_name, bot_name, bot_name + "--previous"):
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        for tag in ("v1", "v2"):
            subprocess.run(["docker", "rmi", f"{repo}:{tag}"], capture_output=True, timeout=60)
    med = statistics.median
    print(f"rounds: {args.rounds}")
    print(f"seed stop/rm/run + health poll (docker stop default 10 s grace): {med(seed_default):.2f} s")
    print(f"seed stop/rm/run + health poll (docker stop -t 1):              {med(seed_t1):.2f} s")
    print(f"deploybot deploy (checklist, keep previous, verify, record):     {med(ours):.2f} s")
    print(f"ratio deploybot / seed (default grace): {med(ours) / med(seed_default):.2f}")
    print(f"ratio deploybot / seed (same 1 s grace): {med(ours) / med(seed_t1):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
