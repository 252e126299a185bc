"""The Celery queues, and which task goes to which: one place, read by settings (task routes),
scripts/run.sh (which worker consumes what), the health checks and the metrics.

Each queue has its own worker(s), so a backlog on one never delays another: 5,000 webhook
deliveries to a slow receiver wait on `notifications` while scheduled applies and guardrail
checks keep their time on `safety`.

A deployment may prefix every queue name (CELERY_QUEUE_PREFIX, e.g. "staging."), so two
deployments (or two tests) can share one broker without taking each other's tasks."""

from __future__ import annotations

# queue -> the tasks routed to it (by registered task name)
QUEUES: dict[str, tuple[str, ...]] = {
    # What keeps production safe and on time: scheduled applies, guardrail sweeps, expiry.
    "safety": (
        "rollouts.tasks.apply_scheduled_changes",
        "rollouts.tasks.check_guardrails",
        "rollouts.tasks.expire_undecided_changes",
    ),
    # Folding raw events into aggregates, and pruning the raw events.
    "telemetry": (
        "telemetry.tasks.aggregate_events",
        "telemetry.tasks.prune_raw_events",
    ),
    # Anything that talks to the outside and may be slow: emails and webhook deliveries.
    "notifications": (
        "notifications.tasks.send_notification_emails",
        "notifications.tasks.send_pending_notification_emails",
        "webhooks.tasks.deliver_webhook",
        "webhooks.tasks.retry_due_webhooks",
    ),
    # Reminders and housekeeping: lifecycle stages, review reminders, audit checkpoints, API tokens' last use.
    "reminders": (
        "reminders.tasks.send_reminders",
        "reminders.tasks.deliver_reminders",
        "flags.tasks.recompute_lifecycle_stages",
        "flags.tasks.record_token_use",
        "audit.tasks.publish_checkpoint",
    ),
}


def queue_name(queue: str, prefix: str = "") -> str:
    if queue not in QUEUES:
        raise KeyError(f"no queue named {queue!r}; the queues are {', '.join(QUEUES)}")
    return f"{prefix}{queue}"


def task_routes(prefix: str = "") -> dict[str, dict[str, str]]:
    """Celery's task_routes: every task of ours to its queue's (prefixed) name."""
    return {task: {"queue": queue_name(queue, prefix)} for queue, tasks in QUEUES.items() for task in tasks}


def queue_of(task_name: str) -> str | None:
    """The (unprefixed) queue a task is routed to, or None for a task of no queue here."""
    for queue, tasks in QUEUES.items():
        if task_name in tasks:
            return queue
    return None
