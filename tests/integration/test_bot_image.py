"""deploybot:dev, the bot's own image (Dockerfile, scripts/build-image.sh --base debian)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid

import pytest

from bot_image import BUILD_SCRIPT, HASH_LABEL, REPO_ROOT

# The first test may pay for a cold build of the image (see bot_image.py).
pytestmark = pytest.mark.timeout(1800)

# 190 MB at issue 11 with a 200 MB goal; the PostgreSQL driver (issue 12) adds 14 MB: psycopg and
# its binary wheel's own libpq, OpenSSL and Kerberos (Debian's libpq5 would pull in as much).
SIZE_GOAL = 215_000_000
DATA = "/var/lib/deploybot"
CONFIG = "/etc/deploybot/deploybot.yaml"
RUN_TIMEOUT = 60


def run(client, image, command, *, entrypoint=None, **options) -> tuple[int, str]:
    """Runs a container to its end: (exit code, output); removed afterwards."""
    container = client.containers.create(image, command, entrypoint=entrypoint, **options)
    try:
        container.start()
        code = container.wait(timeout=RUN_TIMEOUT)["StatusCode"]
        return code, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


@pytest.fixture
def volume(docker_client):
    vol = docker_client.volumes.create(f"dbt-bot-image-{uuid.uuid4().hex[:8]}")
    yield vol.name
    vol.remove(force=True)


def test_the_image_is_built_from_this_tree_and_small(docker_client, bot_image):
    image = docker_client.images.get(bot_image)
    size = image.attrs["Size"]
    print(f"{bot_image}: {size / 1e6:.0f} MB, {HASH_LABEL}={image.labels[HASH_LABEL]}")
    assert size < SIZE_GOAL, f"{bot_image} is {size / 1e6:.0f} MB, over the {SIZE_GOAL / 1e6:.0f} MB goal"


def test_runs_as_a_non_root_user(docker_client, bot_image):
    config = docker_client.images.get(bot_image).attrs["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["deploybot"]
    code, out = run(docker_client, bot_image, ["-u"], entrypoint=["id"])
    assert (code, out.strip()) == (0, "10001")


def test_has_no_compiler(docker_client, bot_image):
    probe = ("import shutil, sys; found = [c for c in ('gcc', 'cc', 'c++', 'g++', 'clang', 'as', "
             "'ld') if shutil.which(c)]; print(found); sys.exit(1 if found else 0)")
    code, out = run(docker_client, bot_image, ["-c", probe], entrypoint=["python3"])
    assert code == 0, f"compilers in the final stage: {out}"


def test_help_runs(docker_client, bot_image):
    code, out = run(docker_client, bot_image, ["--help"])
    assert code == 0, out
    assert "usage: deploybot" in out and "run" in out


def test_health_check_probes_healthz_on_the_metrics_port(docker_client, bot_image):
    config = docker_client.images.get(bot_image).attrs["Config"]
    test = config["Healthcheck"]["Test"]
    assert test[:2] == ["CMD", "python3"], "exec form with the venv's Python"
    assert "/healthz" in test[-1] and "DEPLOYBOT_METRICS_PORT" in test[-1]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert env["DEPLOYBOT_METRICS_PORT"] == "9464" and env["DEPLOYBOT_DB"].startswith(DATA + "/")


def test_works_on_a_read_only_root_filesystem(docker_client, bot_image, volume, tmp_path):
    config = tmp_path / "deploybot.yaml"
    config.write_text(json.dumps({"tracker": {"kind": "local"}, "environments": {"staging": {}},
                                  "services": {"web": {"image": "demo-web"}}}))
    config.chmod(0o644)
    options = {"read_only": True, "tmpfs": {"/tmp": "rw,noexec,nosuid,size=16m"},
               "volumes": {volume: {"bind": DATA, "mode": "rw"},
                           str(config): {"bind": CONFIG, "mode": "ro"}},
               "network_disabled": True}

    code, out = run(docker_client, bot_image, ["ticket", "create", "read-only root", "--id",
                                               "DEMO-7"], **options)
    assert (code, out.strip()) == (0, "DEMO-7")
    # A second container on the same volume reads what the first one stored.
    code, out = run(docker_client, bot_image, ["ticket", "show", "DEMO-7"], **options)
    assert code == 0 and "read-only root" in out, out
    # Nothing else is writable: the root stays read-only, /tmp is the tmpfs.
    code, out = run(docker_client, bot_image,
                    ["-c", "open('/opt/deploybot/x', 'w')"], entrypoint=["python3"], **options)
    assert code != 0 and "Read-only file system" in out, out
    code, out = run(docker_client, bot_image, ["-c", "open('/tmp/x', 'w').write('ok')"],
                    entrypoint=["python3"], **options)
    assert code == 0, out


def test_the_script_refuses_unknown_bases():
    done = subprocess.run([str(BUILD_SCRIPT), "--base", "alpine", "--print-hash"],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode != 0 and "--base must be debian or python" in done.stderr


def test_the_source_hash_follows_what_goes_into_the_image(tmp_path):
    """A copy of the tree: the hash changes with the code, not with tests or bytecode."""
    tree = tmp_path / "tree"
    for name in ("bot", "handlers", "backends", "tests/unit"):
        shutil.copytree(REPO_ROOT / name, tree / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "Dockerfile", ".dockerignore",
                 "scripts/build-image.sh"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, tree / name)

    def source_hash(*base: str) -> str:
        done = subprocess.run([str(tree / "scripts" / "build-image.sh"), *base, "--print-hash"],
                              capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    first = source_hash("--base", "debian")
    assert len(first) == 32 and source_hash("--base", "debian") == first
    (tree / "tests" / "unit" / "test_new.py").write_text("def test_x(): pass\n")
    (tree / "bot" / "__pycache__").mkdir(exist_ok=True)
    (tree / "bot" / "__pycache__" / "store.cpython-311.pyc").write_bytes(b"\0")
    assert source_hash("--base", "debian") == first, "tests and bytecode are not in the image"
    assert source_hash("--base", "python") != first, "the base is part of the image"
    with (tree / "bot" / "store.py").open("a") as f:
        f.write("# changed\n")
    changed = source_hash("--base", "debian")
    assert changed != first
    with (tree / "Dockerfile").open("a") as f:
        f.write("# changed\n")
    assert source_hash("--base", "debian") not in (first, changed)


def test_the_health_check_fails_when_nothing_answers_healthz(docker_client, bot_image):
    """The image's own check (timed faster here) against a container that serves nothing."""
    container = docker_client.containers.run(
        bot_image, ["-c", "import time; time.sleep(60)"], entrypoint=["python3"], detach=True,
        network_disabled=True, healthcheck={"interval": 500_000_000, "timeout": 3_000_000_000,
                                            "retries": 2, "start_period": 1_000_000})
    try:
        deadline = time.monotonic() + 30
        while True:
            container.reload()
            health = container.attrs["State"]["Health"]
            if health["Status"] == "unhealthy" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert health["Status"] == "unhealthy", health
        assert "Connection refused" in health["Log"][-1]["Output"], health["Log"][-1]
        assert health["Log"][-1]["ExitCode"] == 1
    finally:
        container.remove(force=True)
