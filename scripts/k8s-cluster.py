#!/usr/bin/env python3
"""Runs a throw-away Kubernetes cluster on loopback for the tests: start | stop | env.

    scripts/k8s-cluster.py start --dir /tmp/dbk8s   # prints `export KUBECONFIG=...` lines
    scripts/k8s-cluster.py stop --dir /tmp/dbk8s    # stops it by the PIDs in DIR/state.json

The binaries come from scripts/k8s-build.sh (cached; the first run builds them). Processes:
etcd (Debian's etcd-server), kube-apiserver, kube-controller-manager and -- unless --no-node --
kube-scheduler and a kubelet that runs pods on the Docker engine at DOCKER_HOST (dockershim).
Everything listens on 127.0.0.1, except the kubelet: it cannot use a loopback node IP, so it
listens on the engine's bridge gateway (an address of this same machine), where the API server
reaches it for logs; pods get addresses on that bridge.

Credentials (static tokens, a private CA) are generated per cluster into DIR (mode 0600) and
never printed. Users: `admin` (system:masters), `system:node:node1`, and `deploybot` (no
permissions until a RoleBinding grants them: tests bind deploy/kubernetes/rbac.yaml's Role).

The kubelet changes host state; `stop` undoes it: sysctls it sets are restored to the values
saved at start, its `k8s_*` containers are removed, and the host folders it created are removed.
Only one kubelet may run per Docker engine.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "scripts" / "k8s-build.sh"
NODE_NAME = "node1"
PAUSE_IMAGE = "deploybot/k8s-pause:3.4-deploybot"
SYSCTLS = ("kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory")
HOST_DIRS = ("/var/lib/kubelet/device-plugins", "/var/lib/kubelet", "/var/log/pods",
             "/var/log/containers")


def say(msg: str) -> None:
    print(f"k8s-cluster: {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=120, **kw)


@dataclass
class State:
    dir: str
    bin_dir: str
    server: str = ""
    etcd_port: int = 0
    ca: str = ""
    admin_kubeconfig: str = ""
    bot_kubeconfig: str = ""
    pids: dict[str, int] = field(default_factory=dict)  # name -> pid, in start order
    sysctls: dict[str, str] = field(default_factory=dict)
    created_dirs: list[str] = field(default_factory=list)
    docker_host: str = ""
    node_ip: str = ""
    node: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(self.dir) / "state.json"

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(self.path)

    @classmethod
    def load(cls, folder: str) -> "State":
        return cls(**json.loads((Path(folder) / "state.json").read_text()))


# -- pieces -----------------------------------------------------------------------------------------


def build_binaries() -> str:
    done = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def make_pki(pki: Path) -> None:
    """A private CA, the API server's serving certificate (127.0.0.1) and the service-account key."""
    pki.mkdir(parents=True, exist_ok=True)
    os.chmod(pki, 0o700)
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "7",
         "-subj", "/CN=deploybot-test-ca", "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt")])
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "7",
         "-subj", "/CN=kube-apiserver", "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc",
         "-addext", "basicConstraints=critical,CA:FALSE",
         "-keyout", str(pki / "apiserver.key"), "-out", str(pki / "apiserver.crt")])
    run(["openssl", "genrsa", "-out", str(pki / "sa.key"), "2048"])
    run(["openssl", "rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub")])


def kubeconfig(server: str, ca: str, user: str, token: str) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "deploybot-test",
        "clusters": [{"name": "deploybot-test",
                      "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "deploybot-test",
                      "context": {"cluster": "deploybot-test", "user": user}}],
    }, indent=2)


def engine_bridge_ip(docker_host: str) -> str:
    """The gateway address of the engine's default bridge: an address of this machine."""
    import docker

    client = docker.DockerClient(base_url=docker_host, timeout=30)
    try:
        net = client.networks.get("bridge").attrs
    finally:
        client.close()
    for cfg in (net.get("IPAM") or {}).get("Config") or []:
        if cfg.get("Gateway"):
            return cfg["Gateway"]
    bridge = (net.get("Options") or {}).get("com.docker.network.bridge.name", "docker0")
    out = run(["ip", "-4", "-o", "addr", "show", "dev", bridge]).stdout.split()
    return out[out.index("inet") + 1].split("/")[0]


