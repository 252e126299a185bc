"""Accounts and permission groups in the Django admin, audited like every other change.

Django's stock `UserAdmin` and `GroupAdmin` keep their forms and pages; these subclasses add
one audit row per create, change, password change and delete, written in the transaction of
the change (the admin's add, change and delete views are atomic; its password view and its
"delete selected" action are not, so those are wrapped here). Before/after hold the changed
fields only: never a password hash, groups and permissions as sorted names. Project roles
(`Membership`) stay read-only in the admin; they are granted and revoked on the console's
Members page. So the admin refuses to delete a user who still holds a role, as it refuses any
delete that would cascade into rows it may not delete: revoke the roles (audited) first.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any, NamedTuple

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.hashers import is_password_usable
from django.contrib.auth.models import Group, User
from django.db import models, router, transaction
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters

from audit.constants import AuditAction
from audit.services import record

# Where save_model leaves the locked row's state for save_related, which runs after the
# many-to-many fields are saved and so is the first point that sees the whole change.
_BEFORE_ATTR = "_audit_before"

USER_FIELDS = ("username", "first_name", "last_name", "email", "is_active", "is_staff", "is_superuser",
               "last_login", "date_joined")


def _permission_names(permissions: QuerySet[Any]) -> list[str]:
    # app_label.codename, as `has_perm` spells it: codenames alone repeat across apps.
    return sorted(f"{app_label}.{codename}"
                  for app_label, codename in permissions.values_list("content_type__app_label", "codename"))


def _json_value(value: Any) -> Any:
    # To the second, as the admin's split date/time widgets show and resubmit them: a save
    # that changed nothing must not read as a change of date_joined.
    if isinstance(value, datetime.datetime):
        return value.isoformat(timespec="seconds")
    return value


def user_snapshot(user: User) -> dict[str, Any]:
    state = {name: _json_value(getattr(user, name)) for name in USER_FIELDS}
    state["groups"] = sorted(user.groups.values_list("name", flat=True))
    state["user_permissions"] = _permission_names(user.user_permissions)
    return state


def group_snapshot(group: Group) -> dict[str, Any]:
    return {"name": group.name, "permissions": _permission_names(group.permissions)}


def _changed(before: dict[str, Any], after: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    keys = [key for key in after if before.get(key) != after[key]]
    return {key: before.get(key) for key in keys}, {key: after[key] for key in keys}


def _describe_changes(model: type[models.Model], before: dict[str, Any], after: dict[str, Any]) -> str:
    """'staff status on, groups +Approvers −Viewers, email address': what changed, in words."""
    parts = []
    for key, new in after.items():
        label = str(model._meta.get_field(key).verbose_name)
        old = before[key]
        if isinstance(new, bool):
            parts.append(f"{label} {'on' if new else 'off'}")
        elif isinstance(new, list):
            moves = [f"+{name}" for name in new if name not in old] + [f"−{name}" for name in old if name not in new]
            parts.append(f"{label} {' '.join(moves)}")
        elif key in ("username", "name"):
            parts.append(f"{label} {old} → {new}")
        else:
            parts.append(label)
    return ", ".join(parts)


class AuditActions(NamedTuple):
    """What an admin page's creates, changes and deletes are recorded as."""

    created: AuditAction
    updated: AuditAction
    deleted: AuditAction


class AuditedAdmin(admin.ModelAdmin):
    """One audit row per create, change and delete made through this admin page."""

    noun: str
    audit_actions: AuditActions
    # A row's state as its audit rows hold it.
    snapshot: Callable[[Any], dict[str, Any]]

    def created_state(self, obj: Any) -> dict[str, Any]:
        return self.snapshot(obj)

    def deleted_state(self, obj: Any) -> dict[str, Any]:
        return self.snapshot(obj)

    def save_model(self, request: HttpRequest, obj: Any, form: ModelForm, change: bool) -> None:
        if change:
            # The form has already written the new values into `obj`; read the row as stored,
            # locked so that a concurrent save cannot slip between this read and ours.
            stored = self.model._default_manager.select_for_update().get(pk=obj.pk)
            setattr(form, _BEFORE_ATTR, self.snapshot(stored))
        super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: ModelForm, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        obj = form.instance
        if not change:
            record(actor=request.user, action=self.audit_actions.created, target=obj, after=self.created_state(obj),
                   summary=f"Created {self.noun} {obj}")
            return
        before, after = _changed(getattr(form, _BEFORE_ATTR), self.snapshot(obj))
        if after:  # a save that changed nothing is no state change, so no row
            record(actor=request.user, action=self.audit_actions.updated, target=obj, before=before, after=after,
                   summary=f"Changed {self.noun} {obj}: {_describe_changes(self.model, before, after)}")

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        self._record_deletion(request, obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        # The "delete selected" action runs outside the admin's transactions.
        with transaction.atomic(using=router.db_for_write(self.model)):
            for obj in queryset:
                self._record_deletion(request, obj)
            super().delete_queryset(request, queryset)

    def _record_deletion(self, request: HttpRequest, obj: Any) -> None:
        # Recorded before the delete, while the row (and what cascades from it) can still be read.
        record(actor=request.user, action=self.audit_actions.deleted, target=obj, before=self.deleted_state(obj),
               summary=f"Deleted {self.noun} {obj}")


class AuditedUserAdmin(AuditedAdmin, UserAdmin):
    noun = "user"
    audit_actions = AuditActions(AuditAction.USER_CREATED, AuditAction.USER_UPDATED, AuditAction.USER_DELETED)
    snapshot = staticmethod(user_snapshot)

    def created_state(self, obj: User) -> dict[str, Any]:
        return {**user_snapshot(obj), "password": "set" if obj.has_usable_password() else "unusable"}

    @method_decorator(sensitive_post_parameters())
    def user_change_password(self, request: HttpRequest, id: str, form_url: str = "") -> HttpResponse:
        if request.method != "POST":
            return super().user_change_password(request, id, form_url)
        with transaction.atomic(using=router.db_for_write(self.model)):
            user = self.get_object(request, unquote(id))
            if user is None:  # let the stock view answer 404
                return super().user_change_password(request, id, form_url)
            stored = self.model._default_manager.select_for_update().filter(pk=user.pk)
            old_hash = stored.values_list("password", flat=True).get()
            response = super().user_change_password(request, id, form_url)
            new_hash = stored.values_list("password", flat=True).get()
            if new_hash != old_hash:  # an invalid form or a conflicting submission saves nothing
                usable = is_password_usable(new_hash)
                record(actor=request.user, action=AuditAction.USER_PASSWORD_CHANGED, target=user,
                       before={"password": "set" if is_password_usable(old_hash) else "unusable"},
                       after={"password": "changed" if usable else "unusable"},
                       summary=f"Changed the password of user {user}" if usable
                       else f"Disabled password sign-in for user {user}")
        return response


class AuditedGroupAdmin(AuditedAdmin, GroupAdmin):
    noun = "group"
    audit_actions = AuditActions(AuditAction.GROUP_CREATED, AuditAction.GROUP_UPDATED, AuditAction.GROUP_DELETED)
    snapshot = staticmethod(group_snapshot)

    def deleted_state(self, obj: Group) -> dict[str, Any]:
        # Deleting a group takes its permissions from every member.
        return {**group_snapshot(obj), "users": sorted(obj.user_set.values_list("username", flat=True))}


admin.site.unregister(User)
admin.site.unregister(Group)
admin.site.register(User, AuditedUserAdmin)
admin.site.register(Group, AuditedGroupAdmin)
