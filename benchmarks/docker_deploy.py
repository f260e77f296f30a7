"""Deploy overhead: `deploybot deploy` of a healthy image against the seed's raw commands.

The seed deploys with `docker pull IMAGE; docker stop -t GRACE NAME; docker rm NAME;
docker run -d --name NAME --restart unless-stopped --env-file FILE -p ... IMAGE` and polls
/health. deploybot adds the whole checklist, keeps the previous container for a fast rollback,
verifies health, detailed health and a smoke test, and writes the record. Like with like: both
stop with the same grace (`--grace`, deploybot's stop_timeout), read the same env file, and pull
or not alike; the rounds interleave (seed, deploybot; deploybot, seed; ...) so a busy machine
weighs on both. --baseline CHECKOUT adds `deploybot deploy` run from another checkout (the code
before a change, say) as a third side in the same rotation, with its own container and store. Run against a real engine:

    eval "$(scripts/dockerd.sh start)" && scripts/build-base-image.sh
    python benchmarks/docker_deploy.py [--rounds 7] [--grace 1] [--registry HOST:PORT] [--baseline DIR]

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


class DeploybotSide:
    """`deploybot deploy` from one checkout: its own container, port, store and bytecode."""

    def __init__(self, checkout: Path, repo: str, env_file: Path, work: Path,
                 pull: bool, grace: int) -> None:
        work.mkdir(parents=True)
        port = free_port()
        name = f"{repo.rsplit('/', 1)[-1]}-bot{work.name[3:]}"
        self.containers = (name, name + "--previous")
        config = {
            "tracker": {"kind": "local"},
            # one OS login plays the requester and the reviewers, as on a shared operations box
            "people": {n: {"tracker": n} for n in ("bench", "bob", "carol")},
            "terminal": {"trust_as": True},
            "environments": {"staging": {}},
            "services": {"web": {
                "image": repo,
                "backend": {"kind": "docker", "container_name": name,
                            "pull": "always" if pull else "never", "env_file": str(env_file),
                            "ports": {"8080": f"127.0.0.1:{port}"}, "stop_timeout": grace},
                "health": {"url": f"http://127.0.0.1:{port}/health"},
                "smoke": [{"url": f"http://127.0.0.1:{port}/api/ping", "contains": "pong"}],
                "verify": {"timeout": 30, "interval": 0.1}}},
        }
        (work / "deploybot.yaml").write_text(yaml.safe_dump(config))
        # the checkout, its bytecode cached as an installed package has it (kept out of the tree)
        self.env = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
                    "PYTHONPATH": str(checkout), "PYTHONPYCACHEPREFIX": str(work / "pycache"),
                    "DEPLOYBOT_CONFIG": str(work / "deploybot.yaml"),
                    "DEPLOYBOT_DB": str(work / "deploybot.db"), "DEPLOYBOT_USER": "bench"}
        self.work = work
        script = Path(sys.executable).with_name("deploybot")
        self.command = [str(script)] if script.exists() else [sys.executable, "-m", "handlers.cli"]

    def bot(self, *a: str) -> subprocess.CompletedProcess:
        return run([*self.command, *a], env=self.env, cwd=self.work)

    def ticket(self) -> str:  # a deploy moves its ticket to Deployed: one ready ticket each
        tid = self.bot("ticket", "create", "bench", "--status", "Ready for Production").stdout.strip()
        self.bot("ticket", "comment", tid, "--by", "cq", "CQ approved")
        self.bot("ticket", "comment", tid, "--by", "qa", "QA PASS")
        return tid

    def deploy(self, tag: str) -> float:
        tid = self.ticket()  # not timed: a person files the ticket
        start = time.perf_counter()
        self.bot("deploy", tid, f"web@{tag}")
        return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--grace", type=int, default=1, help="docker stop grace, seconds, both sides")
    parser.add_argument("--registry", default="", help="HOST:PORT of a registry to push to and pull from")
    parser.add_argument("--baseline", type=Path,
                        help="another checkout's deploybot (e.g. the code before a change), "
                             "interleaved in the same rounds")
    args = parser.parse_args()
    repo = (f"{args.registry}/" if args.registry else "") + f"bench-web-{uuid.uuid4().hex[:6]}"
    for tag in ("v1", "v2"):
        run(["docker", "build", "-q", "--build-arg", f"VERSION={tag}", "-t", f"{repo}:{tag}",
             str(ROOT / "examples/demo")])
        if args.registry:
            run(["docker", "push", "-q", f"{repo}:{tag}"])
    pull = bool(args.registry)
    port_seed = free_port()
    seed_name = f"{repo.rsplit('/', 1)[-1]}-seed"
    work = Path(tempfile.mkdtemp(prefix="deploybot-bench-"))
    env_file = work / "web.env"
    env_file.write_text("GREETING=hello\nLOG_LEVEL=info\nFEATURE_FLAGS=checkout,search\n")
    bots = {"deploybot deploy": ROOT}
    if args.baseline:
        bots["baseline deploybot deploy"] = args.baseline.resolve()
    sides = {label: DeploybotSide(checkout, repo, env_file, work / f"bot{i}", pull,
                                  args.grace)
             for i, (label, checkout) in enumerate(bots.items())}
    times: dict[str, list[float]] = {"seed": [], **{label: [] for label in sides}}
    try:
        seed_deploy(seed_name, f"{repo}:v1", port_seed, args.grace, env_file, pull)
        for side in sides.values():
            side.deploy("v1")
        for i in range(args.rounds):
            tag = "v2" if i % 2 == 0 else "v1"
            runs = [("seed", lambda: seed_deploy(seed_name, f"{repo}:{tag}", port_seed,
                                                 args.grace, env_file, pull))]
            runs += [(label, lambda side=side: side.deploy(tag)) for label, side in sides.items()]
            shift = i % len(runs)  # rotate who goes first: a busy machine weighs on every side
            for label, run_one in runs[shift:] + runs[:shift]:
                times[label].append(run_one())
    finally:
        for name in (seed_name, *[n for side in sides.values() for n in side.containers]):
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        for tag in ("v1", "v2"):
            subprocess.run(["docker", "rmi", f"{repo}:{tag}"], capture_output=True, timeout=60)
    seed, mine = times["seed"], times["deploybot deploy"]
    med = statistics.median
    ratio = med(mine) / med(seed)
    print(f"{args.rounds} interleaved rounds, stop grace {args.grace} s both sides, --env-file both, "
          f"pull: {'both, every deploy' if pull else 'neither (no registry; images built locally)'}")
    print(f"{'side':<62} {'median s':>8} {'best s':>7}")
    seed_line = f"seed: {'pull, ' if pull else ''}stop -t, rm, run --env-file + /health poll"
    print(f"{seed_line:<62} {med(seed):>8.2f} {min(seed):>7.2f}")
    print(f"{'deploybot deploy (checklist, keep previous, verify, record)':<62} {med(mine):>8.2f} {min(mine):>7.2f}")
    if args.baseline:
        base = times["baseline deploybot deploy"]
        print(f"{'baseline deploybot deploy (' + str(args.baseline) + ')':<62} {med(base):>8.2f} "
              f"{min(base):>7.2f}")
        print(f"ratio baseline / seed: {med(base) / med(seed):.2f}; "
              f"this checkout / baseline: {med(mine) / med(base):.2f}")
    print(f"ratio deploybot / seed: {ratio:.2f} (goal <= {GOAL}: {'ok' if ratio <= GOAL else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
