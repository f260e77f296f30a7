"""Env files (`KEY=VALUE` lines, as Docker's --env-file reads them): only regular files, and a
malformed line is refused without repeating it (its value may be a secret)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bot.errors import InputError

# Reading any of these would hand deploybot's own process state (or a device) to a container.
FORBIDDEN_ROOTS = ("/proc", "/sys", "/dev")


def env_file_problem(path: str, *, must_exist: bool = True) -> str | None:
    """Why `path` cannot be an env file, or None. Symlinks are followed: the target counts."""
    real = os.path.realpath(path)
    for root in FORBIDDEN_ROOTS:
        if real == root or real.startswith(root + "/"):
            return f"env_file {path} is under {root}: it must be a regular file"
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return f"env_file {path} does not exist" if must_exist else None
    except OSError as exc:
        return f"env_file {path} cannot be read ({exc.strerror or type(exc).__name__})"
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device" if
                stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        return f"env_file {path} is {kind}: it must be a regular file"
    return None


def _lines(path: str) -> list[str]:
    problem = env_file_problem(path)
    if problem:
        raise InputError(problem, hint="point env_file at a regular KEY=VALUE file")
    return Path(path).read_text(errors="replace").splitlines()


def read_env_file(path: str) -> dict[str, str]:
    """KEY=VALUE lines as Docker's --env-file reads them (no quotes processing, # comments).

    A line with `=` but no name is refused, naming only its number: echoing it would echo the
    value."""
    out = {}
    for number, line in enumerate(_lines(path), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if sep and not key.strip():
            raise InputError(f"env file {path}: line {number} has no variable name",
                             hint="every line is NAME=VALUE")
        if sep:
            out[key.strip()] = value
    return out


def env_file_values(path: str) -> list[str]:
    """Every value in the file, malformed lines too (for redaction); [] when it is unreadable."""
    if env_file_problem(path):
        return []
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line.partition("=")[2] for line in lines
            if "=" in line and not line.strip().startswith("#")]
