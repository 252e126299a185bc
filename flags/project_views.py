"""Project administration in the console: members and roles, SDK keys."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from flags import permissions, services
from flags.constants import ROLE_PERMISSIONS, Role
from flags.models import Environment, Membership, Project, SdkKey
from flags.shortcuts import REFUSED, project_page, report


class GrantRoleForm(forms.Form):
    username = forms.CharField(max_length=150, label="Username", help_text="An existing user of the console.")
    role = forms.ChoiceField(choices=Role.choices)

    def clean_username(self) -> object:
        username = self.cleaned_data["username"].strip()
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise ValidationError(f"No user “{username}”. Ask a site administrator to create the account first.")
        return user


class CreateSdkKeyForm(forms.Form):
    environment = forms.ModelChoiceField(queryset=Environment.objects.none(), empty_label=None)
    name = forms.CharField(max_length=100, help_text="What uses the key, e.g. “support-api production”.")

    def __init__(self, *args: object, project: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fields["environment"].queryset = Environment.objects.filter(project=project)


def _members_context(project: object, form: GrantRoleForm) -> dict[str, object]:
    rows: dict[int, dict[str, object]] = {}
    for membership in Membership.objects.filter(project=project).select_related("user").order_by("user__username", "role"):
        row = rows.setdefault(membership.user_id, {"user": membership.user, "roles": []})
        row["roles"].append(Role(membership.role))  # type: ignore[union-attr]
    return {"project": project, "members": list(rows.values()), "form": form,
            "role_table": [(Role(r), sorted(p)) for r, p in ROLE_PERMISSIONS.items()]}


@project_page("GET", rule=permissions.MANAGE_MEMBERS)
def members(request: HttpRequest, project: Project) -> HttpResponse:
    return render(request, "flags/members.html", _members_context(project, GrantRoleForm()))


@project_page("POST", rule=permissions.CHANGE_PROJECT_SETTINGS)
def project_time_zone(request: HttpRequest, project: Project) -> HttpResponse:
    try:
        services.project_time_zone_set(project=project, time_zone=request.POST.get("time_zone", "")[:64],
                                       actor=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return render(request, "flags/members.html",
                      {**_members_context(project, GrantRoleForm()), "time_zone_error": " ".join(exc.messages)},
                      status=422)
    messages.success(request, f"Time zone of {project.name}: {project.time_zone}. Review dates are dates there.")
    return redirect("flags:members", project_key=project.key)


@project_page("POST", rule=permissions.MANAGE_MEMBERS)
def member_grant(request: HttpRequest, project: Project) -> HttpResponse:
    form = GrantRoleForm(request.POST)
    if form.is_valid():
        user, role = form.cleaned_data["username"], Role(form.cleaned_data["role"])
        if report(request, lambda: services.membership_grant(project=project, user=user, role=role, actor=request.user),
                  f"{user.get_username()} is now {role.label} in {project.name}.", form) is not REFUSED:
            return redirect("flags:members", project_key=project.key)
    return render(request, "flags/members.html", _members_context(project, form), status=422)


@project_page("POST", rule=permissions.MANAGE_MEMBERS)
def member_revoke(request: HttpRequest, project: Project) -> HttpResponse:
    user_id = request.POST.get("user", "")
    role = request.POST.get("role", "")
    membership = get_object_or_404(Membership.objects.select_related("user"), project=project,
                                   user_id=int(user_id) if user_id.isascii() and user_id.isdigit()
                                   and len(user_id) <= 18 else -1, role=role)
    report(request, lambda: services.membership_revoke(project=project, user=membership.user, role=Role(role),
                                                       actor=request.user, reason=request.POST.get("reason", "")),
           f"Revoked {Role(role).label} from {membership.user.get_username()}.")
    return redirect("flags:members", project_key=project.key)


def _keys_context(project: object, form: CreateSdkKeyForm, **extra: object) -> dict[str, object]:
    keys = SdkKey.objects.filter(environment__project=project).select_related("environment", "created_by")
    return {"project": project, "keys": keys, "form": form, **extra}


@project_page("GET", "POST", rule=permissions.MANAGE_SDK_KEYS)
def sdk_keys(request: HttpRequest, project: Project) -> HttpResponse:
    form = CreateSdkKeyForm(request.POST or None, project=project)
    if request.method == "POST" and form.is_valid():
        sdk_key, raw_key = services.sdk_key_create(environment=form.cleaned_data["environment"],
                                                   name=form.cleaned_data["name"], actor=request.user)
        # Shown once, in this response only; never stored or logged.
        return render(request, "flags/sdk_keys.html",
                      _keys_context(project, CreateSdkKeyForm(project=project), new_key=raw_key, new_sdk_key=sdk_key))
    return render(request, "flags/sdk_keys.html", _keys_context(project, form), status=422 if form.errors else 200)


@project_page("POST", rule=permissions.MANAGE_SDK_KEYS)
def sdk_key_revoke(request: HttpRequest, project: Project, key_id: int) -> HttpResponse:
    sdk_key = get_object_or_404(SdkKey, pk=key_id, environment__project=project)
    report(request, lambda: services.sdk_key_revoke(sdk_key=sdk_key, actor=request.user,
                                                    reason=request.POST.get("reason", "")),
           f"Revoked “{sdk_key.name}” ({sdk_key.prefix}…). Evaluation refuses it within a second.")
    return redirect("flags:sdk_keys", project_key=project.key)
