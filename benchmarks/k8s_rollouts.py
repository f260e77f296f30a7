"""Kubernetes rollouts: deploybot's backend against `kubectl` on the same real cluster.

Starts a throw-away cluster with a kubelet (scripts/k8s-cluster.py, on the engine at
DOCKER_HOST), builds the demo image as v1/v2 (healthy) and v3 (its /health answers 500, so its
pods never become ready), and gives each side a Deployment of its own in one namespace, both
with the same readiness probe and progressDeadlineSeconds. Rounds interleave the two sides:

- healthy rollout: deploybot = KubernetesBackend.deploy + bot.verify.verify (health through the
  API server's service proxy, as the pipeline does); kubectl = `set image` + `rollout status`.
- bad version: deploybot = deploy v3 + verify (fails) + rollback to the bytes that ran before
  (what the pipeline's automatic rollback passes) + the health wait after it; kubectl = `set
  image` + `rollout status` (fails at the deadline) + `rollout undo` + `rollout status`.

    eval "$(scripts/dockerd.sh start)"; scripts/build-base-image.sh
    python benchmarks/k8s_rollouts.py [--rounds 3] [--deadline 10]

Prints the median of each side and the ratio deploybot / kubectl (goals: <= 1.2 healthy,
<= 1.1 bad version). Stops the cluster and removes the images at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends.deploy.kubernetes import KubernetesBackend  # noqa: E402
from backends.monitoring.probe import HttpxProbe  # noqa: E402
from bot import config as configuration  # noqa: E402
from bot.models import CheckStatus  # noqa: E402
from bot.clock import SystemClock  # noqa: E402
from bot.verify import verify, wait_healthy  # noqa: E402
from tests.integration.k8s.k8s_objects import (  # noqa: E402
    demo_deployment, demo_service, grant_bot_role, wait_for_rollout)

TOKEN_ENV = "DEPLOYBOT_BENCH_KUBE_TOKEN"


def cluster_module():
    spec = importlib.util.spec_from_file_location("k8s_cluster", ROOT / "scripts" / "k8s-cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Admin:
    """What tests/integration/k8s/k8s_objects.py wants of a cluster: admin API clients."""

    def __init__(self, kubeconfig: str) -> None:
        from kubernetes import client, config
        self.admin = config.new_client_from_config(config_file=kubeconfig)
        self._client = client

    def apps(self):
        return self._client.AppsV1Api(self.admin)

    def core(self):
        return self._client.CoreV1Api(self.admin)

    def rbac(self):
        return self._client.RbacAuthorizationV1Api(self.admin)


def kubectl(kubeconfig: str, namespace: str, *args: str, ok: bool = True) -> None:
    run = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "--namespace", namespace, *args],
                         capture_output=True, text=True, timeout=600, check=False)
    if ok and run.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed: {run.stderr.strip()}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--deadline", type=int, default=10, help="progressDeadlineSeconds")
    args = parser.parse_args()
    engine = docker.from_env(timeout=120)
    repo = f"demo-web-k8sbench-{uuid.uuid4().hex[:6]}"
    for tag, mode in (("v1", "healthy"), ("v2", "healthy"), ("v3", "unhealthy")):
        engine.images.build(path=str(ROOT / "examples" / "demo"), tag=f"{repo}:{tag}",
                            buildargs={"VERSION": tag, "MODE": mode}, rm=True)
    module = cluster_module()
    folder = tempfile.mkdtemp(prefix="dbk8s-bench-", dir="/tmp")
    figures: dict[str, list[float]] = {k: [] for k in (
        "healthy deploybot", "healthy kubectl", "bad deploybot", "bad kubectl")}
    try:
        state = module.start(folder, node=True,
                             docker_host=os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock")
        import yaml
        token = yaml.safe_load(Path(state.bot_kubeconfig).read_text())["users"][0]["user"]["token"]
        admin = Admin(state.admin_kubeconfig)
        ns = f"bench-{uuid.uuid4().hex[:6]}"
        admin.core().create_namespace({"metadata": {"name": ns}})
        grant_bot_role(admin, ns)
        for name in ("dbot", "kctl"):
            admin.apps().create_namespaced_deployment(
                ns, demo_deployment(name, repo, "v1", deadline=args.deadline))
            admin.core().create_namespaced_service(ns, demo_service(name))
            wait_for_rollout(admin, ns, name)
        proxy = f"{state.server}/api/v1/namespaces/{ns}/services/dbot:8080/proxy"
        cfg = configuration.parse({
            "environments": {"staging": {}},
            "services": {"dbot": {
                "image": repo,
                "backend": {"kind": "kubernetes", "kubeconfig": state.bot_kubeconfig,
                            "namespace": ns, "rollout_timeout": 300},
                "health": {"url": f"{proxy}/health", "timeout": 5, "detailed_path": "detailed"},
                "http_auth": {"bearer_token_env": TOKEN_ENV, "ca_file": state.ca},
                "verify": {"timeout": 20, "interval": 0.5}}}})
        svc = cfg.service("dbot", "staging")
        backend = KubernetesBackend("dbot", "staging", svc)
        probe = HttpxProbe.for_config(cfg, {TOKEN_ENV: token})
        clock = SystemClock()
        quiet = lambda _msg: None  # noqa: E731
        cube = lambda *a, ok=True: kubectl(state.bot_kubeconfig, ns, *a, ok=ok)  # noqa: E731
        good = "v1"
        for _ in range(args.rounds):
            good = "v2" if good == "v1" else "v1"
            t = time.perf_counter()
            backend.deploy(good, ticket_id="BENCH-1", on_step=quiet)
            result = verify(svc, backend, probe, clock, quiet)
            figures["healthy deploybot"].append(time.perf_counter() - t)
            assert not result.failed, result.health_reason
            t = time.perf_counter()
            cube("set", "image", "deployment/kctl", f"web={repo}:{good}")
            cube("rollout", "status", "deployment/kctl", "--timeout=300s")
            figures["healthy kubectl"].append(time.perf_counter() - t)

            before = backend.running_image()
            t = time.perf_counter()
            backend.deploy("v3", ticket_id="BENCH-2", on_step=quiet)
            result = verify(svc, backend, probe, clock, quiet)
            assert result.failed
            backend.rollback(good, quiet, image=before)
            status, why = wait_healthy(svc, backend, probe, clock, svc.verify.timeout,
                                       svc.verify.interval)
            figures["bad deploybot"].append(time.perf_counter() - t)
            assert status is CheckStatus.PASSED, why
            t = time.perf_counter()
            cube("set", "image", "deployment/kctl", f"web={repo}:v3")
            cube("rollout", "status", "deployment/kctl", "--timeout=300s", ok=False)
            cube("rollout", "undo", "deployment/kctl")
            cube("rollout", "status", "deployment/kctl", "--timeout=300s")
            figures["bad kubectl"].append(time.perf_counter() - t)
    finally:
        problems = module.stop(folder)
        if problems:
            print(f"stopping the cluster: {problems}", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)
        for tag in ("v1", "v2", "v3"):
            try:
                engine.images.remove(f"{repo}:{tag}", force=True)
            except docker.errors.NotFound:
                pass
    med = {k: statistics.median(v) for k, v in figures.items()}
    print(f"rounds: {args.rounds} (interleaved), progressDeadlineSeconds {args.deadline}, "
          f"2 replicas, median seconds")
    for case, goal in (("healthy", 1.2), ("bad", 1.1)):
        ratio = med[f"{case} deploybot"] / med[f"{case} kubectl"]
        print(f"  {case:7s} deploybot {med[f'{case} deploybot']:6.2f}  kubectl "
              f"{med[f'{case} kubectl']:6.2f}  ratio {ratio:.2f} (goal <= {goal}: "
              f"{'met' if ratio <= goal else 'MISSED'})")
    print("  all rounds: " + "; ".join(f"{k} " + ", ".join(f"{x:.2f}" for x in v)
                                       for k, v in figures.items()))


if __name__ == "__main__":
    main()
