"""deploybot:dev, the bot's own image, for the tests that run the bot in a container.

`ensure_bot_image` asks scripts/build-image.sh which source hash the image of this tree carries
(`--print-hash`) and runs the script (`--base debian`: no registry needed) when the engine has no
such image or one with another hash. It fails -- never skips -- with the script's own output when
it cannot. A cold build takes a few minutes (the Debian base once, cached in /var/cache/deploybot);
.ci/run builds the image before pytest, so tests normally find it up to date.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import docker
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-image.sh"
BOT_IMAGE = os.environ.get("DEPLOYBOT_BOT_IMAGE", "deploybot:dev")
HASH_LABEL = "io.deploybot.source-hash"
BUILD_TIMEOUT = 1800  # a cold build: Debian bootstrap + dependency wheels + docker build


def _script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    argv = [str(BUILD_SCRIPT), "--base", "debian", "--tag", BOT_IMAGE, *args]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(argv)} did not finish within {timeout}s:\n{exc.stderr or ''}",
                    pytrace=False)


def image_hash(client: docker.DockerClient) -> str | None:
    try:
        labels = client.images.get(BOT_IMAGE).labels or {}
    except docker.errors.ImageNotFound:
        return None
    return labels.get(HASH_LABEL)


def ensure_bot_image(client: docker.DockerClient) -> str:
    """The name of the bot's image, built first when missing or older than the tree."""
    wanted = _script("--print-hash", timeout=60)
    if wanted.returncode != 0 or not wanted.stdout.strip():
        pytest.fail(f"{BUILD_SCRIPT} --print-hash failed (exit {wanted.returncode}):\n"
                    f"{wanted.stderr}", pytrace=False)
    source_hash = wanted.stdout.strip().splitlines()[-1]
    if image_hash(client) == source_hash:
        return BOT_IMAGE
    built = _script(timeout=BUILD_TIMEOUT)
    if built.returncode != 0:
        pytest.fail(f"{BUILD_SCRIPT} --base debian could not build {BOT_IMAGE} "
                    f"(exit {built.returncode}):\n{built.stderr[-6000:]}", pytrace=False)
    found = image_hash(client)
    if found != source_hash:
        pytest.fail(f"{BUILD_SCRIPT} succeeded but {BOT_IMAGE} carries {HASH_LABEL}={found!r}, "
                    f"not {source_hash!r}", pytrace=False)
    return BOT_IMAGE
