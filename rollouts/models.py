"""Change control: approval policies per environment, change requests and their approvals.

A change request holds a proposed targeting state for one flag in one environment, as a
replacement of the state at `base_version`. Approvals are bound to the `diff_hash` of what
they approved: editing the request changes the hash and so discards them.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from flags.models import Environment, Flag, Project, Segment


class ApprovalPolicy(models.Model):
    environment = models.OneToOneField(Environment, on_delete=models.CASCADE, related_name="approval_policy")
    approvals_for_escalation = models.PositiveSmallIntegerField(default=2)
    approvals_otherwise = models.PositiveSmallIntegerField(default=1)
    expire_after_days = models.PositiveSmallIntegerField(default=7)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(approvals_for_escalation__gte=1) & Q(approvals_otherwise__gte=1),
                                   name="approval_policy_needs_an_approval"),
            models.CheckConstraint(condition=Q(expire_after_days__gte=1), name="approval_policy_expiry_positive"),
        ]

    def __str__(self) -> str:
        return f"approval policy of {self.environment}"

    def required_approvals(self, *, escalation: bool) -> int:
        """The one rule for how many approvals a risky change needs under this policy: a risk
        escalation needs `approvals_for_escalation`, any other risky change `approvals_otherwise`."""
        return self.approvals_for_escalation if escalation else self.approvals_otherwise


class ChangeRequestStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    SCHEDULED = "scheduled", "Scheduled"
    APPLIED = "applied", "Applied"
    CANCELLED = "cancelled", "Cancelled"
    CONFLICTED = "conflicted", "Conflicted"
    EXPIRED = "expired", "Expired"


class ChangeRequest(models.Model):
    """`kind` targeting: one environment's targeting, replaced whole (`base_state` →
    `proposed`). `kind` flag: flag-wide parts that reach every environment at once (variation
    values, the fallback, the JSON Schema); `environment` is empty and the states hold only
    the parts that change. `kind` segment: a segment's content (`segment`, no flag), which
    reaches every governed environment whose rules use it.

    What is approved is the *served state* the change produces in each governed environment
    it reaches (`served_hashes`, pair key "flag_id:environment_id" → hash, and the states
    themselves in `served_states`): apply recomputes them under locks and refuses as
    conflicted when anything (a segment, a value, the fallback) moved in between."""

    class Kind(models.TextChoices):
        TARGETING = "targeting", "Targeting in one environment"
        FLAG = "flag", "Flag-wide (values, fallback, schema)"
        SEGMENT = "segment", "A segment used in governed environments"

    Status = ChangeRequestStatus
    OPEN = (ChangeRequestStatus.PENDING, ChangeRequestStatus.APPROVED, ChangeRequestStatus.SCHEDULED)

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="change_requests")
    flag = models.ForeignKey(Flag, null=True, blank=True, on_delete=models.CASCADE, related_name="change_requests")
    segment = models.ForeignKey(Segment, null=True, blank=True, on_delete=models.CASCADE,
                                related_name="change_requests")
    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.TARGETING)
    environment = models.ForeignKey(Environment, null=True, blank=True, on_delete=models.CASCADE,
                                    related_name="change_requests")
    base_version = models.PositiveIntegerField()
    base_state = models.JSONField()
    proposed = models.JSONField()
    # Requests made before served-state binding kept every variation's value and rank here;
    # new ones leave it empty: `served_hashes` binds what they serve (values and ranks included).
    variations_at_request = models.JSONField(default=dict, blank=True)
    served_hashes = models.JSONField(default=dict, blank=True)
    served_states = models.JSONField(default=dict, blank=True)
    diff_hash = models.CharField(max_length=64)
    reasons = models.JSONField(default=list)
    escalation = models.BooleanField(default=False)
    required_approvals = models.PositiveSmallIntegerField()
    requester = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    requester_label = models.CharField(max_length=200)
    reason = models.TextField()
    status = models.CharField(max_length=16, choices=ChangeRequestStatus.choices, default=ChangeRequestStatus.PENDING)
    scheduled_for = models.DateTimeField(null=True, blank=True)
    conflict = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    applied_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["project", "status"], name="change_request_open")]
        constraints = [
            models.CheckConstraint(condition=Q(required_approvals__gte=1), name="change_request_needs_approval"),
            models.CheckConstraint(condition=Q(status__in=ChangeRequestStatus.values),
                                   name="change_request_status_known"),
            models.CheckConstraint(condition=~Q(status="scheduled") | Q(scheduled_for__isnull=False),
                                   name="change_request_scheduled_has_time"),
            models.CheckConstraint(condition=~Q(kind="targeting") | Q(environment__isnull=False),
                                   name="change_request_targeting_has_environment"),
            models.CheckConstraint(
                condition=(Q(kind="segment", segment__isnull=False, flag__isnull=True)
                           | (~Q(kind="segment") & Q(flag__isnull=False, segment__isnull=True))),
                name="change_request_subject_matches_kind"),
        ]

    def __str__(self) -> str:
        return f"CR-{self.pk} {self.subject}@{self.environment_id or 'all environments'}"

    @property
    def subject(self) -> str:
        """What the request changes, for people: a flag key, or "segment <key>"."""
        return f"segment {self.segment.key}" if self.segment_id else self.flag.key

    @property
    def where(self) -> str:
        """Where the change lands, for people: an environment's name, or every environment."""
        if self.environment_id:
            return self.environment.name
        return "every governed environment using it" if self.segment_id else "every environment"


