"""The one env-driven settings module, loaded in fresh interpreters."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.servers import ROOT


def _load_settings(env: dict[str, str], expression: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG", "DATABASE_URL", "CELERY_BROKER_URL"}}
    clean.update(env)
    code = f"import featureops_site.settings as s; print({expression})"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True, text=True,
                          timeout=60, check=False)


def test_settings__no_secret_key_without_debug__refuse_to_start() -> None:
    result = _load_settings({"DEBUG": "0"}, "s.SECRET_KEY")
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_settings__debug_without_secret_key__start_with_development_key() -> None:
    result = _load_settings({"DEBUG": "1"}, "s.SECRET_KEY")
    assert result.returncode == 0, result.stderr
    assert "insecure" in result.stdout


def test_settings__defaults__sqlite_and_filesystem_broker() -> None:
    result = _load_settings({"DEBUG": "1"}, "s.DATABASES['default']['ENGINE'], s.CELERY_BROKER_URL")
    assert result.returncode == 0, result.stderr
    assert "sqlite3" in result.stdout and "filesystem://" in result.stdout


def test_settings__urls_from_environment__postgresql_and_redis() -> None:
    result = _load_settings(
        {"SECRET_KEY": "x" * 50, "DATABASE_URL": "postgres://u@db.internal:5432/fo",
         "CELERY_BROKER_URL": "redis://cache:6379/1", "ALLOWED_HOSTS": "console.example.com"},
        "s.DATABASES['default']['ENGINE'], s.DATABASES['default']['HOST'], s.CELERY_BROKER_URL, s.ALLOWED_HOSTS, s.DEBUG",
    )
    assert result.returncode == 0, result.stderr
    assert "django.db.backends.postgresql" in result.stdout and "db.internal" in result.stdout
    assert "redis://cache:6379/1" in result.stdout and "console.example.com" in result.stdout
    assert result.stdout.strip().endswith("False")
