from __future__ import annotations

from collections.abc import Iterator

import pytest

from featureops_site.celery import app as celery_app


@pytest.fixture
def eager_celery() -> Iterator[None]:
    """Tasks sent with .delay() run inline, errors raised; the previous configuration comes back after."""
    previous = celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates
    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = True
    yield
    celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates = previous
