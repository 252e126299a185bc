"""Change control, split by what each module holds: the approval policy, permissions,
submitting changes, approving, applying (and scheduling, cancelling, expiring), the kill
switch, incident mode, follow-ups; what requests bind, the words and notices they carry, and
the observers that hear of what happened (settings.CHANGE_CONTROL_OBSERVERS). Models live
in rollouts/models.py.
"""
