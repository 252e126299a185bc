"""FeatureOps Console settings: one module, driven by environment variables.

Embedded defaults (SQLite, a filesystem Celery broker, the console email backend) let
`make run` work on a bare machine; production and CI set DATABASE_URL (PostgreSQL) and
CELERY_BROKER_URL (Redis). There is no production-only code path.
"""

from __future__ import annotations

import ipaddress
import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from featureops_site.queues import task_routes

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("FEATUREOPS_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from exc


def env_networks(name: str, default: str = "") -> list[str]:
    """Comma-separated networks (CIDR; host bits allowed), each written back in its canonical form."""
    try:
        return [str(ipaddress.ip_network(network, strict=False)) for network in env_list(name, default)]
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}: {exc}") from exc


DEBUG = env_bool("DEBUG")

# A required secret has no default outside DEBUG: a random fallback would differ per
# process and silently break sessions and signatures.
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = "insecure-development-key-only-used-with-DEBUG"  # noqa: S105

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "csp",  # django-csp: its checks flag settings in the pre-4.0 form
    "django_htmx",
    "guardian",
    "audit",
    "flags",
    "rollouts",
    "reminders",
    "notifications",
    "webhooks",
    "telemetry",
    "ninja",  # django-ninja: the management API's reference page and its static files
    "api",
    "identity",  # single sign-on (OpenID Connect): accounts and project roles from the identity provider
    "featureops_site",  # the site's own migrations: the cache table
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files in every mode: from the app folders with DEBUG, else from STATIC_ROOT (collectstatic).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "audit.middleware.AuditContextMiddleware",
]

ROOT_URLCONF = "featureops_site.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        # Fragments are files of their own (templates/base.html says how they are named); Django
        # caches compiled templates by default (its cached loader, with autoreload in DEBUG).
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "flags.context_processors.navigation",
                "notifications.context_processors.unread",
                "rollouts.context_processors.approvals",
            ],
        },
    },
]

WSGI_APPLICATION = "featureops_site.wsgi.application"
ASGI_APPLICATION = "featureops_site.asgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded default is shared by the server and `make run`'s four workers: WAL lets
    # readers read while one writes, IMMEDIATE transactions take the write lock up front (no
    # "database is locked" on a lock upgrade), and a writer waits up to 20 s for its turn.
    DATABASES["default"].setdefault("OPTIONS", {}).update({
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE", "timeout": 20,
    })
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "staticfiles"))
# Serve static files from the app folders without collectstatic (DEBUG does it too): for a
# production-like server started by tests on a fresh checkout (tests/servers.py).
WHITENOISE_USE_FINDERS = DEBUG or env_bool("STATIC_FROM_FINDERS")
# Compressed copies (gzip) beside each collected file. Not the manifest storage: its hashed
# names need collectstatic before any page renders, and pages render with DEBUG off in tests.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# The rule editor posts each clause as fields of its own (flags/rule_builder.py: up to 50 rules of 20
# clauses); Django's default of 1,000 fields would refuse a large but valid rule set with a bare 400.
DATA_UPLOAD_MAX_NUMBER_FIELDS = 10_000

AUTHENTICATION_BACKENDS = [
    # Django's ModelBackend, refusing passwords when LOCAL_PASSWORDS is off (it still answers permissions).
    "featureops_site.auth.LocalPasswordBackend",
    "identity.backends.OidcBackend",  # single sign-on: the authorization code callback only
    "guardian.backends.ObjectPermissionBackend",
]
ANONYMOUS_USER_NAME = None  # no guardian anonymous user row: anonymous visitors have no roles

