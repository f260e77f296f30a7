"""Who someone is: the person of `people:` behind a Slack user id, an OS login or a tracker account.

Every decision (a comment counted as an approval, a click, a terminal command) is resolved to a
person before a rule reads it. Display names never take part: their owners can change them.
What cannot be resolved stays unresolved, and the rules that need it fail closed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from bot.config import SLACK_GROUP_ID, SLACK_USER_ID, Config
from bot.errors import DeploybotError, TrackerError
from bot.models import Account, Comment
from bot.ports import Tracker

SYSTEM = "deploybot"


@dataclass(frozen=True)
class Actor:
    """Someone asking deploybot to do something, as the front end established it."""

    person: str | None  # the people: key; None when the front end's identity maps to nobody
    raw: str  # what the front end saw: a Slack user id, an OS login, "deploybot"
    via: str = "core"  # "slack", "terminal", "scheduler", "core" (tests, internal callers)
    os_login: str = ""  # on the terminal: the real OS login, also when --as names someone else
    groups: tuple[str, ...] = ()  # Slack user groups the person is in (approver groups)

    @property
    def name(self) -> str:
        """How the store and every message name them: the person, else the raw identity."""
        return self.person or self.raw

    @property
    def system(self) -> bool:
        return self.raw == SYSTEM and self.via in ("scheduler", "core")

    def audit(self) -> str:
        """Where the request came from, for the audit trail."""
        if self.via == "terminal":
            return f"terminal, OS login {self.os_login or '?'}"
        if self.via == "slack":
            return f"slack {self.raw}"
        return self.via

    @classmethod
    def named(cls, config: Config, who: "Actor | str", via: str = "core") -> "Actor":
        """An Actor for a name or Slack id given by a caller the core trusts (tests, scheduler)."""
        if isinstance(who, Actor):
            return who
        if who == SYSTEM:
            return cls(None, SYSTEM, via)
        return cls(config.person_named(who), who, via)


def slack_actor(config: Config, user_id: str, groups: tuple[str, ...] = ()) -> Actor:
    return Actor(config.person_named(user_id) if user_id else None, user_id, "slack",
                 groups=groups)


class TrackerIdentities:
    """People's tracker accounts, resolved once per process through the tracker itself."""

    def __init__(self, config: Config, tracker: Tracker) -> None:
        self.config = config
        self.tracker = tracker
        self._accounts: dict[str, Account | TrackerError] = {}
        self._lock = threading.Lock()

    def account(self, ref: str) -> Account:
        """The account `ref` (as written in people:) names; TrackerError when unknown."""
        with self._lock:
            known = self._accounts.get(ref)
        if known is None:
            try:
                known = self.tracker.resolve_account(ref)
            except TrackerError as exc:
                known = exc
            except DeploybotError as exc:
                known = TrackerError(exc.message, hint=exc.hint)
            with self._lock:
                self._accounts[ref] = known
        if isinstance(known, TrackerError):
            raise known
        return known

    def of_person(self, person: str) -> Account:
        """A person's tracker account. TrackerError saying how to map them when they have none."""
        entry = self.config.people.get(person)
        if entry is None or not entry.tracker:
            raise TrackerError(
                f"{person} has no {self.tracker.name} account in people:",
                hint=f"map {person} to their {self.tracker.name} account: "
                     f"people: {{{person}: {{tracker: LOGIN_OR_ID}}}}")
        return self.account(entry.tracker)

    def of_rule_entry(self, entry: str) -> tuple[str, Account]:
        """An `authors:` entry (a person, or a tracker account given directly) -> (name, account)."""
        person = self.config.person_named(entry)
        if person is not None:
            return person, self.of_person(person)
        return entry, self.account(entry)

    def person_of(self, comment: Comment) -> str | None:
        """The person who wrote `comment` (by account id), when people: knows them."""
        for name, entry in self.config.people.items():
            if not entry.tracker:
                continue
            try:
                if self.account(entry.tracker).id == comment.author:
                    return name
            except TrackerError:
                continue
        return None


def check_people(config: Config, tracker: Tracker) -> list[tuple[str, str]]:
    """`check-config --live`: every person, approver, author, deployer and admin resolved
    against the tracker. Returns (level, line) pairs; level is ok, warning or FAILED."""
    out: list[tuple[str, str]] = []
    identities = TrackerIdentities(config, tracker)
    try:
        me = tracker.current_account()
        out.append(("ok", f"deploybot acts as {tracker.name} account {me.login or me.id} "
                          f"(id {me.id}); its own comments never count"))
    except DeploybotError as exc:
        out.append(("FAILED", f"{tracker.name} credentials: {exc}"))
        return out
    for name, person in config.people.items():
        if not person.tracker:
            out.append(("warning", f"people.{name}: no {tracker.name} account: comments cannot "
                                   f"be told to be theirs; when {name} requests a deployment, "
                                   "CQ and QA fail closed"))
            continue
        try:
            acc = identities.account(person.tracker)
            shown = f", shown as {acc.name!r}" if acc.name and acc.name != acc.login else ""
            out.append(("ok", f"people.{name}: {tracker.name} {acc.login or person.tracker} "
                              f"(id {acc.id}{shown})"))
        except TrackerError as exc:
            out.append(("FAILED", f"people.{name}.tracker: {exc}"))
    rules = config.tracker.rules
    for rule_name in ("cq_approval", "qa_pass", "notes"):
        for entry in getattr(rules, rule_name).authors:
            where = f"tracker.rules.{rule_name}.authors"
            try:
                who, acc = identities.of_rule_entry(entry)
                out.append(("ok", f"{where}: {entry} = {tracker.name} id {acc.id}"))
            except TrackerError as exc:
                out.append(("FAILED", f"{where}: {entry}: {exc}"))
    for env_name, env in config.environments.items():
        for entry in env.approvers:
            where = f"environments.{env_name}.approvers"
            if config.person_named(entry):
                out.append(("ok", f"{where}: {entry} = {config.person_named(entry)}"))
            elif SLACK_GROUP_ID.fullmatch(entry):
                out.append(("ok", f"{where}: {entry} is a Slack user group"))
            elif SLACK_USER_ID.fullmatch(entry):
                out.append(("warning", f"{where}: {entry} is a Slack user id not in people:; "
                                       "add the person to people: so every front end knows them"))
            else:
                out.append(("FAILED", f"{where}: {entry!r} is not in people: (nobody can "
                                      "approve as them)"))
        for entry in env.deployers:
            if config.person_named(entry) is None:
                out.append(("FAILED", f"environments.{env_name}.deployers: {entry!r} is not in "
                                      "people:"))
    return out
