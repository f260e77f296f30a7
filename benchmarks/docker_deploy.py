"""Deploy overhead: `deploybot deploy` of a healthy image against the seed's raw commands.

The seed deploys with `docker pull IMAGE; docker stop -t GRACE NAME; docker rm NAME;
docker run -d --name NAME --restart unless-stopped --env-file FILE -p ... IMAGE` and polls
/health. deploybot adds the whole checklist, keeps the previous container for a fast rollback,
verifies health, detailed health and a smoke test, and writes the record. Like with like: both
stop with the same grace (`--grace`, deploybot's stop_timeout), read the same env file, and pull
or not alike; the rounds interleave (seed, deploybot; deploybot, seed; ...) so a busy machine
weighs on both. Run against a real engine:

    eval "$(scripts/dockerd.sh start)" && scripts/build-base-image.sh
    python benchmarks/docker_deploy.py [--rounds 7] [--grace 1] [--registry HOST:PORT]

The images are built locally; with no registry there is nothing to pull, so neither side pulls
(the seed's `docker pull` of a local-only tag only fails against Docker Hub). --registry pushes
them to a registry you run and both sides pull every time (deploybot: pull: always). Prints the
median and best wall time of each side, and the ratio deploybot / seed (goal: <= 1.15).
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

GOAL = 1.15
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


def seed_deploy(name: str, image: str, port: int, grace: int, env_file: Path, pull: bool) -> float:
    start = time.perf_counter()
    if pull:
        run(["docker", "pull", "-q", image])
    subprocess.run(["docker", "stop", "-t", str(grace), name], capture_output=True, timeout=60)
    subprocess.run(["docker", "rm", name], capture_output=True, timeout=60)
    run(["docker", "run", "-d", "--name", name, "--restart", "unless-stopped", "--env-file", str(env_file),
         "-p", f"127.0.0.1:{port}:8080", image])
    wait_health(f"http://127.0.0.1:{port}/health")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--grace", type=int, default=1, help="docker stop grace, seconds, both sides")
    parser.add_argument("--registry", default="", help="HOST:PORT of a registry to push to and pull from")
    args = parser.parse_args()
    repo = (f"{args.registry}/" if args.registry else "") + f"bench-web-{uuid.uuid4().hex[:6]}"
    for tag in ("v1", "v2"):
        run(["docker", "build", "-q", "--build-arg", f"VERSION={tag}", "-t", f"{repo}:{tag}",
             str(ROOT / "examples/demo")])
        if args.registry:
            run(["docker", "push", "-q", f"{repo}:{tag}"])
    pull = bool(args.registry)
    port_seed, port_bot = free_port(), free_port()
    seed_name, bot_name = f"{repo.rsplit('/', 1)[-1]}-seed", f"{repo.rsplit('/', 1)[-1]}-bot"
    work = Path(tempfile.mkdtemp(prefix="deploybot-bench-"))
    env_file = work / "web.env"
    env_file.write_text("GREETING=hello\nLOG_LEVEL=info\nFEATURE_FLAGS=checkout,search\n")
    config = {
        "tracker": {"kind": "local"},
        # one OS login plays the requester and the reviewers, as on a shared operations box
        "people": {n: {"tracker": n} for n in ("bench", "bob", "carol")},
        "terminal": {"trust_as": True},
        "environments": {"staging": {}},
        "services": {"web": {
            "image": repo,
            "backend": {"kind": "docker", "container_name": bot_name,
                        "pull": "always" if pull else "never", "env_file": str(env_file),
                        "ports": {"8080": f"127.0.0.1:{port_bot}"}, "stop_timeout": args.grace},
            "health": {"url": f"http://127.0.0.1:{port_bot}/health"},
            "smoke": [{"url": f"http://127.0.0.1:{port_bot}/api/ping", "contains": "pong"}],
            "verify": {"timeout": 30, "interval": 0.1}}},
    }
    (work / "deploybot.yaml").write_text(yaml.safe_dump(config))
    # this checkout, its bytecode cached as an installed package has it (kept out of the tree)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
           "PYTHONPATH": str(ROOT), "PYTHONPYCACHEPREFIX": str(work / "pycache"),
           "DEPLOYBOT_CONFIG": str(work / "deploybot.yaml"),
           "DEPLOYBOT_DB": str(work / "deploybot.db"), "DEPLOYBOT_USER": "bench"}
    deploybot = Path(sys.executable).with_name("deploybot")
    command = [str(deploybot)] if deploybot.exists() else [sys.executable, "-m", "handlers.cli"]

    def bot(*a: str) -> subprocess.CompletedProcess:
        return run([*command, *a], env=env, cwd=work)

    def ticket() -> str:  # a deploy moves its ticket to Deployed: one ready ticket each
        tid = bot("ticket", "create", "bench", "--status", "Ready for Production").stdout.strip()
        bot("ticket", "comment", tid, "--by", "cq", "CQ approved")
        bot("ticket", "comment", tid, "--by", "qa", "QA PASS")
        return tid

    def ours(tag: str) -> float:
        tid = ticket()  # not timed: a person files the ticket
        start = time.perf_counter()
        bot("deploy", tid, f"web@{tag}")
        return time.perf_counter() - start

    seed, mine = [], []
    try:
        seed_deploy(seed_name, f"{repo}:v1", port_seed, args.grace, env_file, pull)
        bot("deploy", ticket(), "web@v1")
        for i in range(args.rounds):
            tag = "v2" if i % 2 == 0 else "v1"
            sides = [lambda: seed.append(seed_deploy(seed_name, f"{repo}:{tag}", port_seed, args.grace,
                                                     env_file, pull)),
                     lambda: mine.append(ours(tag))]
            for side in sides if i % 2 == 0 else reversed(sides):
                side()
    finally:
        for name in (seed_name, bot_name, bot_name + "--previous"):
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        for tag in ("v1", "v2"):
            subprocess.run(["docker", "rmi", f"{repo}:{tag}"], capture_output=True, timeout=60)
    med = statistics.median
    ratio = med(mine) / med(seed)
    print(f"{args.rounds} interleaved rounds, stop grace {args.grace} s both sides, --env-file both, "
          f"pull: {'both, every deploy' if pull else 'neither (no registry; images built locally)'}")
    print(f"{'side':<62} {'median s':>8} {'best s':>7}")
    seed_line = f"seed: {'pull, ' if pull else ''}stop -t, rm, run --env-file + /health poll"
    print(f"{seed_line:<62} {med(seed):>8.2f} {min(seed):>7.2f}")
    print(f"{'deploybot deploy (checklist, keep previous, verify, record)':<62} {med(mine):>8.2f} {min(mine):>7.2f}")
    print(f"ratio deploybot / seed: {ratio:.2f} (goal <= {GOAL}: {'ok' if ratio <= GOAL else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
