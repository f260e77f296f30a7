"""One way to say what is wrong in a settings block pydantic refused: `path.to.key: message`,
in the words the YAML file uses."""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from pydantic import ValidationError

# Keys that look like a credential: the value must not stay in the file (nor be quoted).
_SECRET_NAME = re.compile(r"(?i)token|password|passwd|secret|api_?key")
# pydantic names union members in its locations; the YAML file does not have them.
_UNION_MEMBERS = ("docker", "compose", "kubernetes")


def error_lines(exc: ValidationError, prefix: tuple = (),
                messages: Mapping[str, str] | None = None,
                explain: Callable[[dict[str, Any]], str | None] | None = None) -> list[str]:
    """One line per error, each once, in pydantic's order. `messages`: wording per error type
    (e.g. string_pattern_mismatch); `explain`: wording that depends on the whole error."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]
               if p not in _UNION_MEMBERS and not str(p).startswith(("function-", "nullable["))]
        path = ".".join([str(p) for p in prefix] + loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"].startswith("url_"):
            msg = f"not a URL ({msg})"
        if err["type"] == "extra_forbidden":
            msg = "unknown setting (check the spelling)"
            if loc and _SECRET_NAME.search(loc[-1]) and "_env" not in loc[-1]:
                msg = ("unknown setting; a secret never goes in this file: export it in an "
                       "environment variable (SLACK_BOT_TOKEN, SLACK_APP_TOKEN, or the one a "
                       "*_env setting names)")
        msg = (messages or {}).get(err["type"], msg)
        msg = (explain(err) if explain else None) or msg
        lines.append(f"{path}: {msg}")
    return sorted(set(lines), key=lines.index)
