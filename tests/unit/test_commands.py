"""The chat grammar: what people type after /deploy, /rollback and @deploybot."""

from __future__ import annotations

import pytest

from handlers.commands import (
    CancelRequest,
    DeployRequest,
    HelpRequest,
    HistoryRequest,
    LockRequest,
    RollbackRequest,
    StatusRequest,
    UnlockRequest,
    UsageError,
    parse_deploy,
    parse_mention,
    parse_rollback,
)

ENVS = ("staging", "production")
SERVICES = ("web", "billing")


def test_deploy_takes_the_ticket_and_leaves_the_rest_to_the_config():
    assert parse_deploy("DEMO-1", environments=ENVS) == DeployRequest("DEMO-1")


def test_deploy_with_target_environment_and_dry_run_in_any_order():
    expected = DeployRequest("DEMO-1", "web@v2.1.0", "production", True)
    assert parse_deploy("DEMO-1 web@v2.1.0 to production --dry-run", environments=ENVS) == expected
    assert parse_deploy("DEMO-1 --dry-run to production web@v2.1.0", environments=ENVS) == expected


@pytest.mark.parametrize("flag", ["--dry-run", "—dry-run", "–dry-run", "dry-run"])
def test_dry_run_survives_slack_turning_dashes_into_an_em_dash(flag):
    assert parse_deploy(f"DEMO-1 {flag}").dry_run


def test_a_ticket_url_in_slack_link_markup_is_unwrapped():
    req = parse_deploy("<https://jira.example.com/browse/DEMO-7|DEMO-7> web@v3")
    assert req.ticket == "https://jira.example.com/browse/DEMO-7" and req.target == "web@v3"


@pytest.mark.parametrize("text, says", [
    ("", "say which ticket"),
    ("web@v2", "the ticket comes first"),
    ("DEMO-1 web@v2 api@v3", "one service@version"),
    ("DEMO-1 web@bad/version", "not a valid version"),
    ("DEMO-1 WEB@v2", "not service@version"),
    ("DEMO-1 to", "needs an environment"),
    ("DEMO-1 to mars", "unknown environment 'mars'"),
    ("DEMO-1 now please", "do not understand 'now'"),
    ("status extra", "takes nothing"),
    ("cancel", "which deployment to cancel"),
])
def test_bad_input_is_a_usage_error_with_the_usage(text, says):
    with pytest.raises(UsageError) as caught:
        parse_deploy(text, environments=ENVS)
    assert says in caught.value.text() and "/deploy TICKET-123" in caught.value.text()


def test_subcommands():
    assert parse_deploy("status") == StatusRequest()
    assert parse_deploy("help") == HelpRequest()
    assert parse_deploy("HISTORY") == HistoryRequest()
    assert parse_deploy("history web in production", environments=ENVS) == \
        HistoryRequest("web", "production")
    assert parse_deploy("cancel DEMO-3 wrong build") == CancelRequest("DEMO-3", reason="wrong build")
    assert parse_deploy("cancel #12") == CancelRequest(deployment_id=12)


def test_lock_and_unlock_take_an_optional_environment_then_the_reason():
    assert parse_deploy("lock production release freeze", environments=ENVS) == \
        LockRequest("production", "release freeze")
    assert parse_deploy("lock db migration running", environments=ENVS) == \
        LockRequest(None, "db migration running")
    assert parse_deploy("unlock staging", environments=ENVS) == UnlockRequest("staging", "")


def test_rollback_tells_a_service_from_a_ticket():
    assert parse_rollback("web", services=SERVICES) == RollbackRequest(service="web")
    assert parse_rollback("DEMO-4", services=SERVICES) == RollbackRequest(ticket="DEMO-4")
    assert parse_rollback("web to v1 in production", services=SERVICES, environments=ENVS) == \
        RollbackRequest(service="web", to_version="v1", environment="production")
    assert parse_rollback("DEMO-4 in staging", services=SERVICES, environments=ENVS) == \
        RollbackRequest(ticket="DEMO-4", environment="staging")


@pytest.mark.parametrize("text, says", [
    ("", "say what to roll back"),
    ("web to", "do not understand 'to'"),
    ("web to v1 to v2", "do not understand 'to'"),
    ("web to ../etc", "not a valid version"),
    ("api", "unknown service 'api'"),
    ("web in mars", "unknown environment"),
])
def test_bad_rollback_input_is_a_usage_error(text, says):
    with pytest.raises(UsageError) as caught:
        parse_rollback(text, services=SERVICES, environments=ENVS)
    assert says in caught.value.text() and "/rollback TICKET-123" in caught.value.text()