# Failed sign-ins (audit/throttle.py). Per account *and* client address: after
# LOGIN_FAILURES_PER_ACCOUNT failures, each further try from that address waits
# LOGIN_DELAY_BASE_SECONDS after the last failure, doubling with each failure up to
# LOGIN_DELAY_MAX_SECONDS; the pair is forgotten LOGIN_THROTTLE_SECONDS after its wait ends, or
# at a successful sign-in. Failures from one address never delay the account from another.
# Per address: at most LOGIN_FAILURES_PER_ADDRESS failures in LOGIN_THROTTLE_SECONDS, any account.
LOGIN_FAILURES_PER_ACCOUNT = env_int("LOGIN_FAILURES_PER_ACCOUNT", 5)
LOGIN_FAILURES_PER_ADDRESS = env_int("LOGIN_FAILURES_PER_ADDRESS", 20)
LOGIN_THROTTLE_SECONDS = env_int("LOGIN_THROTTLE_SECONDS", 15 * 60)
LOGIN_DELAY_BASE_SECONDS = env_int("LOGIN_DELAY_BASE_SECONDS", 1)
LOGIN_DELAY_MAX_SECONDS = env_int("LOGIN_DELAY_MAX_SECONDS", 15 * 60)
# Reverse proxies in front of the app that each append the address they saw to X-Forwarded-For:
# the client is that many entries from its end (0: REMOTE_ADDR is the client). Behind a proxy,
# unset, every client would share the proxy's address, and its sign-in limits with it.
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0)

# The cache holds the sign-in throttling state, so every process must see the same one: Redis
# with CACHE_URL=redis://…, else a table in the database (made by migrate: featureops_site/migrations).
_cache_url = os.environ.get("CACHE_URL", "")
if _cache_url and not _cache_url.startswith(("redis://", "rediss://")):
    raise ImproperlyConfigured(f"CACHE_URL must be a redis:// or rediss:// URL, got {_cache_url!r}")
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": _cache_url}
    if _cache_url
    # Room for the throttling state of many addresses: past MAX_ENTRIES the cache evicts entries,
    # which would let an attacker flush their own counters with junk.
    else {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "featureops_cache",
          "OPTIONS": {"MAX_ENTRIES": 100_000}}
}

# Single sign-on with OpenID Connect (identity/, docs/architecture.md "Single sign-on"; mozilla-django-oidc).
# On when OIDC_ISSUER is set: the endpoints are read from <issuer>/.well-known/openid-configuration at
# the first sign-in (and again every OIDC_DISCOVERY_SECONDS). Authorization code flow with PKCE (S256)
# and a nonce; the ID token's signature (the issuer's JWKS), issuer, audience and expiry are checked.
OIDC_ISSUER = os.environ.get("OIDC_ISSUER", "").strip().rstrip("/")
OIDC_RP_CLIENT_ID = os.environ.get("OIDC_CLIENT_ID", "").strip()
OIDC_RP_CLIENT_SECRET = os.environ.get("OIDC_CLIENT_SECRET", "")
if OIDC_ISSUER and not (OIDC_RP_CLIENT_ID and OIDC_RP_CLIENT_SECRET):
    raise ImproperlyConfigured("OIDC_ISSUER is set: OIDC_CLIENT_ID and OIDC_CLIENT_SECRET must be set too.")
OIDC_RP_SCOPES = os.environ.get("OIDC_SCOPES", "openid email profile groups")
if OIDC_ISSUER and "openid" not in OIDC_RP_SCOPES.split():
    raise ImproperlyConfigured("OIDC_SCOPES must include openid.")
# The claim holding the person's groups (a list of names), from the ID token or userinfo.
OIDC_GROUPS_CLAIM = os.environ.get("OIDC_GROUPS_CLAIM", "groups").strip()
# What the sign-in button says: "Sign in with <name>".
OIDC_PROVIDER_NAME = os.environ.get("OIDC_PROVIDER_NAME", "your company account").strip()
OIDC_RP_SIGN_ALGO = os.environ.get("OIDC_SIGN_ALGORITHM", "RS256").strip()
OIDC_DISCOVERY_SECONDS = env_int("OIDC_DISCOVERY_SECONDS", 3600)
OIDC_CLOCK_SKEW_SECONDS = env_int("OIDC_CLOCK_SKEW_SECONDS", 30)  # leeway on the ID token's exp and iat
OIDC_TIMEOUT = env_int("OIDC_TIMEOUT_SECONDS", 10)  # each call to the provider (mozilla-django-oidc's setting)
OIDC_USE_PKCE = True
OIDC_USE_NONCE = True
OIDC_STORE_ID_TOKEN = True  # the id_token_hint of RP-initiated logout
OIDC_AUTHENTICATION_CALLBACK_URL = "identity:oidc_callback"
# Local passwords (the login form, the admin's login): the demo's accounts and an admins' break-glass.
# LOCAL_PASSWORDS=0 removes the form and refuses (403) any password sign-in, the admin's included.
LOCAL_PASSWORDS = env_bool("LOCAL_PASSWORDS", True)

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "flags:project_list"
LOGOUT_REDIRECT_URL = "login"

SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
# HTTPS (README, "Production environment"): off unless set, because they only work once TLS is in
# front of the console. SECURE_PROXY_SSL_HEADER names the header a TLS-terminating proxy sets to
# "https" (e.g. X-Forwarded-Proto); set it only behind a proxy that overwrites the client's copy.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT")
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS")
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD")
_proxy_ssl_header = os.environ.get("SECURE_PROXY_SSL_HEADER", "").strip()
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + _proxy_ssl_header.upper().replace("-", "_"), "https") if _proxy_ssl_header else None
)
# Content-Security-Policy (django-csp) on every response. Scripts come from our static files
# only: no inline <script>, no on…= handler, no javascript: URL, no eval (htmx runs with
# allowEval off, base.html), so text that reaches a page can never run as code. Styles allow
# 'unsafe-inline' for the templates' many style attributes (and the admin's one <style>): a
# style runs no script, and injecting one would need markup that autoescape already stops.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}

# Email: the console backend by default; EMAIL_BACKEND=file writes to var/mail.
_email_backend = os.environ.get("EMAIL_BACKEND", "console")
EMAIL_BACKEND = {
    "console": "django.core.mail.backends.console.EmailBackend",
    "file": "django.core.mail.backends.filebased.EmailBackend",
    "smtp": "django.core.mail.backends.smtp.EmailBackend",
    "locmem": "django.core.mail.backends.locmem.EmailBackend",
}.get(_email_backend, _email_backend)
EMAIL_FILE_PATH = os.environ.get("EMAIL_FILE_PATH", str(VAR_DIR / "mail"))
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "featureops@localhost")
# Where people reach the console: emails link to CONSOLE_BASE_URL + a console path.
CONSOLE_BASE_URL = os.environ.get("CONSOLE_BASE_URL", "http://127.0.0.1:8000")

# Celery: Redis in production and CI; kombu's filesystem transport by default, so that
# `make run` really runs scheduled jobs with no broker server. filesystem:// and redis:// go
# through a transport of featureops_site/broker.py (kombu's, with the broker faults that killed
# workers made survivable); an explicit transport wins over the URL's scheme in kombu's Connection.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    # Messages written aside and renamed into place, claimed by rename: no consumer ever reads
    # a half-written message (kombu's own transport can, and the worker dies of it).
    CELERY_BROKER_TRANSPORT = "featureops_site.broker:FilesystemTransport"
    _queue_dir = Path(os.environ.get("CELERY_FILESYSTEM_DIR", VAR_DIR / "celery-broker"))
    # kombu's filesystem transport expects its folders to exist; `corrupt` holds any message
    # file that cannot be decoded (set aside with an error in the log, never delivered).
    for _folder in ("queue", "processed", "control", "corrupt"):
        (_queue_dir / _folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir / "queue"),
        "data_folder_out": str(_queue_dir / "queue"),
        "processed_folder": str(_queue_dir / "processed"),
        "control_folder": str(_queue_dir / "control"),
        "corrupt_folder": str(_queue_dir / "corrupt"),
        "store_processed": False,
        # An idle worker looks for messages five times a second (kombu's default: once), and a
        # worker with all its processes busy waits as long before looking again.
        "polling_interval": 0.2,
    }
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    if CELERY_BROKER_URL.startswith("redis://"):
        # kombu's, guarded against what Redis restarts did with acks_late: the worker exited
        # (an AttributeError when the connection dropped with a task unacknowledged), and a
        # message Redis was handing over as it died was dropped. (Not for rediss://: kombu
        # turns TLS on by default only for its own "rediss" transport name.)
        CELERY_BROKER_TRANSPORT = "featureops_site.broker:RedisTransport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # A message a worker took but never acknowledged (it died, or lost its connection
        # mid-task: the ack then fails) is delivered again after this many seconds. It must
        # exceed the longest time from a task's delivery to its end, or a task still running
        # is delivered twice. kombu's default, written down (a test of broker faults shortens it
        # for its worker, to see those messages come back).
        "visibility_timeout": env_int("CELERY_BROKER_VISIBILITY_TIMEOUT", 3600),
        # Bounded waits on a Redis that stops answering without closing the connection
        # (a network partition, a frozen host); the ping checks a connection idle this long
        # before reusing it. No retry_on_timeout: replaying a timed-out LPUSH can publish
        # twice, and Celery's publish retries (below) cover a broker that went away.
        "socket_timeout": 30,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "health_check_interval": 25,
    }
