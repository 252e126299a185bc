"""Forms of the change-control console. They parse and check shape; the services decide."""

from __future__ import annotations

import datetime
from typing import Any

from django import forms
from django.utils import timezone

from flags.constants import BehaviorSurface
from flags.forms import FlagEditForm, LimitedTextField, TargetingForm, VariationForm
from flags.models import Environment
from rollouts.change_control import approving
from rollouts.flags_as_code.document import MAX_IMPORT_CHARS
from rollouts.plans.guardrails import threshold_problem


class ProposeForm(TargetingForm):
    """The targeting form, plus the reason that travels with the change request."""

    reason = LimitedTextField(
        limit="reason", help_text="Why this change, and why now. Approvers read it; the audit trail keeps it.",
    )


REASON_REQUIRED = "Say why: a reason is required, and it stays in the audit trail."


def _reason_field(limit: str, help_text: str) -> LimitedTextField:
    """A required reason whose message is the same in the browser (js/console.js shows it
    before any confirmation dialog) and from the server."""
    return LimitedTextField(limit=limit, help_text=help_text, error_messages={"required": REASON_REQUIRED},
                            widget=forms.Textarea(attrs={"rows": 2, "data-required-message": REASON_REQUIRED}))


class ReasonForm(forms.Form):
    reason = _reason_field("reason", "Required: it goes to the audit trail, the owner and the approvers.")


class PlanReasonForm(forms.Form):
    """A rollout plan's decision: its reason also opens the stage's change request, after the
    plan's own words, hence its smaller limit."""

    reason = _reason_field("plan_reason", "Required: it goes to the plan's decision log and the audit trail.")


