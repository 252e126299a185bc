"""Forms of the change-control console. They parse and check shape; the services decide."""

from __future__ import annotations

import datetime
from typing import Any

from django import forms
from django.utils import timezone

from flags.constants import BehaviorSurface
from flags.forms import FlagEditForm, TargetingForm, VariationForm
from flags.models import Environment
from rollouts.contracts.document import MAX_IMPORT_CHARS

REASON_WIDGET = forms.Textarea(attrs={"rows": 2, "maxlength": 2000})


class ProposeForm(TargetingForm):
    """The targeting form, plus the reason that travels with the change request."""

    reason = forms.CharField(
        max_length=2000, widget=REASON_WIDGET,
        help_text="Why this change, and why now. Approvers read it; the audit trail keeps it.",
    )


class ReasonForm(forms.Form):
    reason = forms.CharField(max_length=2000, widget=REASON_WIDGET,
                             help_text="Required: it goes to the audit trail, the owner and the approvers.")


class DecisionForm(forms.Form):
    comment = forms.CharField(max_length=5000, required=False, widget=forms.Textarea(attrs={"rows": 2}),
                              label="Comment (optional)")


class CommentForm(forms.Form):
    body = forms.CharField(max_length=5000, widget=forms.Textarea(attrs={"rows": 3}), label="Comment")


class ScheduleForm(forms.Form):
    scheduled_for = forms.DateTimeField(
        label="Apply at", widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"],
        help_text=f"Time zone: {timezone.get_default_timezone_name()}.",
    )

    def clean_scheduled_for(self) -> datetime.datetime:
        when = self.cleaned_data["scheduled_for"]
        if when <= timezone.now():
            raise forms.ValidationError("Pick a time in the future.")
        if when > timezone.now() + datetime.timedelta(days=365):
            raise forms.ValidationError("Pick a time within a year.")
        return when


class AcknowledgeForm(forms.Form):
    note = forms.CharField(max_length=2000, widget=forms.Textarea(attrs={"rows": 2}),
                           label="What was found, what happens next")


class IncidentForm(forms.Form):
    environment = forms.ModelChoiceField(queryset=Environment.objects.none(), to_field_name="key",
                                         empty_label=None)
    surfaces = forms.MultipleChoiceField(
        choices=BehaviorSurface.choices, required=False, widget=forms.CheckboxSelectMultiple,
        label="Behavior surfaces", help_text="Leave all unticked to send every flag of the environment to its fallback.",
    )
    reason = forms.CharField(max_length=2000, widget=REASON_WIDGET)

    def __init__(self, *args: Any, project: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["environment"].queryset = project.environments.all()


class PolicyForm(forms.Form):
    approvals_for_escalation = forms.IntegerField(min_value=1, max_value=10, label="Approvals for risk escalations")
    approvals_otherwise = forms.IntegerField(min_value=1, max_value=10, label="Approvals for other risky changes")
    expire_after_days = forms.IntegerField(min_value=1, max_value=90, label="Undecided requests expire after (days)")


class GovernedVariationForm(VariationForm):
    """A variation edit for a flag served in a governed environment: a reason travels with a
    new value, which waits for approval."""

    reason = forms.CharField(max_length=2000, required=False, widget=REASON_WIDGET,
                             help_text="Needed when the value changes: approvers read it.")


class GovernedFlagEditForm(FlagEditForm):
    reason = forms.CharField(max_length=2000, required=False, widget=REASON_WIDGET,
                             help_text="Needed when the fallback or the JSON Schema changes: approvers read it.")


class ContractImportForm(forms.Form):
    """Contracts pasted or uploaded, and the reason every change carries. `fingerprint` names
    the diff a preview showed: the Apply post carries it back."""

    text = forms.CharField(required=False, label="Contracts (YAML)",
                           widget=forms.Textarea(attrs={"rows": 16, "class": "mono", "spellcheck": "false"}),
                           help_text="One ai_featureops_contract, or a YAML list of them, as the export writes.")
    upload = forms.FileField(required=False, label="Or upload a file",
                             help_text="A .yaml file; it replaces what is pasted above.")
    reason = forms.CharField(max_length=2000, widget=REASON_WIDGET,
                             help_text="Why: it stays with every change in the audit trail and goes to approvers.")
    fingerprint = forms.CharField(required=False, widget=forms.HiddenInput)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        upload = cleaned.get("upload")
        if upload:
            if upload.size > MAX_IMPORT_CHARS:
                self.add_error("upload", f"The file is larger than {MAX_IMPORT_CHARS:,} bytes.")
                return cleaned
            try:
                cleaned["text"] = upload.read().decode("utf-8")
            except UnicodeDecodeError:
                self.add_error("upload", "The file is not UTF-8 text.")
                return cleaned
        if not (cleaned.get("text") or "").strip():
            self.add_error("text", "Paste contracts or choose a file.")
        return cleaned