# Never give up on the broker: reconnect forever (Celery's default stops after 100 tries,
# and the worker exits), while a supervisor restarts what dies anyway.
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
# A broker's channel error (Redis answering "OOM command not allowed" at its memory limit, or
# "MISCONF" when it cannot persist) reconnects and retries like a lost connection, instead of
# stopping the worker.
CELERY_BROKER_CHANNEL_ERROR_RETRY = True
# A task running when the connection drops finishes (its ack then fails and the message comes
# back after the visibility timeout): cancelling it would throw its work away for the same
# redelivery. Written down because Celery 6.0 changes the default (Celery 5 warns of it at
# every reconnect, whatever the setting).
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# Publishing (`.delay()`, on commit) rides out a broker restart of a few seconds (about 6 s of
# retries; Celery's default gives up after 0.6 s) before the caller's fallback (a sweep sends
# what could not be enqueued) takes over; each try blocks the caller, so not forever.
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 6, "interval_start": 0, "interval_step": 0.5, "interval_max": 1.5}
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER")
CELERY_TASK_ACKS_LATE = True
# Every task of ours is routed to one of four queues (featureops_site/queues.py): safety,
# telemetry, notifications, reminders; each has its own worker. CELERY_QUEUE_PREFIX prefixes
# every queue name, so deployments (or tests) sharing a broker never take each other's tasks.
CELERY_QUEUE_PREFIX = os.environ.get("CELERY_QUEUE_PREFIX", "")
CELERY_TASK_ROUTES = task_routes(CELERY_QUEUE_PREFIX)
# Where a task of no queue above would go (none today; tests check that every task is routed).
CELERY_TASK_DEFAULT_QUEUE = f"{CELERY_QUEUE_PREFIX}default"
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# Raw telemetry events are deleted this long after receipt once aggregated (the aggregates,
# which plans and guardrails read, are kept); the beat job below runs every 10 minutes.
TELEMETRY_RAW_RETENTION_HOURS = env_int("TELEMETRY_RAW_RETENTION_HOURS", 48)
if TELEMETRY_RAW_RETENTION_HOURS < 1:
    raise ImproperlyConfigured("TELEMETRY_RAW_RETENTION_HOURS must be at least 1.")

# The one place the beat schedule is declared: entry name, task, period in seconds.
CELERY_BEAT_SCHEDULE = {
    name: {"task": task, "schedule": timedelta(seconds=seconds)}
    for name, task, seconds in [
        ("recompute-lifecycle-stages", "flags.tasks.recompute_lifecycle_stages",
         env_int("LIFECYCLE_RECOMPUTE_SECONDS", 300)),
        ("apply-scheduled-changes", "rollouts.tasks.apply_scheduled_changes",
         env_int("SCHEDULED_CHANGES_SECONDS", 30)),
        ("expire-undecided-changes", "rollouts.tasks.expire_undecided_changes", 3600),
        ("send-pending-notification-emails", "notifications.tasks.send_pending_notification_emails", 60),
        ("retry-due-webhooks", "webhooks.tasks.retry_due_webhooks", 30),
        ("aggregate-telemetry", "telemetry.tasks.aggregate_events", env_int("TELEMETRY_AGGREGATE_SECONDS", 10)),
        ("prune-raw-telemetry", "telemetry.tasks.prune_raw_events", env_int("TELEMETRY_PRUNE_SECONDS", 600)),
        ("check-rollout-guardrails", "rollouts.tasks.check_guardrails",
         env_int("ROLLOUT_GUARDRAIL_CHECK_SECONDS", 60)),
        ("send-reminders", "reminders.tasks.send_reminders", env_int("FEATUREOPS_REMINDER_SWEEP_SECONDS", 3600)),
        ("publish-audit-checkpoint", "audit.tasks.publish_checkpoint", env_int("AUDIT_CHECKPOINT_SECONDS", 3600)),
    ]
}

