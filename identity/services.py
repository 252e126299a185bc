"""Writes of single sign-on, each with its audit row in the same transaction: sign-in role rules
(edited by project admins), the account and project roles a sign-in through the identity
provider creates, updates and takes away, and revoking a person's sessions."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import SESSION_KEY, get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.constants import AuditAction
from audit.services import Actor, AnonymousActor, AuditTarget, record
from audit.validators import check_text_limit
from flags.constants import Role
from flags.models import Membership, Project
from flags.services.members import membership_grant, membership_revoke
from identity.models import GROUP_MAX_LENGTH, GroupRoleRule, IdpGrant, OidcIdentity

logger = logging.getLogger(__name__)

MAX_GROUPS = 2_000  # more names than this in a groups claim is refused, not cut
_USERNAME_UNSAFE = re.compile(r"[^\w.@+-]")


class SignInRefused(Exception):
    """A sign-in through the identity provider that must not go ahead; `str()` says why, in
    words for the person (never a token or a secret)."""


# --- sign-in role rules ------------------------------------------------------------------------


def _clean_group(group: str) -> str:
    group = (group or "").strip()
    if not group:
        raise ValidationError({"group": "Name the group, as the identity provider sends it."})
    if len(group) > GROUP_MAX_LENGTH:
        raise ValidationError({"group": f"At most {GROUP_MAX_LENGTH} characters (this one has {len(group)})."})
    return group


def _rule_state(rule: GroupRoleRule) -> dict[str, str]:
    return {"group": rule.group, "role": rule.role}


def _save_rule(rule: GroupRoleRule) -> None:
    rule.full_clean(validate_unique=False, validate_constraints=False)
    duplicate = GroupRoleRule.objects.filter(project=rule.project, group=rule.group, role=rule.role)
    if rule.pk:
        duplicate = duplicate.exclude(pk=rule.pk)
    if duplicate.exists():
        raise ValidationError({"group": f"Group “{rule.group}” already grants {Role(rule.role).label} here."})
    try:
        with transaction.atomic():
            rule.save()
    except IntegrityError as exc:  # the same rule saved at the same moment by someone else
        raise ValidationError({"group": f"Group “{rule.group}” already grants {Role(rule.role).label} here."}) from exc


@transaction.atomic
def group_rule_create(*, project: Project, group: str, role: Role | str, actor: Actor) -> GroupRoleRule:
    rule = GroupRoleRule(project=project, group=_clean_group(group), role=Role(role))
    _save_rule(rule)
    record(actor=actor, action=AuditAction.SSO_RULE_CREATED, target=rule, project=project, after=_rule_state(rule),
           summary=f"Members of group “{rule.group}” become {rule.get_role_display()} at sign-in")
    return rule


@transaction.atomic
def group_rule_update(*, rule: GroupRoleRule, group: str, role: Role | str, actor: Actor) -> GroupRoleRule:
    rule = GroupRoleRule.objects.select_for_update().select_related("project").get(pk=rule.pk)
    before = _rule_state(rule)
    rule.group, rule.role = _clean_group(group), Role(role)
    if _rule_state(rule) == before:
        raise ValidationError("Nothing changed: the rule already says this.")
    _save_rule(rule)
    record(actor=actor, action=AuditAction.SSO_RULE_UPDATED, target=rule, project=rule.project, before=before,
           after=_rule_state(rule), summary=f"Sign-in role rule now: group “{rule.group}” → {rule.get_role_display()}")
    return rule


@transaction.atomic
def group_rule_delete(*, rule: GroupRoleRule, actor: Actor) -> None:
    rule = GroupRoleRule.objects.select_for_update().select_related("project").get(pk=rule.pk)
    target = AuditTarget("identity.grouprolerule", rule.pk, str(rule))
    before = _rule_state(rule)
    rule.delete()
    record(actor=actor, action=AuditAction.SSO_RULE_DELETED, target=target, project=rule.project, before=before,
           summary=f"Group “{before['group']}” no longer grants {Role(before['role']).label} at sign-in "
                   "(roles it granted go at each member's next sign-in)")


# --- signing in through the identity provider -------------------------------------------------


@dataclass
class RoleChanges:
    granted: list[Membership] = field(default_factory=list)
    revoked: list[tuple[Project, str]] = field(default_factory=list)
    kept: list[tuple[Project, str, str]] = field(default_factory=list)  # a revocation refused, and why


def groups_from(claims: Mapping[str, Any]) -> set[str]:
    """The group names of the configured claim: a list of strings (or one string); none if absent."""
    raw = claims.get(settings.OIDC_GROUPS_CLAIM)
    if raw is None:
        return set()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise SignInRefused(f"The identity provider's “{settings.OIDC_GROUPS_CLAIM}” claim is not a list of groups.")
    if len(raw) > MAX_GROUPS:
        raise SignInRefused(f"The identity provider sent {len(raw)} groups; at most {MAX_GROUPS} are accepted.")
    return {item.strip() for item in raw if isinstance(item, str) and item.strip()}


def _names(claims: Mapping[str, Any]) -> tuple[str, str]:
    given, family = claims.get("given_name"), claims.get("family_name")
    if isinstance(given, str) or isinstance(family, str):
        return str(given or "")[:150], str(family or "")[:150]
    name = claims.get("name")
    if not isinstance(name, str) or not name.strip():
        return "", ""
    first, _, last = name.strip().rpartition(" ")
    return (first[:150], last[:150]) if first else (last[:150], "")


def _email(claims: Mapping[str, Any]) -> str:
    """The email claim, unless the provider says it is not verified."""
    email = claims.get("email")
    if not isinstance(email, str) or claims.get("email_verified") is False or len(email) > 254 or "@" not in email:
        return ""
    return email.strip()


def _free_username(subject: str, host: str) -> str:
    """`<sub>@<issuer host>`, the username a new account gets; a name already taken gets -2, -3…"""
    base = _USERNAME_UNSAFE.sub("_", f"{subject}@{host.replace(':', '_')}")[:140]
    User = get_user_model()
    candidate, n = base, 1
    while User.objects.filter(username=candidate).exists():
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def _account(*, issuer: str, host: str, subject: str, claims: Mapping[str, Any], actor: Actor) -> AbstractBaseUser:
    """The account of (issuer, sub): created at the first sign-in, its name and email updated at each."""
    first_name, last_name = _names(claims)
    email = _email(claims)
    identity = OidcIdentity.objects.select_for_update().select_related("user").filter(
        issuer=issuer, subject=subject).first()
    if identity is None:
        user = get_user_model()(username=_free_username(subject, host), first_name=first_name, last_name=last_name,
                                email=email)
        user.set_unusable_password()
        try:
            with transaction.atomic():
                user.save()
                identity = OidcIdentity.objects.create(issuer=issuer, subject=subject, user=user,
                                                       last_sign_in_at=timezone.now())
        except IntegrityError as exc:  # the same person's first sign-in in another tab, at the same moment
            raise SignInRefused("This account was being created by another sign-in: sign in again.") from exc
        record(actor=actor, action=AuditAction.USER_CREATED, target=user,
               after={"username": user.get_username(), "name": user.get_full_name(), "email": email,
                      "issuer": issuer, "subject": subject},
               summary=f"Account {user.get_username()} created at its first sign-in through {host}")
        return user
    user = identity.user
    before = {"first_name": user.first_name, "last_name": user.last_name, "email": user.email}
    after = {"first_name": first_name, "last_name": last_name, "email": email}
    changed = {name for name in after if after[name] != before[name]}
    if changed:
        for name in changed:
            setattr(user, name, after[name])
        user.save(update_fields=sorted(changed))
        record(actor=actor, action=AuditAction.USER_UPDATED, target=user,
               before={name: before[name] for name in sorted(changed)},
               after={name: after[name] for name in sorted(changed)},
               summary=f"Account {user.get_username()} updated from {host} at sign-in")
    identity.last_sign_in_at = timezone.now()
    identity.save(update_fields=["last_sign_in_at"])
    return user


def roles_sync_from_groups(*, user: AbstractBaseUser, groups: Iterable[str], issuer: str, actor: Actor) -> RoleChanges:
    """Make the roles the identity provider granted exactly those the rules map `groups` to:
    grant what is missing (remembering it came from the provider), revoke what the provider
    granted and no rule maps any more. Roles granted by hand are never revoked here."""
    groups = set(groups)
    wanted: dict[tuple[int, str], tuple[Project, str]] = {}
    for rule in GroupRoleRule.objects.filter(group__in=groups).select_related("project").order_by("group", "pk"):
        wanted.setdefault((rule.project_id, rule.role), (rule.project, rule.group))
    held = {(m.project_id, m.role): m
            for m in Membership.objects.filter(user=user).select_related("project", "idp_grant")}
    changes = RoleChanges()
    for (project_id, role), (project, group) in sorted(wanted.items()):
        if (project_id, role) in held:
            continue  # already held: from an earlier sign-in, or by hand (and then it stays a hand grant)
        membership = membership_grant(project=project, user=user, role=Role(role), actor=actor)
        IdpGrant.objects.create(membership=membership, issuer=issuer, group=group)
        changes.granted.append(membership)
    for key, membership in sorted(held.items()):
        grant = getattr(membership, "idp_grant", None)  # None: granted by hand
        if grant is None or key in wanted:
            continue
        role = Role(membership.role)
        try:
            membership_revoke(project=membership.project, user=user, role=role, actor=actor,
                              reason=f"Not in group “{grant.group}” (or in any group that grants {role.label} in "
                                     f"{membership.project.name}) at this sign-in")
        except ValidationError as exc:  # e.g. the project's last admin: kept, and said in the log
            logger.warning("sign-in kept %s of %s in %s: %s", role, user.get_username(), membership.project.key,
                           " ".join(exc.messages))
            changes.kept.append((membership.project, role, " ".join(exc.messages)))
            continue
        changes.revoked.append((membership.project, role))
    return changes


@transaction.atomic
def oidc_account_sign_in(*, issuer: str, host: str, claims: Mapping[str, Any], actor: Actor
                         ) -> tuple[AbstractBaseUser, RoleChanges]:
    """The account signing in with these (verified) claims, created or updated, and its project
    roles brought in line with its groups. A deactivated account is returned unchanged in roles:
    the sign-in is refused by the caller."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > 255:
        raise SignInRefused("The identity provider sent no usable subject (sub) for this account.")
    groups = groups_from(claims)
    user = _account(issuer=issuer, host=host, subject=subject, claims=claims, actor=actor)
    if not user.is_active:
        return user, RoleChanges()
    return user, roles_sync_from_groups(user=user, groups=groups, issuer=issuer, actor=actor)


