"""The environment of the programs deploybot starts: never deploybot's own tokens.

Migration checks and integrity checks get an allow-list (PATH, HOME, LANG, LC_* and the names
`child_env` lists). Backend tools (docker compose) keep the environment they need to reach the
engine, minus every variable that holds one of deploybot's secrets.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

BASE_NAMES = ("PATH", "HOME", "LANG", "TZ")
# Names that look like credentials; dropped from backend tools' environment as well.
SECRET_NAME_RE = re.compile(r"(TOKEN|PASSWORD|PASSWD|SECRET|API_?KEY|PRIVATE_KEY|CREDENTIAL)",
                            re.IGNORECASE)


def allowed_environ(environ: Mapping[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """Only PATH, HOME, LANG, TZ, LC_* and the `extra` names, when set."""
    names = set(BASE_NAMES) | set(extra)
    return {k: v for k, v in environ.items() if k in names or k.startswith("LC_")}


def without_secrets(environ: Mapping[str, str], secret_names: Iterable[str] = (),
                    keep: Iterable[str] = ()) -> dict[str, str]:
    """Everything but SLACK_*, the named secrets and credential-looking names (`keep` wins)."""
    drop, kept = set(secret_names), set(keep)
    return {k: v for k, v in environ.items()
            if k in kept or not (k in drop or k.startswith("SLACK_") or SECRET_NAME_RE.search(k))}