# Webhooks: each attempt's network timeout (seconds), and how many attempts before a delivery
# fails (retries wait 30 s, 2 min, 8 min… in between).
WEBHOOK_TIMEOUT_SECONDS = float(os.environ.get("WEBHOOK_TIMEOUT_SECONDS") or 5)
WEBHOOK_MAX_ATTEMPTS = env_int("WEBHOOK_MAX_ATTEMPTS", 6)
# Webhooks reach globally routable addresses only; these comma-separated networks (CIDR, e.g.
# "10.20.0.0/16,fd00:1::/64") are allowed as well, for on-premise receivers. Empty by default,
# DEBUG included: a local receiver needs e.g. 127.0.0.1/32 here. Checked at start-up.
WEBHOOK_ALLOWED_NETWORKS = env_networks("WEBHOOK_ALLOWED_NETWORKS")
# Dotted paths called after commit with each new audit row (audit.services.record): webhooks
# hear of flag changes and change-request decisions this way, without audit importing anyone.
AUDIT_COMMIT_OBSERVERS = ["flags.webhook_events.audit_event_committed"]
# What change control announces, and who hears it (rollouts.change_control.observers):
# rollout plans follow closed requests (after the commit) and pause when their flags are
# stopped (inside the stop's transaction), without change control importing plans.
CHANGE_CONTROL_OBSERVERS = {
    "request_closed": ["rollouts.plans.observers.change_request_closed"],
    "flags_stopped": ["rollouts.plans.observers.flags_stopped"],
}
# Audit checkpoints (audit/checkpoints.py): the chain's head, signed with HMAC-SHA256 under this
# key and published outside the database. The key is never stored in the database; like
# SECRET_KEY it has no default outside DEBUG (the beat task then logs and publishes nothing).
AUDIT_CHECKPOINT_KEY = os.environ.get("AUDIT_CHECKPOINT_KEY", "") or (
    "insecure-audit-checkpoint-key-only-used-with-DEBUG" if DEBUG else "")
# One JSON line per checkpoint, appended; `manage.py verify_audit --checkpoints` reads it.
AUDIT_CHECKPOINT_PATH = os.environ.get("AUDIT_CHECKPOINT_PATH", str(VAR_DIR / "audit-checkpoints.jsonl"))
# Where each checkpoint goes (dotted paths called with it, like AUDIT_COMMIT_OBSERVERS).
AUDIT_CHECKPOINT_PUBLISHERS = [
    "audit.checkpoints.append_to_file",
    "flags.audit_checkpoints.send_to_webhooks",
    "flags.audit_checkpoints.email_auditors",
]

# Lifecycle: a temporary flag that has served one variation to everyone in a governed
# environment for this many days counts as released.
FEATUREOPS_RELEASED_AFTER_DAYS = env_int("FEATUREOPS_RELEASED_AFTER_DAYS", 14)
# ...and once released this many days more, it is due for cleanup (remove the branch).
FEATUREOPS_CLEANUP_AFTER_RELEASED_DAYS = env_int("FEATUREOPS_CLEANUP_AFTER_RELEASED_DAYS", 30)
# A flag not evaluated for this many days is stale (a cleanup hint).
FEATUREOPS_STALE_AFTER_DAYS = env_int("FEATUREOPS_STALE_AFTER_DAYS", 30)
# An archived flag is still served this long, then answers FLAG_NOT_FOUND.
FEATUREOPS_ARCHIVE_GRACE_HOURS = env_int("FEATUREOPS_ARCHIVE_GRACE_HOURS", 24)
# Reminders: overdue reviews go to the project admins too after this many days; change
# requests waiting longer than this many hours remind the approvers; the sweep's period.
FEATUREOPS_OVERDUE_ADMIN_DAYS = env_int("FEATUREOPS_OVERDUE_ADMIN_DAYS", 14)
FEATUREOPS_CHANGE_REQUEST_REMINDER_HOURS = env_int("FEATUREOPS_CHANGE_REQUEST_REMINDER_HOURS", 24)
FEATUREOPS_REMINDER_SWEEP_SECONDS = env_int("FEATUREOPS_REMINDER_SWEEP_SECONDS", 3600)

# OFREP evaluation (flags/ofrep.py): how often each process polls environment versions,
# the largest accepted body, and the origins browser clients may call from ("*" for any).
# The management API (/api/v1/): requests per token per minute, counted in the shared cache.
API_RATE_LIMIT_PER_MINUTE = env_int("API_RATE_LIMIT_PER_MINUTE", 600)