def sign_in_refusal_record(*, host: str, reason: str, subject: str = "") -> None:
    """A refused sign-in through the identity provider, in the trail with the other sign-ins."""
    label = subject or "unknown account"
    with transaction.atomic():
        record(actor=AnonymousActor(f"single sign-on via {host}"), action=AuditAction.LOGIN_FAILED,
               target=AuditTarget("auth.user", subject or "-", label),
               summary=f"Sign-in through {host} refused: {reason}")


# --- sessions ----------------------------------------------------------------------------------


@transaction.atomic
def user_sessions_revoke(*, user: AbstractBaseUser, actor: Actor, project: Project | None = None,
                         reason: str = "") -> int:
    """Delete every session of `user` from the session store: each of their browsers is signed
    out at its next request. Answers how many sessions there were. (The database session store
    is read whole: sessions are not indexed by user. An admin's occasional action.)"""
    check_text_limit("reason", reason)
    store_class = import_module(settings.SESSION_ENGINE).SessionStore
    if not hasattr(store_class, "get_model_class"):
        raise ValidationError("Sessions are kept where they cannot be listed (SESSION_ENGINE): "
                              "change the person's password or deactivate the account instead.")
    model = store_class.get_model_class()
    user_id = str(user.pk)
    keys = [session.session_key for session in model.objects.filter(expire_date__gt=timezone.now()).iterator()
            if str(session.get_decoded().get(SESSION_KEY, "")) == user_id]
    for key in keys:
        store_class(session_key=key).delete()
    record(actor=actor, action=AuditAction.SESSIONS_REVOKED, target=user, project=project,
           after={"user": user.get_username(), "sessions_ended": len(keys)}, reason=reason,
           summary=f"Signed {user.get_username()} out everywhere ({len(keys)} session{'' if len(keys) == 1 else 's'})")
    return len(keys)
