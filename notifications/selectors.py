from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser

from notifications.models import Notification


def unread_count(user: AbstractBaseUser | AnonymousUser) -> int:
    if not user.is_authenticated:
        return 0
    return Notification.objects.filter(recipient=user, read_at__isnull=True).count()


def inbox(user: AbstractBaseUser | AnonymousUser, limit: int = 100) -> list[Notification]:
    """The user's newest notifications first, read or not."""
    if not user.is_authenticated:
        return []
    return list(Notification.objects.filter(recipient=user).order_by("-id")[:limit])