OFREP_SNAPSHOT_POLL_SECONDS = float(os.environ.get("OFREP_SNAPSHOT_POLL_SECONDS", "0.2"))
# With PostgreSQL, changes are pushed (LISTEN/NOTIFY, flags/change_feed.py); versions are still
# read this often in case a notification was missed.
OFREP_SNAPSHOT_SAFETY_POLL_SECONDS = float(os.environ.get("OFREP_SNAPSHOT_SAFETY_POLL_SECONDS", "1.0"))
# OFREP event streams (flags/ofrep_streams.py, served by uvicorn through featureops_site/asgi.py).
# OFREP_STREAM_ORIGIN: where providers connect ("https://streams.example.com"); empty means the
# origin they already use for OFREP (a proxy sends /ofrep/v1/streams to the stream server).
OFREP_STREAM_ORIGIN = os.environ.get("OFREP_STREAM_ORIGIN", "").rstrip("/")
OFREP_STREAM_TOKEN_SECONDS = env_int("OFREP_STREAM_TOKEN_SECONDS", 24 * 3600)
OFREP_STREAM_HEARTBEAT_SECONDS = float(os.environ.get("OFREP_STREAM_HEARTBEAT_SECONDS", "15"))
OFREP_STREAM_SAFETY_POLL_SECONDS = float(os.environ.get("OFREP_STREAM_SAFETY_POLL_SECONDS", "5"))
OFREP_STREAM_INACTIVITY_SECONDS = env_int("OFREP_STREAM_INACTIVITY_SECONDS", 120)
# The live console (featureops_site/live.py): how long one stream lives before the browser
# reconnects (and its session is checked again).
LIVE_STREAM_SECONDS = float(os.environ.get("LIVE_STREAM_SECONDS", "300"))
OFREP_MAX_BODY_BYTES = env_int("OFREP_MAX_BODY_BYTES", 64 * 1024)
OFREP_CORS_ALLOWED_ORIGINS = env_list("OFREP_CORS_ALLOWED_ORIGINS")

# Logs go to stderr. LOG_FORMAT "json" (the default without DEBUG) writes one JSON object per line
# for a log collector: timestamp, level, logger, message, exception, request id
# (featureops_site/log_format.py); Celery workers and gunicorn (featureops_site/gunicorn.conf.py)
# follow it. "text" (the default with DEBUG) is for people.
LOG_FORMAT = os.environ.get("LOG_FORMAT", "").strip().lower() or ("text" if DEBUG else "json")
if LOG_FORMAT not in {"json", "text"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be json or text, got {LOG_FORMAT!r}")
LOGGING_CONFIG = "featureops_site.log_format.configure"  # dictConfig, plus warnings through logging
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "featureops_site.log_format.json_formatter"},
        "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}

# Operability: /healthz, /readyz and /metrics (featureops_site/health.py, metrics.py) and the
# System status page. Each Celery worker writes a heartbeat every WORKER_HEARTBEAT_SECONDS; one
# silent for WORKER_STALE_SECONDS (three heartbeats by default) counts as gone: /readyz fails
# for its queues when no other worker consumes them, and the console warns admins.
WORKER_HEARTBEAT_SECONDS = env_int("WORKER_HEARTBEAT_SECONDS", 15)
WORKER_STALE_SECONDS = env_int("WORKER_STALE_SECONDS", 3 * WORKER_HEARTBEAT_SECONDS)
if WORKER_HEARTBEAT_SECONDS < 1 or WORKER_STALE_SECONDS <= WORKER_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured("WORKER_HEARTBEAT_SECONDS must be at least 1, and WORKER_STALE_SECONDS longer.")
# Who may read /metrics. With METRICS_TOKEN set: requests carrying "Authorization: Bearer <token>",
# from anywhere (Prometheus's `authorization` setting). Without it: clients in
# METRICS_ALLOWED_NETWORKS (comma-separated CIDR; loopback by default), the client address found
# as for sign-ins (TRUSTED_PROXY_COUNT), so a request relayed by a proxy on the same host is not
# taken for a local one. Everyone else gets 403.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
if METRICS_TOKEN and len(METRICS_TOKEN) < 32:
    raise ImproperlyConfigured("METRICS_TOKEN must be at least 32 characters (or unset).")
METRICS_ALLOWED_NETWORKS = env_networks("METRICS_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128")