class Approval(models.Model):
    class Decision(models.TextChoices):
        APPROVE = "approve", "Approved"
        REJECT = "reject", "Rejected"

    change_request = models.ForeignKey(ChangeRequest, on_delete=models.CASCADE, related_name="approvals")
    approver = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    decision = models.CharField(max_length=8, choices=Decision.choices)
    comment = models.TextField(blank=True)
    diff_hash = models.CharField(max_length=64, help_text="What was approved: an edit changes the hash.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["change_request", "approver", "diff_hash"], name="one_decision_per_version"),
        ]

    def __str__(self) -> str:
        return f"{self.decision} of CR-{self.change_request_id}"


class ChangeRequestComment(models.Model):
    change_request = models.ForeignKey(ChangeRequest, on_delete=models.CASCADE, related_name="comments")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    author_label = models.CharField(max_length=200)
    body = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"comment on CR-{self.change_request_id}"


class Incident(models.Model):
    """Incident mode: every flag of an environment (or of chosen behavior surfaces) sent to its
    fallback in one action. `affected` remembers which flags it turned off, and at which
    version, so lifting turns back on exactly those nobody has touched since."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="incidents")
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="incidents")
    surfaces = models.JSONField(default=list, blank=True, help_text="Behavior surfaces; empty means every flag.")
    reason = models.TextField()
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    started_by_label = models.CharField(max_length=200)
    started_at = models.DateTimeField(auto_now_add=True)
    affected = models.JSONField(default=list, blank=True)
    lifted_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="+")
    lifted_at = models.DateTimeField(null=True, blank=True)
    lift_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["environment"], condition=Q(lifted_at__isnull=True),
                                    name="one_active_incident_per_environment"),
        ]

    def __str__(self) -> str:
        return f"incident {self.pk} in {self.environment_id}"

    @property
    def active(self) -> bool:
        return self.lifted_at is None


class FollowUp(models.Model):
    """A review item opened by every move to the fallback (kill switch, incident mode): it
    stays open until someone acknowledges what happened and what comes next."""

    class Kind(models.TextChoices):
        KILLSWITCH = "killswitch", "Kill switch"
        INCIDENT = "incident", "Incident mode"
        ROLLBACK = "rollback", "Roll-back by an operator"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="follow_ups")
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="follow_ups")
    flag = models.ForeignKey(Flag, null=True, blank=True, on_delete=models.CASCADE, related_name="follow_ups")
    incident = models.ForeignKey(Incident, null=True, blank=True, on_delete=models.CASCADE, related_name="follow_ups")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    title = models.CharField(max_length=300)
    reason = models.TextField()
    opened_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    opened_by_label = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    acknowledged_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                        related_name="+")
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["project", "acknowledged_at"], name="follow_up_open")]

    def __str__(self) -> str:
        return self.title


# --- rollout plans: staged exposure of a candidate variation, with guardrails --------------


class RolloutPlanStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    ROLLED_BACK = "rolled_back", "Rolled back"
    COMPLETED = "completed", "Completed"
    DISCARDED = "discarded", "Discarded"


class RolloutPlan(models.Model):
    """One flag in one environment, moved from its baseline to a candidate variation through
    ordered stages. `stage_index` is -1 until the first stage is entered. Traffic changes only
    through `change_control.submitting.targeting_change_submit`; a stage waiting for approval is
    `pending_change_request`."""

    class OnBreach(models.TextChoices):
        PAUSE = "pause", "Pause the plan"
        ROLLBACK = "rollback", "Roll back to the baseline"
        STEP_BACK = "step_back", "Step back: return to the last good stage (the baseline from the first stage)"

    Status = RolloutPlanStatus
    OPEN = (RolloutPlanStatus.DRAFT, RolloutPlanStatus.RUNNING, RolloutPlanStatus.PAUSED)

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="rollout_plans")
    flag = models.ForeignKey(Flag, on_delete=models.CASCADE, related_name="rollout_plans")
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="rollout_plans")
    baseline = models.CharField(max_length=100, help_text="Variation key everyone returns to on a roll-back.")
    candidate = models.CharField(max_length=100, help_text="Variation key the plan exposes stage by stage.")
    assignment_unit = models.CharField(max_length=100)
    status = models.CharField(max_length=16, choices=RolloutPlanStatus.choices, default=RolloutPlanStatus.DRAFT)
    stage_index = models.SmallIntegerField(default=-1)
    stage_entered_at = models.DateTimeField(null=True, blank=True)
    on_breach = models.CharField(max_length=16, choices=OnBreach.choices, default=OnBreach.STEP_BACK)
    needs_attention = models.BooleanField(default=False)
    pending_change_request = models.ForeignKey(ChangeRequest, null=True, blank=True, on_delete=models.SET_NULL,
                                               related_name="+")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["flag", "environment"],
                                    condition=Q(status__in=["draft", "running", "paused"]),
                                    name="one_open_rollout_plan_per_flag_environment"),
            models.CheckConstraint(condition=Q(status__in=RolloutPlanStatus.values), name="rollout_plan_status_known"),
            models.CheckConstraint(condition=~Q(baseline=models.F("candidate")),
                                   name="rollout_plan_candidate_differs"),
            models.CheckConstraint(condition=Q(stage_index__gte=-1), name="rollout_plan_stage_index_valid"),
        ]

    def __str__(self) -> str:
        return f"plan {self.pk}: {self.flag_id}@{self.environment_id} {self.baseline} → {self.candidate}"


class RolloutStage(models.Model):
    """An audience (segments, plus a percentage of everyone else in thousandths of a percent),
    a minimum bake time, guardrails `[{metric, kind, threshold, min_samples}]`, and whether
    entering it needs approval whatever the environment's policy says."""

    plan = models.ForeignKey(RolloutPlan, on_delete=models.CASCADE, related_name="stages")
    order = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=100)
    segments = models.JSONField(default=list, blank=True)
    percentage = models.PositiveIntegerField(default=0)
    min_bake_minutes = models.PositiveIntegerField(default=0)
    needs_approval = models.BooleanField(default=False)
    guardrails = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["plan", "order"]
        constraints = [
            models.UniqueConstraint(fields=["plan", "order"], name="one_rollout_stage_per_order"),
            models.CheckConstraint(condition=Q(percentage__lte=100000), name="rollout_stage_percentage_range"),
        ]

    def __str__(self) -> str:
        return f"stage {self.order} ({self.name}) of plan {self.plan_id}"


class ReleaseDecision(models.Model):
    """Who decided what about a plan, when, why, and the evidence at that moment. Written
    once by the plan services and never updated."""

    class Action(models.TextChoices):
        START = "start", "Start"
        ADVANCE = "advance", "Advance"
        PAUSE = "pause", "Pause"
        RESUME = "resume", "Resume"
        ROLLBACK = "rollback", "Roll back"
        PROMOTE = "promote", "Promote"
        INVESTIGATE = "investigate", "Investigate"
        BREACH = "breach", "Guardrail breach"
        RESOLVE = "resolve", "Investigation closed"
        DISCARD = "discard", "Discard"
        STEP_BACK = "step_back", "Step back"

    plan = models.ForeignKey(RolloutPlan, on_delete=models.CASCADE, related_name="decisions")
    action = models.CharField(max_length=12, choices=Action.choices)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+")
    actor_label = models.CharField(max_length=200)
    reason = models.TextField(blank=True)
    from_stage = models.SmallIntegerField()
    to_stage = models.SmallIntegerField()
    evidence = models.JSONField(default=dict, blank=True)
    change_request = models.ForeignKey(ChangeRequest, null=True, blank=True, on_delete=models.SET_NULL,
                                       related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.action} of plan {self.plan_id}"
