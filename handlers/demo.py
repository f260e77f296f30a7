"""`deploybot demo`: from a fresh machine to a first real deployment, in one command.

Finds (or starts) a Docker engine, builds the demo images of examples/demo, writes the config
and the tickets of the quick start into a folder, and deploys DEMO-1 through the whole
checklist. Running it again reuses what is there and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping

from bot.errors import ConfigError
from handlers import demo_engine

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DOCKERD_SCRIPT = ROOT / "scripts" / "dockerd.sh"
BASE_IMAGE_SCRIPT = ROOT / "scripts" / "build-base-image.sh"
PROXY_IMAGE_SCRIPT = ROOT / "scripts" / "build-proxy-image.sh"
EXAMPLE_PROXY_DIR = "dir: /var/lib/deploybot/proxy"  # in examples/deploybot-proxy.yaml
BUILD_TIMEOUT = 300  # seconds per image; a cached build takes about one
DEPLOY_TIMEOUT = 600  # the deployment's own waits are bounded far below this
EXAMPLE_PORTS = (18080, 18081)  # staging, production in examples/deploybot.yaml

# ticket -> (title, version, build mode)
TICKETS = {
    "DEMO-1": ("Launch the demo web service", "v1", "healthy"),
    "DEMO-2": ("Greeting endpoint", "v2", "healthy"),
    "DEMO-3": ("New cache layer", "v3", "unhealthy"),
}


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65534:  # production takes the next one
        raise argparse.ArgumentTypeError(f"{text!r} is not between 1 and 65534")
    return value


def add_parser(sub) -> None:
    dm = sub.add_parser(
        "demo", help="set up the demo and run a first real deployment (DEMO-1)",
        description="Finds a Docker engine that answers (DOCKER_HOST, else the default socket); "
                    "as root, starts a private one when none does and dockerd is installed. "
                    "Builds the demo images, writes DIR/deploybot.yaml and the tickets "
                    "DEMO-1..3 on the embedded tracker (DIR/deploybot.db), deploys DEMO-1 and "
                    "says what to try next. Running it again reuses what exists.")
    dm.add_argument("--dir", default="deploybot-demo",
                    help="folder for the config and the database (default ./deploybot-demo)")
    dm.add_argument("--port", type=_port, default=EXAMPLE_PORTS[0],
                    help="127.0.0.1 port of the demo service in staging; production uses the "
                         "next one (default %(default)s); only for a new config")
    dm.add_argument("--proxy", action="store_true",
                    help="the service behind HAProxy (examples/deploybot-proxy.yaml: zero-downtime "
                         "deploys; its files in DIR/proxy); only for a new config")
    dm.add_argument("--engine-dir", default="/var/lib/deploybot/demo-docker", metavar="DIR",
                    help="state folder of the private engine started when none answers: socket, "
                         "data, pidfile, log (default %(default)s)")
    dm.add_argument("--bridge", default="dbot-demo0", metavar="NAME",
                    help="the private engine's own network bridge (default %(default)s)")
    dm.set_defaults(func=run)


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def run(ctx, args: argparse.Namespace) -> int:
    if not (EXAMPLES / "demo" / "build.sh").is_file():
        raise ConfigError(f"deploybot demo needs the source tree, and {EXAMPLES} is missing",
                          hint="install from a clone: pip install -e /path/to/deploybot")
    if len(args.bridge) > 15:
        raise ConfigError(f"--bridge {args.bridge!r} is longer than 15 characters")
    engine = demo_engine.PrivateEngine(Path(args.engine_dir).absolute(), args.bridge)
    decision = demo_engine.decide(os.environ, engine, demo_engine.real_probes())
    if decision.action == "install":
        print(f"demo: {decision.why}. Install with:\n\n    {decision.apt_command}\n\n"
              "then run `deploybot demo` again. Nothing was changed.", file=sys.stderr)
        return 1
    if decision.action == "refuse":
        print(f"demo: {decision.why}. Nothing was changed.", file=sys.stderr)
        return 1
    host, private_pid = decision.host, decision.private_pid
    if decision.action == "start":
        say(f"{decision.why}: starting a private one in {engine.dir} (bridge {engine.bridge})")
        try:
            host, private_pid = demo_engine.start_private(engine, DOCKERD_SCRIPT, os.environ)
        except RuntimeError as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 1
        say(f"private Docker engine running (pid {private_pid}) at {host}")
    else:
        say(f"using {decision.why}")
    env = {**os.environ, "DOCKER_HOST": host}

    if not _build_images(env, proxy=args.proxy):
        return 1
    folder = Path(args.dir).absolute()
    config_path, db_path = _prepare_folder(folder, args.port, proxy=args.proxy)
    env.update(DEPLOYBOT_DB=str(db_path))
    env.pop("DEPLOYBOT_CONFIG", None)  # --config names it

    from bot import config as configuration

    cfg = configuration.load(str(config_path))
    others = foreign(_engine_containers(env), container_names(cfg), _deployed_here(db_path))
    if others:
        print(f"demo: the engine already has {', '.join(others)}, which {folder} did not deploy "
              "(another demo folder's?). Remove them first:\n\n    docker rm -f "
              f"{' '.join(others)}\n\nor use that folder, or another engine (DOCKER_HOST). "
              "Nothing was deployed.", file=sys.stderr)
        return 1
    _create_tickets(db_path)
    code = _first_deployment(cfg, config_path, db_path, folder, env)
    _next_steps(cfg, folder, host, private_pid, engine, code)
    return code


def _build_images(env: Mapping[str, str], proxy: bool = False) -> bool:
    """The busybox base (scripts/build-base-image.sh: skipped when up to date), with --proxy
    deploybot/haproxy:2.6 (scripts/build-proxy-image.sh, likewise), and demo-web v1, v2 and v3
    (v3's /health fails); the engine's cache makes a second run quick."""
    steps = [([str(BASE_IMAGE_SCRIPT)], "the busybox base image")]
    if proxy:
        if not PROXY_IMAGE_SCRIPT.is_file():
            print(f"demo: --proxy needs {PROXY_IMAGE_SCRIPT}, which this checkout lacks",
                  file=sys.stderr)
            return False
        steps.append(([str(PROXY_IMAGE_SCRIPT)], "the proxy image deploybot/haproxy:2.6"))
    steps += [([str(EXAMPLES / "demo" / "build.sh"), version, mode], f"demo-web:{version}")
              for _, version, mode in TICKETS.values()]
    for argv, what in steps:
        try:
            done = subprocess.run(argv, env=dict(env), capture_output=True, text=True,
                                  timeout=BUILD_TIMEOUT, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            print(f"demo: building {what} took longer than {BUILD_TIMEOUT} s", file=sys.stderr)
            return False
        if done.returncode != 0:  # quiet unless it fails: the engine warns on every build
            print(f"demo: building {what} failed:\n{done.stdout}{done.stderr}", file=sys.stderr)
            return False
    say("built demo-web:v1, demo-web:v2 and demo-web:v3 (v3's /health fails)")
    return True


def _prepare_folder(folder: Path, port: int, proxy: bool = False) -> tuple[Path, Path]:
    if folder.is_dir():
        say(f"reusing {folder}")
    else:
        folder.mkdir(parents=True)
        say(f"created {folder}")
    config_path = folder / "deploybot.yaml"
    if config_path.exists():
        say(f"keeping {config_path} as it is")
    else:
        example = "deploybot-proxy.yaml" if proxy else "deploybot.yaml"
        text = demo_config((EXAMPLES / example).read_text(), port, example)
        if proxy:
            text = proxy_in_folder(text, folder)
        config_path.write_text(text)
        say(f"wrote {config_path} (examples/{example}, web on 127.0.0.1:{port}"
            + (", behind HAProxy)" if proxy else ")"))
    return config_path, folder / "deploybot.db"


def demo_config(example: str, port: int, name: str = "deploybot.yaml") -> str:
    """examples/`name` with the demo service's staging port (and production's, the next one)
    moved to `port`."""
    staging, production = EXAMPLE_PORTS
    text = example.replace(f"127.0.0.1:{production}", f"127.0.0.1:{port + 1}")
    text = text.replace(f"127.0.0.1:{staging}", f"127.0.0.1:{port}")
    return f"# Written by `deploybot demo` from examples/{name}.\n" + text


def proxy_in_folder(text: str, folder: Path) -> str:
    """The proxy's files in FOLDER/proxy rather than /var/lib/deploybot/proxy: the demo keeps
    everything it writes in its folder."""
    if text.count(EXAMPLE_PROXY_DIR) != 1:
        raise ConfigError(f"examples/deploybot-proxy.yaml no longer says `{EXAMPLE_PROXY_DIR}` "
                          "once: the demo cannot place the proxy's files")
    return text.replace(EXAMPLE_PROXY_DIR, f"dir: {json.dumps(str(folder / 'proxy'))}")


def _create_tickets(db_path: Path) -> None:
    """The quick start's tickets: ready, CQ approved by bob, QA PASS by carol, and what each
    ships. A ticket that exists already is left as it is."""
    from backends.trackers.local import LocalTracker
    from bot.store import Store

    store = Store(str(db_path))
    try:
        tracker = LocalTracker(store)
        for tid, (title, version, _) in TICKETS.items():
            if store.db.execute("SELECT 1 FROM tickets WHERE id = ?", [tid]).fetchone():
                say(f"{tid} exists: kept as it is")
                continue
            tracker.create_ticket(title, ticket_id=tid, status="Ready for Production")
            tracker.add_comment(tid, "CQ approved", author="bob")
            tracker.add_comment(tid, "QA PASS on staging", author="carol")
            tracker.add_comment(tid, f"deploy: web@{version}", author="alice")
            say(f"created {tid}: {title} (web@{version})")
    finally:
        store.close()


def _already_deployed(cfg, db_path: Path) -> int | None:
    """The id of DEMO-1's successful deployment when the service still answers its health URL
    (then a second run leaves it, and whatever was deployed since, alone)."""
    import httpx

    from bot.models import DeploymentStatus
    from bot.store import Store

    env = cfg.default_environment
    store = Store(str(db_path))
    try:
        done = [d for d in store.deployments(service="web", environment=env, limit=1000,
                                             statuses={DeploymentStatus.SUCCEEDED})
                if d.ticket_id == "DEMO-1" and not d.dry_run]
    finally:
        store.close()
    health = cfg.service("web", env).health
    if not done or health is None:
        return None
    try:
        answered = httpx.get(str(health.url), timeout=3).is_success
    except httpx.HTTPError:
        answered = False
    return done[-1].id if answered else None


def container_names(cfg) -> list[str]:
    """The containers the demo's service runs as, in every environment (with the ones a
    deploy keeps beside it)."""
    names = []
    for environment in cfg.environments:
        backend = cfg.service("web", environment).backend
        name = getattr(backend, "container_name", None) or f"web-{environment}"
        names += [name, f"{name}--previous", f"{name}--next"]
    return names


def foreign(names_on_engine: list[str], ours: list[str], deployed_here: bool) -> list[str]:
    """Containers of the demo's names that this demo folder never deployed (another demo folder
    on the same engine: `deploybot demo` then `deploybot demo --proxy`). Its checklist would
    block with a health URL refused and "web already runs v1", which says nothing of the cause."""
    return [] if deployed_here else [n for n in ours if n in names_on_engine]


def _engine_containers(env: Mapping[str, str]) -> list[str]:
    done = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"], env=dict(env),
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    return done.stdout.split() if done.returncode == 0 else []


def _deployed_here(db_path: Path) -> bool:
    """Whether a deployment of this folder's store ever reached the engine."""
    from bot.models import DeploymentStatus
    from bot.store import Store

    before_rollout = {DeploymentStatus.BLOCKED, DeploymentStatus.CANCELLED,
                      DeploymentStatus.REJECTED}
    store = Store(str(db_path))
    try:
        return any(not d.dry_run and d.status not in before_rollout
                   for d in store.deployments(service="web", limit=1000))
    finally:
        store.close()


