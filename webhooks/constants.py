"""Delivery states and the event families a webhook can subscribe to."""

from __future__ import annotations

from django.db import models


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


# What a webhook may subscribe to: event-name prefixes. An empty subscription means all.
EVENT_PREFIXES: list[tuple[str, str]] = [
    ("flag.", "Flag created, edited or moved between lifecycle stages"),
    ("variation.", "Variation created, edited or deleted"),
    ("targeting.", "Targeting changed in an environment"),
    ("segment.", "Segment created, edited or deleted"),
    ("change_request.", "Change requests: opened, approved, rejected, applied…"),
    ("killswitch.", "Kill switch flipped"),
    ("incident.", "Incident mode started or lifted"),
    ("reminder.", "Review, cleanup and approval reminders"),
    ("audit.", "Audit checkpoints: the signed head of the audit chain, hourly"),
]
EVENT_PREFIX_VALUES = frozenset(prefix for prefix, _ in EVENT_PREFIXES)

# Sent by the console's "Send test event" button, to one webhook, whatever it subscribes to.
TEST_EVENT = "webhook.test"

SECRET_BYTES = 32