def test_mentions_use_the_same_grammar():
    assert parse_mention("<@U0BOT> deploy DEMO-1 web@v2 to staging", environments=ENVS) == \
        DeployRequest("DEMO-1", "web@v2", "staging")
    assert parse_mention("<@U0BOT|deploybot> rollback web to v1", services=SERVICES) == \
        RollbackRequest(service="web", to_version="v1")
    assert parse_mention("<@U0BOT>") == HelpRequest()
    assert parse_mention("<@U0BOT> deploy status") == StatusRequest()
    with pytest.raises(UsageError, match="not 'dance'"):
        parse_mention("<@U0BOT> dance")


@pytest.mark.parametrize("text, says", [
    ("DEMO-1 web", "'web' has no version: write web@VERSION"),
    ("DEMO-1 Web", "write web@VERSION, or leave it out"),
    ("DEMO-1 production", "'production' is an environment: write `to production`"),
    ("DEMO-1 WEB@v2", "service names are lower case (web@v2)"),
])
def test_a_near_miss_says_what_to_write_instead(text, says):
    with pytest.raises(UsageError) as caught:
        parse_deploy(text, environments=ENVS, services=SERVICES)
    assert says in caught.value.message


def test_a_long_bad_version_is_quoted_shortened_with_its_length():
    from bot.errors import InputError
    from bot.intake import validate_version

    with pytest.raises(InputError) as err:
        validate_version("v" * 399 + "/")
    assert "(400 characters)" in err.value.message and "v" * 61 not in err.value.message
    with pytest.raises(InputError, match=r"'v2;rm' is not a valid version"):
        validate_version("v2;rm")


@pytest.mark.parametrize("text", ["x" * 5000, "DEMO-1 web@v2 " + "y" * 5000, "cancel " + "z" * 5000,
                                  "DEMO-1 to " + "e" * 5000])
def test_a_pasted_page_is_refused_quoted_shortened_with_its_length(text):
    with pytest.raises(UsageError) as caught:
        parse_deploy(text, environments=ENVS, services=SERVICES)
    assert "(5000 characters)" in caught.value.message and len(caught.value.message) < 200


def test_a_pasted_page_after_rollback_is_refused_shortened():
    with pytest.raises(UsageError) as caught:
        parse_rollback("w" * 5000, services=SERVICES, environments=ENVS)
    assert "(5000 characters)" in caught.value.message and len(caught.value.message) < 200


@pytest.mark.parametrize("ticket, says", [
    ("DEMO-４２", "FULLWIDTH DIGIT FOUR (U+FF14)"),
    ("DEMO-٤٢", "ARABIC-INDIC DIGIT FOUR (U+0664)"),
    ("DΕMO-42", "GREEK CAPITAL LETTER EPSILON (U+0395)"),
    ("DEMO‑42", "NON-BREAKING HYPHEN (U+2011)"),
    ("DEMO-42\u200b", "ZERO WIDTH SPACE (U+200B)"),
])
def test_a_look_alike_ticket_id_is_refused_naming_the_odd_character(ticket, says):
    for text, parse in ((f"{ticket} web@v2", parse_deploy), (f"cancel {ticket}", parse_deploy),
                        (ticket, parse_rollback)):
        with pytest.raises(UsageError) as caught:
            parse(text, environments=ENVS, services=SERVICES)
        assert says in caught.value.message and "is not a ticket" in caught.value.message
    assert parse_deploy("DEMO-42 web@v2", environments=ENVS, services=SERVICES).ticket == "DEMO-42"


@pytest.mark.parametrize("text, says", [
    ("lock prod code freeze", "`/deploy lock production REASON`"),
    ("lock Prod: code freeze", "`/deploy lock production REASON`"),
    ("lock stage broken", "`/deploy lock staging REASON`"),
    ("unlock prod freeze is over", "`/deploy unlock production REASON`"),
    ("lock productoin freeze", "`/deploy lock production REASON`"),
])
def test_a_near_environment_name_is_refused_not_taken_as_the_reason(text, says):
    with pytest.raises(UsageError) as caught:
        parse_deploy(text, environments=ENVS, services=SERVICES)
    assert says in caught.value.message and "is not an environment" in caught.value.message


@pytest.mark.parametrize("text, env, reason", [
    ("lock production: code freeze", "production", "code freeze"),
    ("lock *production* code freeze", "production", "code freeze"),
    ("lock release freeze", None, "release freeze"),
    ("unlock Staging done", "staging", "done"),
])
def test_lock_takes_its_environment_or_the_default_one(text, env, reason):
    req = parse_deploy(text, environments=ENVS, services=SERVICES)
    assert (req.environment, req.reason) == (env, reason)