def _first_deployment(cfg, config_path: Path, db_path: Path, folder: Path,
                      env: Mapping[str, str]) -> int:
    earlier = _already_deployed(cfg, db_path)
    if earlier is not None:
        say(f"DEMO-1 was deployed already (deployment #{earlier}) and answers: not deployed "
            "again (`deploybot show " f"{earlier}` has its record)")
        return 0
    argv = [sys.executable, "-m", "handlers.cli", "--config", str(config_path),
            "deploy", "DEMO-1", "--as", "alice"]
    say("deploybot deploy DEMO-1 --as alice")
    print(flush=True)
    try:
        # Its checklist and record go straight to this terminal, as the user will see them.
        done = subprocess.run(argv, cwd=folder, env=dict(env), timeout=DEPLOY_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        print(f"demo: the deployment did not finish within {DEPLOY_TIMEOUT} s; the next "
              "deploybot command recovers it", file=sys.stderr)
        return 1
    print(flush=True)
    if done.returncode != 0:
        print(f"demo: the deployment of DEMO-1 ended with exit code {done.returncode} "
              "(1 failed or rolled back, 2 configuration, 3 waiting for a gate)", file=sys.stderr)
    return 1 if done.returncode else 0


def _next_steps(cfg, folder: Path, host: str, private_pid: int | None,
                engine: demo_engine.PrivateEngine, code: int) -> None:
    env = cfg.default_environment
    base = str(cfg.service("web", env).health.url).rsplit("/health", 1)[0]
    proxied = getattr(cfg.service("web", env).backend, "proxy", None) is not None
    steps = [(f"cd {folder}", "")]
    if host != demo_engine.DEFAULT_HOST:
        steps.append((f"export DOCKER_HOST={host}", "the engine the demo uses"))
    if code == 0:
        steps += [
            (f"curl {base}/version", "the version that runs (v1 after DEMO-1)"),
            ("deploybot deploy DEMO-2 --as alice", "upgrade to v2; Previous Version: v1"),
            ("deploybot deploy DEMO-3 --as alice",
             "v3's /health fails: it never gets a request, v2 keeps serving" if proxied
             else "v3's /health fails: rolled back to v2"),
            ("deploybot ticket show DEMO-3", "the record was posted on the ticket too"),
            ("deploybot deploy DEMO-2 --env production --as alice", "needs an approver..."),
            ("deploybot approve N --as bob", "...who is not the requester (N: as printed)"),
            ("deploybot rollback web --as alice", "back to the version before"),
            ("deploybot history web && deploybot status", ""),
        ]
    else:
        steps.append(("deploybot history web && deploybot show N", "what happened"))
    width = max(len(cmd) for cmd, _ in steps)
    print("Next:")
    for cmd, why in steps:
        print(f"  {cmd:<{width}}   # {why}" if why else f"  {cmd}")
    if private_pid is not None:
        print(f"\nThe private Docker engine keeps running (pid {private_pid}, state in "
              f"{engine.dir}). Stop it, with its containers and bridge:\n"
              f"  DEPLOYBOT_DOCKER_DIR={engine.dir} DEPLOYBOT_DOCKER_BRIDGE={engine.bridge} "
              f"{DOCKERD_SCRIPT} stop\n  (or only the engine: kill {private_pid})")
