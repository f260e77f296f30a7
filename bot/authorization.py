"""Who may do what: one table, applied by the core for the terminal, Slack and the scheduler alike.

Roles are relative to the request: the *requester* of the deployment (for a lock: the person who
took it), the *approvers* of the environment (`environments.X.approvers`, approver groups),
the *admins* (`admins:`), and *anyone*. The README's table is rendered from TABLE (a test keeps
them equal), so the documentation cannot drift from what is enforced.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from bot.config import Config
from bot.errors import NotAllowed
from bot.identity import Actor


class Action(str, enum.Enum):
    DEPLOY = "deploy"
    APPROVE = "approve"
    REJECT = "reject"
    BREAK_GLASS = "break-glass approval"
    CANCEL = "cancel a deployment"
    LOCK = "lock"
    UNLOCK = "unlock a manual lock"
    BREAK_LOCK = "break a running deployment's lock"
    ROLLBACK = "roll back"
    ACK_NOTES = "acknowledge notes"


REQUESTER, APPROVER, ADMIN, ANYONE = "requester", "approver", "admin", "anyone"
ROLES = (REQUESTER, APPROVER, ADMIN, ANYONE)


@dataclass(frozen=True)
class Rule:
    roles: frozenset[str]
    note: str = ""  # what the table cannot say in yes/no


def _rule(*roles: str, note: str = "") -> Rule:
    return Rule(frozenset(roles), note)


TABLE: dict[Action, Rule] = {
    Action.DEPLOY: _rule(ANYONE, note="per environment: when `environments.X.deployers` lists "
                                      "people, only they, the approvers and the admins"),
    Action.APPROVE: _rule(APPROVER, note="never the requester (unless `allow_self_approval`); "
                                         "each approval from a different person; with no "
                                         "approvers listed, any person of `people:` but the "
                                         "requester"),
    Action.REJECT: _rule(REQUESTER, APPROVER, note="rejecting needs a reason; with no "
                                                   "approvers listed, any person of `people:`"),
    Action.BREAK_GLASS: _rule(APPROVER, note="two different approvers, never the requester"),
    Action.CANCEL: _rule(REQUESTER, APPROVER, ADMIN,
                         note="only before the rollout starts; after it, roll back"),
    Action.LOCK: _rule(ANYONE, note="a lock only stops deployments; it needs a reason"),
    Action.UNLOCK: _rule(REQUESTER, APPROVER, ADMIN, note="requester = who took the lock"),
    Action.BREAK_LOCK: _rule(APPROVER, ADMIN, note="the deployment is blocked when it next "
                                                   "needs its lock, unless it can take it back"),
    Action.ROLLBACK: _rule(ANYONE, note="as deploy: limited to the deployers, approvers and "
                                        "admins where `deployers` is set"),
    Action.ACK_NOTES: _rule(REQUESTER, APPROVER, note="the notes are for whoever deploys"),
}


def render_table() -> str:
    """The README's authorization table (markdown)."""
    head = "| action | requester | approver of the environment | admin | anyone | notes |"
    lines = [head, "|---|:-:|:-:|:-:|:-:|---|"]
    for action, rule in TABLE.items():
        cells = ["yes" if (role in rule.roles or ANYONE in rule.roles) else "no"
                 for role in ROLES]
        lines.append(f"| {action.value} | " + " | ".join(cells) + f" | {rule.note} |")
    return "\n".join(lines)


