"""Reading approvals and new-build announcements in ticket comments, one line at a time.

A rule's pattern matching a line is not enough for an approval: the same line must not carry any
deny wording ("QA PASS criteria not met", "QA pass: NO", "CQ: approved?", "CQ approved once CI is
green"). Matching never runs across lines, and quoted text (someone else's words) is skipped.

The design rule is FAIL CLOSED. A line wrongly read as "not an approval" is a nuisance (the
approver writes it again, plainly); a line wrongly read as an approval ships broken code. So when
the two functions below meet an ambiguous line they lean in opposite directions:

* `read` treats anything that might be quoted as quoted (an unmarked block after "On … wrote:",
  a markdown lazy continuation right after a "> " line, fenced code such as pasted CI output);
* `new_build_lines` skips only what is certainly quoted, since missing a new build would let a
  stale approval through.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

from bot.config import CommentRule, TrackerRules

# Lookbehinds: not right after "no ", "no new ", "zero "... ("no blockers", "no open blockers").
_NOT_AFTER_NO = "".join(rf"(?<!\b{w}\s)" for w in (
    "no", "zero", "0", r"no\snew", r"no\sopen", r"no\smore", r"no\sother", r"no\sknown",
    r"no\smajor", r"no\sremaining"))

# What makes a line that the approval pattern matches NOT an approval, unless a rule's `deny`
# says otherwise. Matched case-insensitively, anywhere in the line (the prefix before "QA" too).
# Broad on purpose (fail closed): "QA PASS, no failures" is refused because of "failures"; the
# approver writes "QA PASS" instead.
DEFAULT_DENY: tuple[str, ...] = (
    # negations
    r"\bnot\b", r"n['’]t\b", r"\b(?:cannot|never|nope|nor)\b", r"\bn/a\b",
    r"\b(?:isnt|arent|wasnt|werent|dont|doesnt|didnt|cant|wont|hasnt|havent|shouldnt)\b",
    r"\b(?:false|none|nobody|negative)\b", r"\b(?:just\s+)?kidding\b|\bj/?k\b",
    # "no" as an answer ("QA pass: NO", "pass - no", "no pass", "no-go", "no longer"), but not
    # "no regressions", "no issues found", "no blockers", "no further comments"
    r"\bno\b(?!\s+(?:(?:new|known|open|outstanding|major|minor|further|more|other|remaining"
    r"|visible|significant|serious|critical|real|obvious|relevant)\s+)*(?:regressions?|issues?"
    r"|problems?|bugs?|blockers?|defects?|findings?|concerns?|comments?|remarks?|objections?"
    r"|errors?|complaints?|surprises?|warnings?|side[\s-]effects?|(?:changes?|action)\s+"
    r"(?:needed|required|requested))\b)",
    # failures
    r"\bfail(?:s|ed|ing|ures?)?\b", r"\breject\w*", r"\brevert\w*", r"\bblocked\b",
    _NOT_AFTER_NO + r"\bblock(?:ing|ers?)\b", r"\bbroken\b", r"\bbreaks\b", r"\bcrash\w*",
    r"\bflak(?:y|e|iness)\b",
    _NOT_AFTER_NO + r"\bknown\s+(?:issues?|bugs?|problems?|defects?)\b",
    _NOT_AFTER_NO + r"\b(?:issues?|bugs?|defects?|regressions?|problems?)\s+"
    r"(?:found|remain\w*|open|left|reported)\b",
    r"❌|✗|✘|✖|❎|🚫|⛔|🛑|👎|🔴|⚠|☐",
    r":(?:x|no_entry(?:_sign)?|-1|thumbsdown|negative_squared_cross_mark|heavy_multiplication_x"
    r"|warning|red_circle):",
    r"(?<![\w.+\-−])[-−]1(?![\d.])",  # "CQ -1"
    # not done yet
    r"\bpending\b", r"\b(?:a)?waiting\b", r"\bwip\b", r"\btbd\b", r"\bto-?do\b", r"\byet\b",
    r"\bin\s+progress\b", r"\bongoing\b", r"\bon\s+hold\b", r"\bhold\s+off\b",
    r"\bneeds?\b", r"\brequires?\b", r"\bre-?(?:test|check|review)\s+(?:needed|required|pending)\b",
    # uncertainty and questions ("CQ: approved?")
    r"[?？¿]", r"\b(?:maybe|perhaps|probabl[ey]|possibl[ey]|hopefully|(?:un)?likely|unsure"
    r"|unclear|unverified|untested|seems?|tentative(?:ly)?|provisional(?:ly)?|preliminary)\b",
    r"\bI\s+(?:think|guess|believe|hope)\b", r"\bafaik\b", r"🤔|🤷", r"-ish\b",
    r"\bin\s+(?:principle|theory)\b", r"\blocally\b", r"\bon\s+my\s+machine\b",
    # conditions ("once CI is green", "if", "unless", "until", "when the fix lands", "expected
    # after the fix"): an approval of something that has not happened yet
    r"\b(?:once|if|unless|until|till|when|whenever|provided|assuming|after)\b",
    r"\bexpect(?:ed|s|ing)?\b", r"\bconditional(?:ly)?\b",
    # measurements, not verdicts ("QA PASS rate 80%", "QA PASS criteria not met", "48/50")
    # ("100%" and "120/120" are whole; "99.5%", "48/50" and a date like "12/03" are not)
    r"\bcriteri(?:a|on)\b", r"\brates?\b", r"\bratio\b", r"\bpercent(?:age)?\b",
    r"(?<![\d.])(?!100(?:\.0+)?\s*%)\d+(?:\.\d+)?\s*%",
    r"\b(\d+)\s*(?:/|of|out\s+of)\s*(?!\1\b)\d+\b",
    # partial
    r"\bpartial(?:ly)?\b", r"\bmostly\b", r"\balmost\b", r"\bnearly\b", r"\bexcept\b",
    r"\bexcluding\b", r"\bonly\b", r"\bskip(?:s|ped|ping)?\b", r"\bminus\b",
    r"\bapart\s+from\b", r"\bother\s+than\b",
    # about another build than the one being deployed
    r"\b(?:previous|old|older|earlier|last)\s+(?:builds?|versions?|images?|releases?|rc)\b",
    # taken back, struck through
    r"\brevok\w*", r"\bwithdr[ae]w\w*", r"\bretract\w*", r"\brescind\w*", r"\bcancel\w*",
    r"\binvalid\w*", r"\b(?:un|dis)approv\w*", r"\breopen\w*", r"\bscratch\s+that\b",
    r"\bignore\b", r"\bdisregard\b", r"\bwrong\b", r"\bmistake\w*", r"\bobsolete\b", r"\bstale\b",
    r"\boutdated\b", r"\bsupersed\w*", r"\banymore\b", r"~~", r"<(?:s|del|strike)>",
)


@dataclass(frozen=True)
class LineVerdict:
    line: int  # 0-based index of the line in the comment body
    text: str  # the line as written (stripped)
    approves: bool  # the rule's pattern matched and no deny wording did
    # the deny wording that matched (the matched text, e.g. "not", "fail", "?"), when it did
    denied_by: str = ""


# A line naming the gate ("CQ withdrawn", "QA failed on checkout") with one of these takes an
# approval back even though the approval pattern does not match it. Narrower than DEFAULT_DENY:
# "QA notes: don't forget the cache" is no verdict.
RETRACTION = re.compile(
    r"\b(?:fail(?:s|ed|ing|ure)?|reject(?:s|ed)?|withdraw(?:s|n)?|revok(?:e|es|ed)"
    r"|retract(?:s|ed)?|revert(?:s|ed)?|broken|blocked|not\s+(?:approved|passed|ok|good))\b"
    r"|[❌✗✘👎]|:x:|:thumbsdown:|:-1:", re.IGNORECASE)


def read(rule: CommentRule, body: str) -> list[LineVerdict]:
    """Every line of `body` the rule's pattern matches, in order, each with its verdict, and
    every line naming the rule's `subject` ("CQ", "QA") with retraction wording ("CQ withdrawn",
    "QA failed"), which never approves. Matching never runs across lines (each line is matched
    on its own). Quoted lines (markdown '>' quotes, including nested '> >', and the quoted block
    after an 'On … wrote:' line) are skipped."""
    pattern = re.compile(rule.pattern)
    subject = re.compile(rule.subject) if rule.subject else None
    deny = _compiled(tuple(DEFAULT_DENY if rule.deny is None else rule.deny))
    verdicts = []
    for i, line in _own_lines(body, strict=True):
        if not pattern.search(line):
            retracted = RETRACTION.search(line) if subject and subject.search(line) else None
            if retracted:
                verdicts.append(LineVerdict(i, line, False, retracted.group(0)))
            continue
        denied_by = _first_deny(deny, line)
        verdicts.append(LineVerdict(i, line, denied_by is None, denied_by or ""))
    return verdicts


def new_build_lines(rules: TrackerRules, body: str) -> list[int]:
    """0-based indexes of the lines announcing a new build/version (any of rules.new_build
    patterns, anywhere in the line, not only at its start). Quoted lines are skipped."""
    patterns = _compiled(tuple(rules.new_build))
    return [i for i, line in _own_lines(body, strict=False)
            if any(p.search(line) for p in patterns)]


# -- helpers --------------------------------------------------------------------------------------

_QUOTED = re.compile(r"^\s*(?:>|bq\.\s)")  # markdown "> " (nested "> >" too), textile "bq. "
_WROTE = re.compile(r"\bwrote\s*:\s*$", re.IGNORECASE)  # "On Tue, 3 Mar, Carol <c@x> wrote:"
_ORIGINAL = re.compile(r"^-{2,}\s*(?:original|forwarded)\s+message\s*-{2,}$", re.IGNORECASE)
_HTML_QUOTE_OPEN = re.compile(r"<blockquote\b", re.IGNORECASE)
_HTML_QUOTE_CLOSE = re.compile(r"</blockquote\s*>", re.IGNORECASE)
_FENCE = re.compile(r"^(?:```|~~~)")


@lru_cache(maxsize=64)
def _compiled(patterns: tuple[str, ...]) -> list[re.Pattern[str]]:
    return [re.compile(p, re.IGNORECASE) for p in patterns]


def _first_deny(deny: list[re.Pattern[str]], line: str) -> str | None:
    """The leftmost deny wording in the line (the first pattern's on a tie), or None."""
    best: tuple[int, str] | None = None
    for p in deny:
        m = p.search(line)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), m.group(0) or p.pattern)
    return None if best is None else best[1]