class DecisionForm(forms.Form):
    """Approve or reject. Approving may go without a comment; rejecting needs one, the reason
    (`rejecting=True` makes it required, with a message beside the field)."""

    comment = LimitedTextField(limit="comment", required=False, label="Comment (optional)",
                               help_text="Optional to approve. To reject, say why: the requester reads it.")

    def __init__(self, *args: Any, rejecting: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rejecting = rejecting

    def clean_comment(self) -> str:
        comment = (self.cleaned_data.get("comment") or "").strip()
        if self.rejecting and not comment:
            raise forms.ValidationError(approving.REJECT_NEEDS_REASON, code="required")
        return comment


class CommentForm(forms.Form):
    body = LimitedTextField(limit="comment", rows=3, label="Comment")


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
    note = LimitedTextField(limit="note", label="What was found, what happens next")


class IncidentForm(forms.Form):
    environment = forms.ModelChoiceField(queryset=Environment.objects.none(), to_field_name="key",
                                         empty_label=None)
    surfaces = forms.MultipleChoiceField(
        choices=BehaviorSurface.choices, required=False, widget=forms.CheckboxSelectMultiple,
        label="Behavior surfaces", help_text="Leave all unticked to send every flag of the environment to its fallback.",
    )
    reason = _reason_field("reason", "Required: it goes to the audit trail, the owners and the approvers.")

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

    reason = LimitedTextField(limit="reason", required=False,
                              help_text="Needed when the value changes: approvers read it.")


class GovernedFlagEditForm(FlagEditForm):
    reason = LimitedTextField(limit="reason", required=False,
                              help_text="Needed when the fallback or the JSON Schema changes: approvers read it.")


class ContractImportForm(forms.Form):
    """Contracts pasted or uploaded, and the reason every change carries. `fingerprint` names
    the diff a preview showed: the Apply post carries it back."""

    text = forms.CharField(required=False, label="Contracts (YAML)",
                           widget=forms.Textarea(attrs={"rows": 16, "class": "mono", "spellcheck": "false"}),
                           help_text="One ai_featureops_contract, or a YAML list of them, as the export writes.")
    upload = forms.FileField(required=False, label="Or upload a file",
                             help_text="A .yaml file; it replaces what is pasted above.")
    reason = LimitedTextField(limit="reason",
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


# --- rollout plans ----------------------------------------------------------------------------


class PlanForm(forms.Form):
    """The plan as a whole: environment, variations, what a breach does, and why."""

    environment = forms.ChoiceField(help_text="One plan per flag and environment at a time.")
    baseline = forms.ChoiceField(help_text="What everyone gets back on a roll-back (usually the fallback).")
    candidate = forms.ChoiceField(help_text="The variation the plan exposes stage by stage.")
    assignment_unit = forms.CharField(
        max_length=100, required=False, label="Assignment unit",
        help_text="The context attribute percentages bucket on (accountId, userId…). Blank: the environment's.")
    on_breach = forms.ChoiceField(label="When a guardrail is breached", widget=forms.RadioSelect,
                                  choices=(("step_back", "Step back: the previous stage's traffic at once, then "
                                                         "pause (from the first stage, the baseline)"),
                                           ("rollback", "Roll back: everyone to the baseline at once"),
                                           ("pause", "Pause the plan (traffic stays as it is)")),
                                  initial="step_back")
    reason = LimitedTextField(limit="plan_reason",
                              help_text="Why this rollout: the decision log and the audit trail keep it.")

    def __init__(self, *args: Any, environments: list[Environment], variations: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["environment"].choices = [(e.key, e.name + (" (governed)" if e.is_governed else ""))
                                              for e in environments]
        choices = [(key, key) for key in variations]
        self.fields["baseline"].choices = choices
        self.fields["candidate"].choices = choices


class FiniteDecimalField(forms.DecimalField):
    """Refuses NaN and infinities (including 'sNaN', which Django's own comparison trips on)."""

    def to_python(self, value: Any) -> Any:
        number = super().to_python(value)
        if number is not None and not number.is_finite():
            raise forms.ValidationError("Enter a number.", code="invalid")
        return number


class StageForm(forms.Form):
    name = forms.CharField(max_length=100)
    segments = forms.MultipleChoiceField(required=False, widget=forms.CheckboxSelectMultiple,
                                         help_text="Segments that get the candidate (earlier stages' stay).")
    percentage = FiniteDecimalField(label="% of everyone else", min_value=0, max_value=100, decimal_places=3,
                                    initial=0, widget=forms.NumberInput(attrs={"step": "0.001"}))
    min_bake_minutes = forms.IntegerField(label="Bake (minutes)", min_value=0, max_value=60 * 24 * 90, initial=60)
    needs_approval = forms.BooleanField(required=False, label="Entering it needs approval")

    def __init__(self, *args: Any, segments: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["segments"].choices = [(key, key) for key in segments]

    def stage(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {"name": data["name"], "segments": list(data["segments"]),
                "percentage": int(round(data["percentage"] * 1000)), "min_bake_minutes": data["min_bake_minutes"],
                "needs_approval": data["needs_approval"]}


class GuardrailForm(forms.Form):
    metric = forms.ChoiceField()
    kind = forms.ChoiceField(initial="relative_max", choices=(("relative_max", "at most × baseline"), ("relative_min", "at least × baseline"),
                                      ("absolute_max", "at most (absolute)"), ("absolute_min", "at least (absolute)")))
    threshold = forms.FloatField(min_value=-1e9, max_value=1e9, help_text="1.2 with “at most × baseline” allows 20 % worse than the baseline.")
    min_samples = forms.IntegerField(label="Min. samples", min_value=1, max_value=10_000_000, initial=50)

    def __init__(self, *args: Any, metrics: list[tuple[str, str]], metric_kinds: dict[str, str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["metric"].choices = [("", "— choose a metric —"), *metrics]
        self.metric_kinds = metric_kinds or {}

    def clean(self) -> dict[str, Any]:
        """A threshold that cannot mean anything (a factor ≤ 0, "at least 0" for a rate or a
        count) is refused beside it; plan_create checks the same again."""
        cleaned = super().clean()
        kind, threshold = cleaned.get("kind"), cleaned.get("threshold")
        if kind and threshold is not None:
            problem = threshold_problem(kind, threshold, self.metric_kinds.get(cleaned.get("metric", "")))
            if problem:
                self.add_error("threshold", f"{problem[0].upper()}{problem[1:]}.")
        return cleaned

    def guardrail(self) -> dict[str, Any]:
        return {key: self.cleaned_data[key] for key in ("metric", "kind", "threshold", "min_samples")}


StageFormSet = forms.formset_factory(StageForm, extra=1, max_num=20, absolute_max=20)
GuardrailFormSet = forms.formset_factory(GuardrailForm, extra=1, max_num=10, absolute_max=10)
