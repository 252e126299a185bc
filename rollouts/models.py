"""Change control: approval policies per environment, change requests and their approvals.

A change request holds a proposed targeting state for one flag in one environment, as a
replacement of the state at `base_version`. Approvals are bound to the `diff_hash` of what
they approved: editing the request changes the hash and so discards them.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from flags.models import Environment, Flag, Project


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
    Status = ChangeRequestStatus
    OPEN = (ChangeRequestStatus.PENDING, ChangeRequestStatus.APPROVED, ChangeRequestStatus.SCHEDULED)

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="change_requests")
    flag = models.ForeignKey(Flag, on_delete=models.CASCADE, related_name="change_requests")
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="change_requests")
    base_version = models.PositiveIntegerField()
    base_state = models.JSONField()
    proposed = models.JSONField()
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
        ]

    def __str__(self) -> str:
        return f"CR-{self.pk} {self.flag_id}@{self.environment_id}"


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
