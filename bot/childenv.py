"""The environment of the programs deploybot starts: never deploybot's own tokens.

Migration checks and integrity checks get an allow-list (PATH, HOME, LANG, LC_* and the names
`child_env` lists). Backend tools (docker compose, which may interpolate variables of the
user's own) keep their environment minus SLACK_* and the variables the config names as
deploybot's tokens and passwords.
"""

from __future__ import annotations

from typing import Iterable, Mapping

BASE_NAMES = ("PATH", "HOME", "LANG", "TZ")


def allowed_environ(environ: Mapping[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """Only PATH, HOME, LANG, TZ, LC_* and the `extra` names, when set."""
    names = set(BASE_NAMES) | set(extra)
    return {k: v for k, v in environ.items() if k in names or k.startswith("LC_")}


def without_secrets(environ: Mapping[str, str],
                    secret_names: Iterable[str] = ()) -> dict[str, str]:
    """Everything but SLACK_* and the named secrets."""
    drop = set(secret_names)
    return {k: v for k, v in environ.items() if not (k in drop or k.startswith("SLACK_"))}