class Authorization:
    """Applies TABLE with the configuration's people, approvers, deployers and admins."""

    def __init__(self, config: Config) -> None:
        self.config = config

    # -- roles ----------------------------------------------------------------------------------

    def is_admin(self, actor: Actor) -> bool:
        return actor.person is not None and actor.person in self.config.admins

    def is_approver(self, actor: Actor, environment: str) -> bool:
        env = self.config.environments[environment]
        for entry in env.approvers:
            if actor.person and self.config.person_named(entry) == actor.person:
                return True
            if entry == actor.raw and actor.via == "slack":  # a Slack user id listed directly
                return True
            if entry in actor.groups:  # a Slack user group listed among the approvers
                return True
        return any(g in actor.groups for g in env.approver_groups)

    def _is_requester(self, actor: Actor, requester: str | None) -> bool:
        if not requester:
            return False
        return self.config.same_person(actor.name, requester)

    def _holds(self, role: str, actor: Actor, environment: str, requester: str | None) -> bool:
        if role == ANYONE:
            return True
        if role == ADMIN:
            return self.is_admin(actor)
        if role == APPROVER:
            return self.is_approver(actor, environment)
        return self._is_requester(actor, requester)

    def _who(self, action: Action, environment: str, requester: str | None) -> str:
        """Who may do it, in words, for the refusal."""
        env = self.config.environments[environment]
        roles = TABLE[action].roles
        parts = []
        if REQUESTER in roles and requester:
            parts.append(f"{self.config.canonical(requester)} (who "
                         + ("took the lock" if action is Action.UNLOCK else "requested it") + ")")
        if APPROVER in roles:
            names = [self.config.canonical(a) for a in env.approvers]
            names += [f"members of Slack group {g}" for g in env.approver_groups]
            parts.append(f"the approvers of {environment} ({', '.join(names)})" if names
                         else f"the approvers of {environment} (none are configured: "
                              f"environments.{environment}.approvers)")
        if ADMIN in roles:
            parts.append(f"an admin ({', '.join(self.config.admins)})" if self.config.admins
                         else "an admin (none are configured: admins:)")
        return ", ".join(parts[:-1]) + (" or " if len(parts) > 1 else "") + parts[-1]

    # -- the check ------------------------------------------------------------------------------

    def require(self, action: Action, actor: Actor, environment: str, *,
                requester: str | None = None, subject: str = "") -> None:
        """NotAllowed (a complete sentence saying who can act) unless `actor` may do `action`."""
        if actor.system:
            return  # deploybot itself acting on a request that was authorised when it was made
        env = self.config.environments[environment]
        if action in (Action.DEPLOY, Action.ROLLBACK):
            if not env.deployers:
                return
            if any(self.config.person_named(d) == actor.person for d in env.deployers
                   if actor.person) or self.is_approver(actor, environment) \
                    or self.is_admin(actor):
                return
            names = ", ".join(self.config.canonical(d) for d in env.deployers)
            raise NotAllowed(
                f"{actor.name} may not {action.value} in {environment}.",
                hint=f"Only the deployers of {environment} ({names}), its approvers or an admin "
                     "may; ask one of them.")
        if action in (Action.APPROVE, Action.BREAK_GLASS):
            self._require_approver(action, actor, environment, requester, subject)
            return
        rule = TABLE[action]
        if any(self._holds(role, actor, environment, requester) for role in rule.roles):
            return
        if action is Action.REJECT and not (env.approvers or env.approver_groups) \
                and actor.person is not None:
            return  # whoever could approve here may also say no
        what = f"{action.value.split(' a ')[0]} {subject}".strip() if subject else action.value
        raise NotAllowed(f"{actor.name} may not {what}.",
                         hint=f"Only {self._who(action, environment, requester)} may; "
                              "ask one of them.")

    def _require_approver(self, action: Action, actor: Actor, environment: str,
                          requester: str | None, subject: str) -> None:
        env = self.config.environments[environment]
        what = subject or f"deployments to {environment}"
        if env.approvers or env.approver_groups:
            if not self.is_approver(actor, environment):
                raise NotAllowed(f"{actor.name} may not approve {what}.",
                                 hint=f"Only {self._who(Action.APPROVE, environment, None)} may; "
                                      "ask one of them.")
        elif actor.person is None:
            raise NotAllowed(
                f"{actor.name} is not in people:, so deploybot cannot tell who is approving "
                f"{what}.", hint="Add them to people: in deploybot.yaml, or ask someone who is.")
        if self._is_requester(actor, requester) and (
                action is Action.BREAK_GLASS or not env.allow_self_approval):
            raise NotAllowed(f"{actor.name} requested this deployment and cannot approve it.",
                             hint="Another approver has to: "
                                  f"{self._who(Action.APPROVE, environment, None)}.")
