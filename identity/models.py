"""Single sign-on: who an identity provider's accounts are here, which groups grant which
project roles, and which memberships the identity provider granted (the only ones a sign-in
may take away)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from flags.constants import Role
from flags.models import Membership, Project

GROUP_MAX_LENGTH = 200


class OidcIdentity(models.Model):
    """An account of an identity provider, linked to the user it signs in as. The link is the
    stable `sub` claim scoped to its issuer: never the email, which a provider may reassign."""

    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="oidc_identities")
    created_at = models.DateTimeField(auto_now_add=True)
    last_sign_in_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "identity provider account"
        constraints = [models.UniqueConstraint(fields=["issuer", "subject"], name="oidc_identity_unique_subject")]

    def __str__(self) -> str:
        return f"{self.subject} at {self.issuer}"


class GroupRoleRule(models.Model):
    """A sign-in role rule: members of `group` (in the identity provider's groups claim, matched
    exactly) hold `role` in `project`, granted and taken away at their sign-ins."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="group_role_rules")
    group = models.CharField(max_length=GROUP_MAX_LENGTH)
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "sign-in role rule"
        ordering = ["group", "role"]
        constraints = [
            models.UniqueConstraint(fields=["project", "group", "role"], name="group_role_rule_unique"),
            models.CheckConstraint(condition=Q(role__in=Role.values), name="group_role_rule_role_known"),
        ]

    def __str__(self) -> str:
        return f"group {self.group} → {self.get_role_display()} in {self.project}"


class IdpGrant(models.Model):
    """A membership the identity provider granted at a sign-in. Sign-ins revoke only these; a
    role granted by hand in the console has no row here and stays. Revoking the membership by
    hand deletes this row with it."""

    membership = models.OneToOneField(Membership, on_delete=models.CASCADE, related_name="idp_grant")
    issuer = models.CharField(max_length=255)
    group = models.CharField(max_length=GROUP_MAX_LENGTH)  # the group whose rule granted it
    granted_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "role granted by the identity provider"

    def __str__(self) -> str:
        return f"{self.membership} (from group {self.group})"
