"""What counts as a CQ approval or a QA PASS, line by line, and what announces a new build."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import yaml

from bot import approvals, checks, record
from bot import config as configuration
from bot.config import CommentRule, TrackerRules
from bot.errors import ConfigError
from bot.models import CheckResult, CheckStatus, Comment, Deployment, DeploymentStatus, Ticket
from bot.config import parse
from fakes.tracker import MemoryTracker, read_approval

RULES = TrackerRules()
MINIMAL = {"environments": {"staging": {}}, "services": {"web": {"image": "web"}}}


def approves(which: str, body: str, rules: TrackerRules = RULES) -> bool:
    rule = rules.cq_approval if which == "cq" else rules.qa_pass
    return any(v.approves for v in approvals.read(rule, body))


# (rule, comment body, counts as an approval). Fail closed: a false "no" costs the approver one
# plain comment; a false "yes" ships broken code.
PHRASINGS = [
    # -- CQ ---------------------------------------------------------------------------------------
    ("cq", "LGTM", False),  # no CQ marker: on a ticket it does not say which gate it passes
    ("cq", "lgtm 👍", False),
    ("cq", "CQ: LGTM", True),
    ("cq", "CQ LGTM, nice cleanup", True),
    ("cq", "CQ approved", True),
    ("cq", "CQ approved with nits", True),
    ("cq", "CQ: approved", True),
    ("cq", "- CQ: approved", True),
    ("cq", "**CQ approved**", True),
    ("cq", "CQ ✅", True),
    ("cq", "CQ: ✔️", True),
    ("cq", "CQ pass", True),
    ("cq", "CQ passed", True),
    ("cq", "CQ OK", True),
    ("cq", "code review approved", True),
    ("cq", "Code review: approved by Bob", True),
    ("cq", "1. CQ: approved", True),
    ("cq", ":white_check_mark: CQ approved", True),
    ("cq", "not approved", False),
    ("cq", "CQ not approved", False),
    ("cq", "CQ: approved?", False),
    ("cq", "CQ approved once CI is green", False),
    ("cq", "CQ approved if the migration is split out", False),
    ("cq", "CQ approved unless the perf test says otherwise", False),
    ("cq", "CQ approved until someone touches billing", False),
    ("cq", "CQ approved, pending the security review", False),
    ("cq", "CQ approved... wait, no", False),
    ("cq", "CQ approved... I think", False),
    ("cq", "CQ: 👎", False),
    ("cq", "CQ approved ❌ wrong ticket", False),
    ("cq", "CQ approval revoked", False),
    ("cq", "CQ approved (revoked, see below)", False),
    ("cq", "CQ approved - withdrawn", False),
    ("cq", "~~CQ approved~~", False),  # struck through
    ("cq", "CQ approved but it breaks the admin page", False),
    ("cq", "CQ unapproved", False),
    ("cq", "Bob: CQ approved", False),  # not at the start of the line: fail closed
    ("cq", "> CQ approved", False),
    ("cq", "> > CQ approved", False),
    ("cq", "> CQ approved\n\nthis is NOT approved anymore", False),
    ("cq", "> CQ approved\nthis is NOT approved anymore", False),
    ("cq", "CQ\napproved", False),
    ("cq", "CQ approved in principle", False),
    ("cq", "CQ OK-ish", False),
    ("cq", "CQ approved 🤔", False),
    ("cq", "CQ approved, no changes needed", True),
    ("cq", "CQ: approved. Nice work!", True),
    ("cq", "✅ CQ", False),  # the verdict must follow the marker
    ("cq", "- [x] CQ review confirmed", False),  # deploybot's own record
    # -- QA ---------------------------------------------------------------------------------------
    ("qa", "QA PASS", True),
    ("qa", "qa pass", True),
    ("qa", "QA: pass", True),
    ("qa", "QA passed", True),
    ("qa", "QA ✅", True),
    ("qa", "QA: OK", True),
    ("qa", "QA signed off", True),
    ("qa", "QA sign-off: PASS", True),
    ("qa", "QA: approved", True),
    ("qa", "**QA PASS**", True),
    ("qa", "__QA PASS__", True),
    ("qa", "**QA:** PASS", True),
    ("qa", "✅ QA passed", True),
    ("qa", "QA: pass ✅", True),
    ("qa", "QA passed on build 42", True),
    ("qa", "QA PASS, no regressions found", True),
    ("qa", "QA PASS - no issues", True),
    ("qa", "QA PASS, no blockers", True),
    ("qa", "QA PASS. No issues found on staging.", True),
    ("qa", "QA PASS, no known issues", True),
    ("qa", "QA PASS (120/120 tests)", True),
    ("qa", "QA PASS 100%", True),
    ("qa", "Tested on staging\nQA PASS", True),
    ("qa", "QA ❌", False),
    ("qa", "QA failed; PASS expected after the fix", False),
    ("qa", "QA PASS criteria not met - 3 checkout tests fail", False),
    ("qa", "QA pass: NO", False),
    ("qa", "QA pass - no", False),
    ("qa", "QA PASS: no-go", False),
    ("qa", "QA PASS? no", False),
    ("qa", "> QA PASS", False),
    ("qa", "On Tue, Carol wrote:\n> QA PASS", False),
    ("qa", "On Tue, Carol wrote:\nQA PASS", False),  # an unmarked quote cannot be told apart
    ("qa", "> is it ready?\nQA PASS", False),  # markdown renders line 2 inside the quote
    ("qa", "> is it ready?\n\nQA PASS", True),
    ("qa", "QA\nPASS", False),
    ("qa", "Carol said QA PASS yesterday", False),
    ("qa", "QA PASS rate 80%", False),
    ("qa", "QA PASS 99.5%", False),
    ("qa", "QA PASS 48/50", False),
    ("qa", "QA pass pending", False),
    ("qa", "QA PASS - WIP", False),
    ("qa", "QA: PASS (TBD: mobile)", False),
    ("qa", "QA PASS when the fix lands", False),
    ("qa", "QA pass expected tomorrow", False),
    ("qa", "QA PASSWORD reset", False),
    ("qa", "QA 👍", False),  # a thumbs-up is as often "seen" as "passed": write "QA ✅" or "QA PASS"
    # fail closed: a test that failed once is a failure to look at, even if the rerun was green
    ("qa", "QA PASS (flaky test failed once, rerun green)", False),
    ("qa", "QA PASS, no failures", False),  # fail closed: "failures" is deny wording
    ("qa", "QA PASS on Chrome only", False),
    ("qa", "QA PASS except the PDF export", False),
    ("qa", "QA PASS (partial: payments not tested)", False),
    ("qa", "QA PASS with known issues", False),
    ("qa", "QA PASS, 2 issues found", False),
    ("qa", "QA PASS - reverted, it was the wrong build", False),
    ("qa", "QA PASS hopefully", False),
    ("qa", "QA PASS (blocked on the payment sandbox)", False),
    ("qa", "QA PASS :x:", False),
    ("qa", "QA PASS 🚫", False),
    ("qa", "QA PASS, but checkout is broken", False),
    ("qa", "QA passed after the hotfix is deployed", False),  # "after": a condition, fail closed
    ("qa", "QA PASS for the previous build", False),
    ("qa", "QA PASS locally", False),
    ("qa", "QA PASS, needs PM sign-off", False),
    ("qa", "QA PASS... just kidding", False),
    ("qa", "QA PASS: false", False),
    ("qa", "QA PASS ✅ Tested on Chrome, Firefox and Safari.", True),
    ("qa", "QA signed off for release 1.4.3", True),
    ("qa", "QA PASS, no further action needed", True),
    ("qa", "- [x] QA pass confirmed", False),  # deploybot's own record
    ("qa", "- [ ] QA PASS: no QA PASS comment on the ticket", False),  # deploybot's blocker
    ("qa", "| QA | PASS |", False),  # a table cell, not a verdict
    ("qa", "```\nQA PASS: 120 tests\n```", False),  # pasted CI output
]


@pytest.mark.parametrize("which,body,expected", PHRASINGS,
                         ids=[f"{w}-{b[:40]}" for w, b, _ in PHRASINGS])
def test_phrasing(which, body, expected):
    assert approves(which, body) is expected


def test_the_table_is_large_enough():
    assert len(PHRASINGS) >= 50


def test_a_verdict_names_its_line_and_the_deny_wording():
    body = "Tested on staging\nQA PASS criteria not met - 3 checkout tests fail\n\nQA PASS"
    assert approvals.read(RULES.qa_pass, body) == [
        approvals.LineVerdict(1, "QA PASS criteria not met - 3 checkout tests fail", False,
                              "criteria"),
        approvals.LineVerdict(3, "QA PASS", True),
    ]
    assert approvals.read(RULES.cq_approval, "  CQ: approved?  ") == [
        approvals.LineVerdict(0, "CQ: approved?", False, "?")]
    assert approvals.read(RULES.qa_pass, "QA pass: NO")[0].denied_by == "NO"
    assert approvals.read(RULES.qa_pass, "Tested on staging\nQA PASS") == [
        approvals.LineVerdict(1, "QA PASS", True)]


def test_a_pattern_written_for_whole_bodies_no_longer_runs_across_lines():
    old_style = CommentRule(pattern=r"(?im)^\s*QA\s*PASS(ED)?\b")
    assert approvals.read(old_style, "QA\nPASS") == []
    assert [v.line for v in approvals.read(old_style, "retested\nQA PASS")] == [1]


@pytest.mark.parametrize("body", [
    "> QA PASS", ">> QA PASS", "> > QA PASS", "   > QA PASS", "bq. QA PASS",
    "{quote}\nQA PASS\n{quote}", "{quote}QA PASS{quote}", "<blockquote>\nQA PASS\n</blockquote>",
    "Carol wrote:\n> QA PASS", "On Tue, 3 Mar 2026 at 10:00, Carol <carol@example.com> wrote:\n> QA PASS",
    "thanks\n\n-----Original Message-----\nQA PASS",
])
def test_quoted_text_is_never_an_approval(body):
    assert approvals.read(RULES.qa_pass, body) == []


def test_the_reply_after_a_quote_counts():
    body = "On Tue, Carol wrote:\n> QA PASS on 1.4.2\n\nQA PASS on 1.4.3 too"
    assert [(v.line, v.approves) for v in approvals.read(RULES.qa_pass, body)] == [(3, True)]
    body = "{quote}CQ approved{quote}\nCQ approved"
    assert [v.line for v in approvals.read(RULES.cq_approval, body)] == [1]


def test_deny_wording_on_another_line_does_not_matter():
    verdicts = approvals.read(RULES.cq_approval, "CQ approved\n(the flaky test is unrelated)")
    assert [(v.line, v.approves) for v in verdicts] == [(0, True)]


# -- deny lists -----------------------------------------------------------------------------------

def test_the_defaults_pass_their_own_validation():
    rule = CommentRule(pattern="QA", deny=list(approvals.DEFAULT_DENY))
    assert rule.deny == list(approvals.DEFAULT_DENY)
    assert TrackerRules(new_build=RULES.new_build).new_build == RULES.new_build
    assert RULES.cq_approval.deny is None and RULES.qa_pass.deny is None


def test_an_empty_deny_list_replaces_the_defaults():
    rule = CommentRule(pattern=RULES.qa_pass.pattern, deny=[])
    assert approves("qa", "QA PASS criteria not met", TrackerRules(qa_pass=rule))
    assert approvals.read(rule, "QA PASS?")[0] == approvals.LineVerdict(0, "QA PASS?", True)


def test_a_custom_deny_list_replaces_the_defaults_and_ignores_case():
    rule = CommentRule(pattern=r"^QA PASS\b", deny=[r"\bnope\b", r"\bstaging\s+only\b"])
    assert [(v.approves, v.denied_by) for v in approvals.read(rule, "QA PASS NOPE")] == [
        (False, "NOPE")]
    assert approvals.read(rule, "QA PASS on Staging only")[0].denied_by == "Staging only"
    assert approvals.read(rule, "QA PASS not really")[0].approves  # "not" is not on this list


def test_the_leftmost_deny_wording_is_reported():
    assert approvals.read(RULES.qa_pass, "QA PASS? not yet, 2 tests fail")[0].denied_by == "?"


def test_no_as_an_answer_is_denied_but_no_as_a_finding_is_not():
    for body in ["QA PASS: no", "QA PASS - No.", "QA PASS no-go", "QA PASS, no longer valid",
                 "QA PASS no pass"]:
        assert approvals.read(RULES.qa_pass, body)[0].denied_by.lower() == "no", body
    for body in ["QA PASS, no regressions", "QA PASS - no new issues found",
                 "QA PASS, no open blockers", "QA PASS; no further comments", "QA PASS no bugs"]:
        assert approves("qa", body), body


def test_deploybot_own_comments_approve_nothing_and_announce_no_build():
    when = datetime(2026, 3, 3, 10, tzinfo=timezone.utc)
    tracker = MemoryTracker()
    for login, uid in (("alice", "1"), ("bob", "2"), ("dave", "4")):
        tracker.user(login, uid)
    tid = tracker.ticket()
    tracker.say(tid, "bob", "CQ approved")
    tracker.say(tid, "dave", "new build 1.4.4 is up")
    config = parse({"environments": {"staging": {}}, "services": {"web": {"image": "web"}},
                    "people": {"alice": {"tracker": "alice"}}})
    stale = read_approval(config, tracker, tid, requester="alice")
    assert "a new build was announced after it" in stale.reason
    d = Deployment(id=7, ticket_id="DEMO-3", service="web", version="v2", environment="staging",
                   requested_by="alice", status=DeploymentStatus.SUCCEEDED, previous_version="v1",
                   method="Direct Container")
    results = [CheckResult(7, "cq_approval", "CQ approval", 0, CheckStatus.FAILED, stale.reason),
               CheckResult(7, "qa_pass", "QA PASS", 1, CheckStatus.FAILED,
                           "no QA PASS comment on the ticket"),
               CheckResult(7, "rollback_plan", "Rollback plan", 2, CheckStatus.SKIPPED,
                           "first deployment: rolling back means taking the new version down")]
    passed = [CheckResult(7, n, n, i, CheckStatus.PASSED, "ok")
              for i, n in enumerate(["cq_approval", "qa_pass", "rollback_plan"])]
    texts = [record.render_blockers(d, results)]
    for checked in (results, passed):
        texts.append(record.render(d, ticket=Ticket("DEMO-3", "Ship v2", "Deployed"),
                                   checks=checked, verification=None,
                                   rollback_lines=record.rollback_plan(d, [], None, "#standup"),
                                   notes=["Image built from source: web:v2 = sha256:abc"], now=when))
    for text in texts:
        assert approvals.new_build_lines(RULES, text) == [], text
        assert approvals.read(RULES.cq_approval, text) == [], text
        assert approvals.read(RULES.qa_pass, text) == [], text


# Catastrophic backtracking would hang here, not be slow by a measurable margin: the timeout
# (thread method: a C-level regex loop ignores signals) stops such a run; no speed is asserted.
@pytest.mark.timeout(60, method="thread")
def test_long_hostile_lines_are_read_without_backtracking_forever():
    lines = ["1." * 5000 + "x", ":a:" * 3000, "_*" * 5000, "no new " * 3000, "v1.2 " * 2000,
             "QA " + " " * 20000 + "x", "1/" * 5000]
    for line in lines:
        assert approvals.read(RULES.qa_pass, line) == []
        assert approvals.read(RULES.cq_approval, line) == []
        assert approvals.new_build_lines(RULES, line) == []


# -- new builds -----------------------------------------------------------------------------------

NEW_BUILDS = [
    ("FYI new build 1.4.3 is on staging", [0]),
    ("New build: v2 rebuilt with the fix", [0]),
    ("Tested it.\nnew version deployed to QA", [1]),
    ("Rebuilt with the fix", [0]),
    ("build 42 is up", [0]),
    ("Build #43 is ready for QA", [0]),
    ("v1.4.3 is now on staging", [0]),
    ("Pushed a fix for the rounding bug", [0]),
    ("re-deployed to staging", [0]),
    ("Redeployed QA with the config change", [0]),
    ("2 new commits since the review", [0]),
    ("hotfix merged", [0]),
    ("The fix is in, please retest", [0]),
    ("bumped the version to 1.4.4", [0]),
    ("deployed 1.4.4 to QA", [0]),
    ("new image pushed: registry.local/web:1.4.4", [0]),
    ("one\ntwo\nNEW BUILD", [2]),
    ("> new build 1.4.4", []),
    ("> > new build 1.4.4", []),
    ("On Tue, Dave wrote:\n> new build is up\n\nthanks, testing", []),
    # unlike approvals, lines that only might be quoted still count (a missed build is the risk)
    ("On Tue, Dave wrote:\nnew build 1.4.4 is up", [1]),
    ("```\nSuccessfully built; new image web:1.4.4 pushed\n```", [1]),
    ("QA PASS", []),
    ("QA failed; PASS expected after the fix lands", []),
    ("## Deployment Record\n**Version:** v2\n**Previous Version:** v1", []),
]


@pytest.mark.parametrize("body,expected", NEW_BUILDS, ids=[b[:40] for b, _ in NEW_BUILDS])
def test_new_build_lines(body, expected):
    assert approvals.new_build_lines(RULES, body) == expected


def test_a_configured_new_build_list_replaces_the_defaults():
    rules = TrackerRules(new_build=[r"\brespin\b"])
    assert approvals.new_build_lines(rules, "new build 1.4.4\nRESPIN done") == [1]
    assert approvals.new_build_lines(TrackerRules(new_build=[]), "new build 1.4.4") == []


# -- configuration --------------------------------------------------------------------------------

def parse_rules(rules: dict) -> TrackerRules:
    return configuration.parse({**MINIMAL, "tracker": {"rules": rules}}).tracker.rules


def config_errors(rules: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_rules(rules)
    return str(info.value)


def test_deny_defaults_to_none_and_a_list_is_kept():
    rules = parse_rules({"qa_pass": {"pattern": "QA PASS", "deny": [r"\bnope\b"]}})
    assert rules.qa_pass.deny == [r"\bnope\b"]
    assert rules.cq_approval.deny is None
    assert parse_rules({"qa_pass": {"pattern": "QA PASS", "deny": []}}).qa_pass.deny == []


def test_an_invalid_deny_regex_is_a_config_error_with_its_path():
    text = config_errors({"qa_pass": {"pattern": "QA PASS", "deny": ["ok", "(unclosed"]}})
    assert "tracker.rules.qa_pass.deny: item 1 ('(unclosed'): not a valid regular expression" in text
    text = config_errors({"cq_approval": {"pattern": "CQ", "deny": ["x*"]}})
    assert "tracker.rules.cq_approval.deny: item 0 ('x*') matches an empty line" in text


def test_new_build_from_yaml_as_a_string_a_list_or_null():
    def load(text: str) -> list[str]:
        return parse_rules(yaml.safe_load(text)).new_build

    assert load('new_build: "(?im)^\\\\s*respin\\\\b"') == [r"(?im)^\s*respin\b"]
    assert load("new_build: ['\\brespin\\b', 'new drop']") == [r"\brespin\b", "new drop"]
    assert load("new_build: null") == []
    assert load("ready_status: Done") == TrackerRules().new_build


def test_an_invalid_new_build_regex_is_a_config_error_with_its_path():
    assert "tracker.rules.new_build: item 0 ('(oops'): not a valid regular expression" in (
        config_errors({"new_build": "(oops"}))
    assert "tracker.rules.new_build: item 1 ('.*') matches an empty line" in (
        config_errors({"new_build": ["rebuilt", ".*"]}))
