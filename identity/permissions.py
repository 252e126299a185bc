"""Who may do what with single sign-on: project admins edit their project's sign-in role rules
and sign its members out everywhere; site staff read every project's rules."""

from __future__ import annotations

from flags.permissions import Rule, can_manage_members

MANAGE_SIGN_IN_RULES = Rule(can_manage_members, "Sign-in role rules are managed by the project's admins.")
REVOKE_SESSIONS = Rule(can_manage_members, "Signing members out everywhere is for the project's admins.")
VIEW_ALL_SIGN_IN_RULES = Rule(lambda user: user.is_authenticated and user.is_active and user.is_staff,
                              "Every project's sign-in role rules are for site staff.")