def _own_lines(body: str, *, strict: bool) -> Iterator[tuple[int, str]]:
    """(index, stripped line) for the non-blank lines that are the comment author's own words.

    Always skipped: '>' and 'bq.' lines, Jira {quote} and HTML <blockquote> blocks, an
    "… wrote:" line and the '>' block after it, everything after "----- Original Message -----".
    With `strict` (reading approvals) also: an unmarked block after "… wrote:" (to the end: it
    cannot be told from a reply), a line continuing a '>' paragraph (markdown renders it inside
    the quote) and fenced code (pasted output is not a verdict).
    """
    lines = (body or "").splitlines()
    in_jira = in_fence = in_quote_paragraph = False
    html_depth = 0
    for i, raw in enumerate(lines):
        line = raw.strip()
        markers = line.lower().count("{quote}")
        if markers or in_jira:
            in_jira ^= markers % 2 == 1
            continue
        opened, closed = len(_HTML_QUOTE_OPEN.findall(line)), len(_HTML_QUOTE_CLOSE.findall(line))
        if opened or closed or html_depth:
            html_depth = max(0, html_depth + opened - closed)
            continue
        if strict and _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        if _QUOTED.match(raw):
            in_quote_paragraph = True
            continue
        if not line:
            in_quote_paragraph = False
            continue
        if in_quote_paragraph and strict:
            continue
        in_quote_paragraph = False
        if _ORIGINAL.match(line):
            return
        if _WROTE.search(line):
            following = next((rest for rest in lines[i + 1:] if rest.strip()), None)
            if strict and following is not None and not _QUOTED.match(following):
                return
            continue
        yield i, line