def ensure_pause_image(docker_host: str, bin_dir: str) -> None:
    import docker

    client = docker.DockerClient(base_url=docker_host, timeout=60)
    try:
        try:
            client.images.get(PAUSE_IMAGE)
            return
        except docker.errors.ImageNotFound:
            pass
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(str(Path(bin_dir) / "pause"), arcname="pause")
        repo, tag = PAUSE_IMAGE.rsplit(":", 1)
        client.api.import_image_from_data(buf.getvalue(), repository=repo, tag=tag,
                                          changes=['ENTRYPOINT ["/pause"]'])
    finally:
        client.close()


def remove_pod_containers(docker_host: str) -> int:
    """Remove the containers a kubelet left on this engine (names k8s_*, kubelet's labels)."""
    import docker

    client = docker.DockerClient(base_url=docker_host, timeout=60)
    removed = 0
    try:
        for c in client.containers.list(all=True, filters={"label": "io.kubernetes.docker.type"}):
            if c.name.startswith("k8s_"):
                try:
                    c.remove(force=True)
                    removed += 1
                except docker.errors.NotFound:
                    pass
    finally:
        client.close()
    return removed


def mounts_under(folder: str) -> list[str]:
    prefix = folder.rstrip("/") + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            points.append(point)
    return points


def ours(pid: int, folder: str) -> bool:
    """The PID still belongs to a process of this cluster (its command line names our folder)."""
    try:
        return folder in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def spawn(state: State, name: str, args: list[str]) -> None:
    log = open(Path(state.dir) / "logs" / f"{name}.log", "ab")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=state.dir)
    log.close()
    state.pids[name] = proc.pid
    state.save()


def api_get(state: State, path: str, token: str, timeout: float = 2.0) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=state.ca)
    req = urllib.request.Request(state.server + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(what: str, check, timeout: float, state: State) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for name, pid in state.pids.items():
            if not Path(f"/proc/{pid}").exists():
                tail = (Path(state.dir) / "logs" / f"{name}.log").read_text(errors="replace")[-2500:]
                raise RuntimeError(f"{name} exited while waiting for {what}; its log ends:\n{tail}")
        try:
            ok, last = check()
            if ok:
                return
        except (OSError, ValueError) as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:g} s waiting for {what} (last: {last})")


# -- start / stop -----------------------------------------------------------------------------------


