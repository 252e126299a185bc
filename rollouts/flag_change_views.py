"""Contract and variation edits of a flag served in a governed environment. The parts that
reach production at once (a served variation's value, the fallback, the JSON Schema) are
submitted as one change request; the rest saves at once. Flags served nowhere governed keep
the plain editors in flags.views (the fragments they answer with come from flags.fragments)."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django_htmx.http import HttpResponseClientRedirect

from flags import permissions
from flags import services as flag_services
from flags.forms import add_service_errors
from flags.fragments import variation_saved_response
from flags.models import Flag, Project, Variation
from flags.shortcuts import first_or_404, flag_for, flag_page, project_page, refused
from rollouts.change_control import submitting
from rollouts.forms import GovernedFlagEditForm, GovernedVariationForm


def _after_request(request: HttpRequest, flag: Flag, change_request: object | None, saved_what: str) -> str:
    """Say what happened; answer where to go next."""
    if change_request is None:
        messages.success(request, f"{saved_what} saved.")
        return reverse("flags:flag_detail", kwargs={"project_key": flag.project.key, "flag_key": flag.key})
    messages.success(request, f"{saved_what}: the parts that reach a governed environment wait for approval in "
                              f"CR-{change_request.pk}; anything else was saved.")
    return reverse("rollouts:change_request", kwargs={"project_key": flag.project.key, "pk": change_request.pk})


@project_page("GET", "POST")
def variation_change(request: HttpRequest, project: Project, flag_key: str, variation_key: str) -> HttpResponse:
    flag = flag_for(project, flag_key)
    variation = first_or_404(Variation.objects.filter(flag=flag, key=variation_key).select_related("flag"), "variation")
    if refusal := refused(request, permissions.EDIT_VARIATIONS, flag):
        return refusal
    form = GovernedVariationForm(request.POST or None, flag=flag, variation=variation,
                                 initial=GovernedVariationForm.initial_for(variation), auto_id=f"id_{variation.key}_%s")
    if request.method == "POST" and form.is_valid():
        changes = dict(form.cleaned_data)
        reason = changes.pop("reason")
        try:
            saved, change_request = submitting.variation_change_submit(variation=variation, actor=request.user,
                                                                     reason=reason, **changes)
        except ValidationError as exc:
            add_service_errors(form, exc)
        else:
            url = _after_request(request, flag, change_request, f"Variation “{variation.key}”")
            if change_request is None:  # nothing held: the row, saved, in place
                return variation_saved_response(request, project, flag, saved)
            return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    template = "flags/_variation_edit_row.html" if request.htmx else "flags/variation_form.html"
    save_url = reverse("rollouts:variation_change", kwargs={"project_key": project.key, "flag_key": flag.key,
                                                            "variation_key": variation.key})
    return render(request, template, {"project": project, "flag": flag, "variation": variation, "form": form,
                                      "save_url": save_url}, status=422 if form.errors else 200)


@flag_page("GET", "POST", rule=permissions.EDIT_CONTRACT, load=flag_for)
def contract_change(request: HttpRequest, project: Project, flag: Flag) -> HttpResponse:
    form = GovernedFlagEditForm(request.POST or None, flag=flag, initial=GovernedFlagEditForm.initial_for(flag))
    if request.method == "POST" and form.is_valid():
        try:
            _, change_request = submitting.contract_change_submit(
                flag=flag, actor=request.user, reason=form.cleaned_data["reason"],
                expected_version=form.cleaned_data["version"],
                fallback_variation_key=form.cleaned_data["fallback_variation"], tags=form.cleaned_data["tags"],
                **form.contract())
        except ValidationError as exc:
            add_service_errors(form, exc)
        else:
            return redirect(_after_request(request, flag, change_request, f"Contract of “{flag.key}”"))
    served = sorted(flag_services.governed_served_variations(flag))
    notice = (f"{flag.key} serves in a governed environment ({', '.join(served)} reachable there): a new fallback "
              "or JSON Schema waits for approval, with your reason. The rest of the contract saves at once.")
    return render(request, "flags/flag_form.html", {
        "project": project, "flag": flag, "form": form, "governed_notice": notice,
        "save_url": reverse("rollouts:contract_change", kwargs={"project_key": project.key, "flag_key": flag.key}),
    }, status=422 if form.errors else 200)
