#!/usr/bin/env python3
"""Start-up: `deploybot --help` and `deploybot status` against a bare `python -c pass`.

    python benchmarks/startup.py [--rounds 15] [--baseline /work/main]

Runs the three commands interleaved (one of each per round, in a rotating order), each as a
new process with this checkout first on PYTHONPATH, and prints the median and best wall time
of each and the ratio of the medians to `python -c pass`. `status` reads the quick start's
config (examples/deploybot.yaml as `deploybot demo` writes it) and a store in a temporary
folder; it asks the Docker engine what runs: with no engine at DOCKER_HOST that answer is a
quick error, which the figure then includes. --baseline CHECKOUT adds the same two commands run
from another checkout (e.g. the code before a change), interleaved in the same rounds. Goal (issue 13): `--help` and `status` under 8x
`python -c pass`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from handlers.demo import demo_config  # noqa: E402

GOAL = 8.0


def deploybot() -> list[str]:
    """The installed console script next to this interpreter, else the module."""
    script = Path(sys.executable).with_name("deploybot")
    return [str(script)] if script.exists() else [sys.executable, "-m", "handlers.cli"]


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, timeout=60)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: "
                         f"{done.stderr.decode(errors='replace')[-500:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--baseline", type=Path, help="another checkout to run side by side")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="deploybot-startup-"))
    try:
        config = folder / "deploybot.yaml"
        config.write_text(demo_config((ROOT / "examples" / "deploybot.yaml").read_text(), 18080))
        # Bytecode cached as an installed package has it (pip compiles on install), kept out
        # of the checkout; PYTHONDONTWRITEBYTECODE would make every run compile the sources.
        env = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
               "PYTHONPATH": str(ROOT), "PYTHONPYCACHEPREFIX": str(folder / "pycache"),
               "DEPLOYBOT_USER": "alice", "DEPLOYBOT_DB": str(folder / "deploybot.db")}
        bot = deploybot()
        envs = {"": env}
        if args.baseline:
            envs["baseline "] = {**env, "PYTHONPATH": str(args.baseline.resolve()),
                                 "PYTHONPYCACHEPREFIX": str(folder / "pycache-baseline")}
        commands = {"python -c pass": ([sys.executable, "-c", "pass"], env)}
        for label, with_env in envs.items():
            commands[f"{label}deploybot --help"] = ([*bot, "--help"], with_env)
            commands[f"{label}deploybot status"] = ([*bot, "status", "--config", str(config)], with_env)
        for argv, with_env in commands.values():  # warm the caches; status creates the store
            timed(argv, folder, with_env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        names = list(commands)
        for r in range(args.rounds):
            turn = r % len(names)
            for name in names[turn:] + names[:turn]:
                times[name].append(timed(*commands[name][:1], folder, commands[name][1]))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    base = statistics.median(times["python -c pass"])
    print(f"start-up, {args.rounds} interleaved rounds ({' '.join(bot)}; DOCKER_HOST="
          f"{os.environ.get('DOCKER_HOST', '(default)')})")
    print(f"{'command':<27} {'median s':>9} {'best s':>8} {'ratio':>6}  goal")
    ok = True
    for name, values in times.items():
        median = statistics.median(values)
        ratio = median / base
        verdict = "" if not name.startswith("deploybot") else (f"< {GOAL:.0f}x " + ("ok" if ratio < GOAL else "MISSED"))
        ok &= not name.startswith("deploybot") or ratio < GOAL
        print(f"{name:<27} {median:>9.3f} {min(values):>8.3f} {ratio:>6.2f}  {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