def start(folder: str, node: bool, docker_host: str, bin_dir: str | None = None) -> State:
    t0 = time.monotonic()
    bin_dir = bin_dir or build_binaries()
    t_build = time.monotonic() - t0
    root = Path(folder)
    if (root / "state.json").exists():
        old = State.load(str(root))
        if any(ours(pid, old.dir) for pid in old.pids.values()):
            raise RuntimeError(f"{root} holds a running cluster; stop it first")
        (root / "state.json").unlink()
    for sub in ("logs", "etcd", "kubelet", "dockershim", "volume-plugins"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    state = State(dir=str(root.resolve()), bin_dir=bin_dir, node=node, docker_host=docker_host)
    state.timings["binaries"] = round(t_build, 2)
    state.save()
    pki = root / "pki"
    make_pki(pki)
    tokens = {name: secrets.token_hex(16) for name in ("admin", "node", "deploybot")}
    rows = io.StringIO()
    w = csv.writer(rows)
    w.writerow([tokens["admin"], "admin", "admin", "system:masters"])
    w.writerow([tokens["node"], f"system:node:{NODE_NAME}", f"node:{NODE_NAME}", "system:nodes"])
    w.writerow([tokens["deploybot"], "deploybot", "deploybot"])
    write_secret(root / "tokens.csv", rows.getvalue())

    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    state.etcd_port = etcd_port
    state.server = f"https://127.0.0.1:{api_port}"
    state.ca = str(pki / "ca.crt")
    for user, token in (("admin", tokens["admin"]), ("deploybot", tokens["deploybot"]),
                        ("node", tokens["node"])):
        write_secret(root / f"{user}.kubeconfig", kubeconfig(state.server, state.ca, user, token))
    state.admin_kubeconfig = str(root / "admin.kubeconfig")
    state.bot_kubeconfig = str(root / "deploybot.kubeconfig")
    state.save()
    b = Path(bin_dir)

    spawn(state, "etcd", [
        "etcd", "--name", "deploybot-test", "--data-dir", str(root / "etcd"),
        "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
        "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-cluster", f"deploybot-test=http://127.0.0.1:{peer_port}",
        "--listen-metrics-urls", f"http://127.0.0.1:{free_port()}",
        "--log-level", "warn"])
    authz = "Node,RBAC" if node else "RBAC"
    admission = ["--enable-admission-plugins=NodeRestriction"] if node else []
    spawn(state, "kube-apiserver", [
        str(b / "kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
        f"--secure-port={api_port}", "--insecure-port=0",
        f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--cert-dir={pki}", f"--token-auth-file={root / 'tokens.csv'}",
        f"--authorization-mode={authz}", *admission,
        "--disable-admission-plugins=ServiceAccount",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        "--service-account-issuer=https://kubernetes.default.svc",
        "--service-cluster-ip-range=10.96.0.0/24", "--endpoint-reconciler-type=none",
        "--kubelet-preferred-address-types=InternalIP", "--allow-privileged=false",
        "--profiling=false", "--v=0"])
    wait_until("the API server", lambda: (api_get(state, "/readyz", tokens["admin"])[0] == 200,
                                          "not ready"), 60, state)
    # deploybot's own manifests (deploy/kubernetes) need three more: persistentvolume-binder
    # binds their PVC to a PV the test made; pvc-/pv-protection remove the finalizers the API
    # server puts on both (else a namespace with a PVC never finishes deleting);
    # root-ca-cert-publisher writes the ConfigMap kube-root-ca.crt into every namespace, which
    # their projected service-account volume mounts as ca.crt.
    controllers = ("deployment,replicaset,garbagecollector,endpoint,namespace,"
                   "persistentvolume-binder,pvc-protection,pv-protection,root-ca-cert-publisher")
    if node:
        controllers += ",nodelifecycle"
    spawn(state, "kube-controller-manager", [
        str(b / "kube-controller-manager"), f"--kubeconfig={root / 'admin.kubeconfig'}",
        f"--controllers={controllers}", f"--root-ca-file={pki / 'ca.crt'}",
        "--leader-elect=false", "--secure-port=0", "--port=0",
        "--concurrent-deployment-syncs=2", "--profiling=false"])
    state.timings["control-plane"] = round(time.monotonic() - t0 - t_build, 2)
    if node:
        start_node(state, tokens["admin"])
    state.timings["total"] = round(time.monotonic() - t0, 2)
    state.save()
    return state


def start_node(state: State, admin_token: str) -> None:
    t0 = time.monotonic()
    root = Path(state.dir)
    b = Path(state.bin_dir)
    ensure_pause_image(state.docker_host, state.bin_dir)
    # Pod containers of an earlier kubelet that never reached `stop` (its run was killed): a new
    # kubelet refuses to start on them ("no PodsandBox found with Id ..."). Only one kubelet may
    # run per engine, so whatever k8s_* container is there is a leftover.
    left = remove_pod_containers(state.docker_host)
    if left:
        say(f"removed {left} k8s_* container(s) an earlier kubelet left on this engine")
    state.node_ip = engine_bridge_ip(state.docker_host)
    for name in SYSCTLS:
        state.sysctls[name] = Path(f"/proc/sys/{name}").read_text().strip()
    state.created_dirs = [d for d in HOST_DIRS if not Path(d).exists()]
    state.save()
    spawn(state, "kube-scheduler", [
        str(b / "kube-scheduler"), f"--kubeconfig={root / 'admin.kubeconfig'}",
        "--leader-elect=false", "--secure-port=0", "--port=0", "--profiling=false"])
    sock = state.docker_host
    spawn(state, "kubelet", [
        str(b / "kubelet"), f"--kubeconfig={root / 'node.kubeconfig'}",
        "--container-runtime=docker", f"--docker-endpoint={sock}", f"--docker={sock}",
        f"--pod-infra-container-image={PAUSE_IMAGE}", "--network-plugin=",
        "--fail-swap-on=false", "--cgroup-driver=cgroupfs", "--cgroups-per-qos=false",
        "--enforce-node-allocatable=", f"--hostname-override={NODE_NAME}",
        f"--node-ip={state.node_ip}", f"--address={state.node_ip}", f"--port={free_port()}",
        "--healthz-port=0", "--read-only-port=0", "--make-iptables-util-chains=false",
        "--image-gc-high-threshold=100", "--image-gc-low-threshold=99", "--oom-score-adj=0",
        f"--root-dir={root / 'kubelet'}", f"--cert-dir={root / 'kubelet' / 'pki'}",
        f"--container-runtime-endpoint=unix://{root / 'dockershim.sock'}",
        f"--experimental-dockershim-root-directory={root / 'dockershim'}",
        f"--volume-plugin-dir={root / 'volume-plugins'}",
        "--serialize-image-pulls=false", "--sync-frequency=5s", "--v=0"])

    def node_ready() -> tuple[bool, str]:
        code, body = api_get(state, f"/api/v1/nodes/{NODE_NAME}", admin_token)
        if code != 200:
            return False, f"node answered {code}"
        conds = json.loads(body).get("status", {}).get("conditions", [])
        ready = [c for c in conds if c.get("type") == "Ready"]
        return bool(ready and ready[0].get("status") == "True"), str(ready)

    wait_until(f"node {NODE_NAME} Ready", node_ready, 90, state)
    state.timings["node"] = round(time.monotonic() - t0, 2)


def stop(folder: str) -> list[str]:
    """Stop every process of the cluster by PID (kubelet first) and undo its host changes."""
    problems: list[str] = []
    try:
        state = State.load(folder)
    except FileNotFoundError:
        return [f"no cluster state in {folder}"]
    for name, pid in reversed(list(state.pids.items())):
        if not ours(pid, state.dir):  # gone already, or the PID now belongs to someone else
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and ours(pid, state.dir):
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.1)
        if ours(pid, state.dir):
            problems.append(f"{name} (pid {pid}) ignored SIGTERM; killed")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if state.node:
        try:
            n = remove_pod_containers(state.docker_host)
            say(f"removed {n} k8s_* container(s)")
        except Exception as exc:  # the engine may be gone already; say so, do not hide it
            problems.append(f"could not remove k8s_* containers: {exc}")
        for name, value in state.sysctls.items():
            try:
                current = Path(f"/proc/sys/{name}").read_text().strip()
                if current != value:
                    Path(f"/proc/sys/{name}").write_text(value)
            except OSError as exc:
                problems.append(f"could not restore {name}={value}: {exc}")
        for d in state.created_dirs:
            subprocess.run(["rm", "-rf", "--one-file-system", d], check=False)
        # The kubelet bind-mounts its root folder onto itself (to make it rshared) and mounts pod
        # volumes below it: unmount all of that, deepest first, so the folder can be removed.
        for mount in sorted(mounts_under(state.dir), key=len, reverse=True):
            done = subprocess.run(["umount", mount], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                done = subprocess.run(["umount", "-l", mount], capture_output=True, text=True,
                                      check=False)
            if done.returncode != 0:
                problems.append(f"could not unmount {mount}: {done.stderr.strip()}")
    state.pids = {}
    state.save()
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop", "env"])
    parser.add_argument("--dir", default="/tmp/deploybot-k8s")
    parser.add_argument("--no-node", action="store_true", help="control plane only, no kubelet")
    args = parser.parse_args()
    if args.command == "start":
        docker_host = os.environ.get("DOCKER_HOST", "unix:///tmp/deploybot-docker/docker.sock")
        try:
            state = start(args.dir, node=not args.no_node, docker_host=docker_host)
        except Exception as exc:
            say(f"start failed: {exc}")
            stop(args.dir)
            return 1
        say(f"ready in {state.timings}")
    if args.command == "stop":
        problems = stop(args.dir)
        for p in problems:
            say(p)
        return 1 if problems and not problems[0].startswith("no cluster") else 0
    state = State.load(args.dir)
    print(f"export KUBECONFIG={state.admin_kubeconfig}")
    print(f"export DEPLOYBOT_TEST_BOT_KUBECONFIG={state.bot_kubeconfig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
