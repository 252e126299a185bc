"""`manage.py simulate_traffic`: the demo's imaginary support app.

Every few seconds a batch of support cases arrives from random accounts: internal support
agents, beta accounts and everyone else, with the attributes the demo's segments test
(`email`, `plan`). For each case the app evaluates `support_assistant_profile` with the real
engine, authenticated by an SDK key the way OFREP is (the key selects the environment's
compiled snapshot, kept fresh by the same snapshot store), handles the case with the
profile it was served, and reports to `POST /api/v1/events`: one exposure (the assigned
variant; a few cases fall back to human review) and the case's outcomes (latency,
resolution without escalation, corrections, citation failures, estimated cost).

The candidate resolves a few more cases and is a little slower (within 1.1 × the baseline);
`--regress-latency 2` doubles its latency, which the rollout plan's latency guardrail
catches. Events go over HTTP to `--url` (the running console), or with `--in-process`
through the same WSGI application inside this process. While the server is unreachable
the batches wait and are retried with the same batch ids, which the API stores once.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import random
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, close_old_connections
from django.utils import timezone

from audit.context import audit_context
from audit.services import SystemActor
from flags.evaluation.engine import Snapshot, evaluate
from flags.models import Environment, Flag, SdkKey
from flags.services import sdk_key_create, sdk_key_revoke
from flags.services.sdk_keys import hash_sdk_key
from flags.snapshot_store import get_store
from telemetry.constants import MAX_EVENTS_PER_BATCH

ACTOR = SystemActor("simulate_traffic command")
EVENTS_PATH = "/api/v1/events"
FALLBACK_ROUTE = "fallback_human_review"  # what a case that falls back is served
OUTCOMES_PER_CASE = 5
MAX_BATCH = MAX_EVENTS_PER_BATCH // (1 + OUTCOMES_PER_CASE)
MAX_WAITING_BATCHES = 40  # kept while the server is unreachable; older ones are dropped
ONCE_PATIENCE_SECONDS = 10.0

# Who writes in: (share of cases, accounts). The demo's segments match internal accounts by
# their agents' @support.example.com email, beta accounts by plan "beta".
INTERNAL_ACCOUNTS, BETA_ACCOUNTS, OTHER_ACCOUNTS = 40, 80, 5000
MIX = (("internal", 0.15), ("beta", 0.20), ("other", 0.65))


@dataclass(frozen=True)
class Behaviour:
    """How a support profile handles cases: the distributions its outcomes are drawn from."""

    latency_ms: float  # median; log-normal with LATENCY_SPREAD
    resolved: float  # share resolved without escalation
    corrected: float  # share of answers an agent had to correct
    citation_failed: float  # share with a missing or broken citation
    cost_usd: float  # mean estimated cost per case
    fallback: float  # share of cases that fall back to human review


BEHAVIOUR = {
    "baseline_v3": Behaviour(latency_ms=1400, resolved=0.66, corrected=0.11, citation_failed=0.07,
                             cost_usd=0.042, fallback=0.02),
    "citation_first_v4": Behaviour(latency_ms=1450, resolved=0.72, corrected=0.06, citation_failed=0.03,
                                   cost_usd=0.046, fallback=0.03),
}
DEFAULT_BEHAVIOUR = BEHAVIOUR["baseline_v3"]
LATENCY_SPREAD = 0.25
COST_SPREAD = 0.15


def random_account(rng: random.Random) -> str:
    kind = rng.choices([k for k, _ in MIX], weights=[w for _, w in MIX])[0]
    if kind == "internal":
        return f"acct-internal-{rng.randint(1, INTERNAL_ACCOUNTS):03d}"
    if kind == "beta":
        return f"acct-beta-{rng.randint(101, 100 + BETA_ACCOUNTS)}"
    return f"acct-{rng.randint(1, OTHER_ACCOUNTS):05d}"


def support_context(account: str) -> dict[str, Any]:
    """The evaluation context the app sends for an account: the account key (the flag's
    assignment unit, `accountId`) and the attributes the segments test. A pure function of
    the key, so a test can ask the engine what an account should have been served."""
    number = account.rsplit("-", 1)[-1]
    if account.startswith("acct-internal-"):
        email, plan = f"agent{number}@support.example.com", "internal"
    elif account.startswith("acct-beta-"):
        email, plan = f"admin{number}@beta-customer.example", "beta"
    else:
        email = f"admin{number}@customer.example"
        plan = "enterprise" if number.isdigit() and int(number) % 5 == 0 else "standard"
    return {"targetingKey": account, "accountId": account, "email": email, "plan": plan}


def case_outcomes(rng: random.Random, variant: str, *, latency_factor: float = 1.0) -> dict[str, float]:
    behaviour = BEHAVIOUR.get(variant, DEFAULT_BEHAVIOUR)
    latency = behaviour.latency_ms * latency_factor * math.exp(rng.gauss(0, LATENCY_SPREAD))
    cost = max(0.001, rng.gauss(behaviour.cost_usd, behaviour.cost_usd * COST_SPREAD))
    return {
        "latency_p95": round(latency, 1),
        "resolved_without_escalation": float(rng.random() < behaviour.resolved),
        "correction_rate": float(rng.random() < behaviour.corrected),
        "citation_failure_rate": float(rng.random() < behaviour.citation_failed),
        "estimated_cost_per_case": round(cost, 5),
    }


class Unreachable(Exception):
    """The events API did not answer, or answered that it cannot store now: retry later."""


class EventsApi:
    """Where batches go: the console over HTTP, or its WSGI application in this process."""

    def __init__(self, *, url: str | None, sdk_key: str) -> None:
        self.url, self.sdk_key = (url.rstrip("/") if url else None), sdk_key

    @property
    def target(self) -> str:
        return f"{self.url}{EVENTS_PATH}" if self.url else "the events API in this process"

    def post(self, body: bytes) -> tuple[int, Any]:
        status, raw = self._http(body) if self.url else self._in_process(body)
        if status in (429, 502, 503, 504):
            raise Unreachable(f"HTTP {status}")
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw[:200].decode(errors="replace")

    def _http(self, body: bytes) -> tuple[int, bytes]:
        request = urllib.request.Request(  # noqa: S310 - the URL is the console's, given by the operator
            f"{self.url}{EVENTS_PATH}", data=body, method="POST",
            headers={"Authorization": f"Bearer {self.sdk_key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except (urllib.error.URLError, OSError) as error:
            raise Unreachable(str(getattr(error, "reason", error))) from error

    def _in_process(self, body: bytes) -> tuple[int, bytes]:
        from featureops_site.wsgi import application

        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": EVENTS_PATH, "QUERY_STRING": "",
                   "SERVER_NAME": "simulate-traffic", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
                   "wsgi.input": io.BytesIO(body), "wsgi.errors": io.StringIO(), "wsgi.url_scheme": "http",
                   "wsgi.version": (1, 0), "wsgi.multithread": False, "wsgi.multiprocess": False,
                   "wsgi.run_once": False, "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
                   "HTTP_AUTHORIZATION": f"Bearer {self.sdk_key}"}
        answer: dict[str, int] = {}

        def start_response(status: str, headers: list[tuple[str, str]]) -> None:
            answer["status"] = int(status.split()[0])

        chunks = application(environ, start_response)
        payload = b"".join(chunks)
        if hasattr(chunks, "close"):
            chunks.close()
        return answer["status"], payload


@dataclass(frozen=True)
class Batch:
    """One POST: the body keeps its batch id, so a retry is stored once."""

    body: bytes
    summary: str


class Command(BaseCommand):
    help = ("Simulate the demo's support app: evaluate support_assistant_profile for random accounts and report "
            "exposures and outcomes to the events API, every few seconds.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--project", default="support-assistant", help="project key")
        parser.add_argument("--environment", default="production", help="environment key")
        parser.add_argument("--flag", default="support_assistant_profile", help="the flag the app evaluates")
        parser.add_argument("--candidate", default="citation_first_v4",
                            help="the variation --regress-latency slows down")
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="the console that receives the events")
        parser.add_argument("--in-process", action="store_true",
                            help="post through the console's WSGI application in this process (no server needed)")
        parser.add_argument("--sdk-key", default="", help="a server SDK key of the environment (default: one is "
                                                          "created for this run and revoked when it stops)")
        parser.add_argument("--batch", type=int, default=40, help=f"cases per batch (1 to {MAX_BATCH})")
        parser.add_argument("--interval", type=float, default=3.0, help="seconds between batches")
        parser.add_argument("--once", action="store_true", help="send one batch and stop")
        parser.add_argument("--seconds", type=float, default=0, help="stop after this many seconds (default: never)")
        parser.add_argument("--regress-latency", type=float, default=1.0, metavar="FACTOR",
                            help="multiply the candidate's latency by FACTOR (e.g. 2, to breach its guardrail)")
        parser.add_argument("--seed", type=int, default=None, help="random seed, for repeatable traffic")

    def handle(self, *args: Any, **options: Any) -> None:
        if not 1 <= options["batch"] <= MAX_BATCH:
            raise CommandError(f"--batch: from 1 to {MAX_BATCH} cases ({1 + OUTCOMES_PER_CASE} events each).")
        if not (options["interval"] > 0 and options["regress_latency"] > 0 and options["seconds"] >= 0):
            raise CommandError("--interval and --regress-latency must be positive, --seconds not negative.")
        environment = Environment.objects.select_related("project").filter(
            project__key=options["project"], key=options["environment"]).first()
        if environment is None or not Flag.objects.filter(project=environment.project, key=options["flag"]).exists():
            raise CommandError(f"No flag {options['flag']!r} in {options['project']}/{options['environment']}: "
                               "run seed_demo first.")
        self.flag_key, self.candidate = options["flag"], options["candidate"]
        self.latency_factor = options["regress_latency"]
        self.rng = random.Random(options["seed"])  # noqa: S311 - simulated traffic, not security
        self.stopping = False
        raw_key, created_key = (options["sdk_key"], None) if options["sdk_key"] else self._create_key(environment)
        self.api = EventsApi(url=None if options["in_process"] else options["url"], sdk_key=raw_key)
        self.key_hash = hash_sdk_key(raw_key)
        self.waiting: deque[Batch] = deque(maxlen=MAX_WAITING_BATCHES)
        self.outage = ""
        self.sent_batches = self.sent_events = 0
        previous = self._handle_signals()
        try:
            self._say(f"Simulating support traffic on {self.flag_key} in {environment.project.key}/{environment.key}: "
                      f"{options['batch']} cases every {options['interval']:g} s → {self.api.target}"
                      + (f"; {self.candidate} latency × {self.latency_factor:g}" if self.latency_factor != 1 else ""))
            self._run(batch_size=options["batch"], interval=options["interval"], once=options["once"],
                      seconds=options["seconds"])
        finally:
            self._restore_signals(previous)
            if created_key is not None:
                self._revoke_key(created_key)
            self._say(f"Stopped: {self.sent_batches} batches, {self.sent_events} events stored"
                      + (f", {len(self.waiting)} batches never delivered" if self.waiting else "") + ".")

    # -- the loop --------------------------------------------------------------------------

    def _run(self, *, batch_size: int, interval: float, once: bool, seconds: float) -> None:
        until = time.monotonic() + seconds if seconds else math.inf
        while not self.stopping:
            started = time.monotonic()
            batch = self._make_batch(batch_size, interval)
            if batch is not None:
                self.waiting.append(batch)
            if once:
                self._deliver_patiently(until=min(until, started + ONCE_PATIENCE_SECONDS))
                return
            self._deliver()
            if time.monotonic() >= until:
                return
            self._sleep(min(started + interval, until))

    def _sleep(self, until: float) -> None:
        while not self.stopping and time.monotonic() < until:
            time.sleep(min(0.25, until - time.monotonic()))

    def _deliver_patiently(self, *, until: float) -> None:
        while True:
            self._deliver()
            if not self.waiting or self.stopping:
                return
            if time.monotonic() >= until:
                raise CommandError(f"Could not deliver to {self.api.target}: {self.outage}")
            self._sleep(min(time.monotonic() + 1, until))

    def _deliver(self) -> None:
        while self.waiting:
            batch = self.waiting[0]
            try:
                status, payload = self.api.post(batch.body)
            except Unreachable as problem:
                if not self.outage:
                    self._say(f"{self.api.target} is not reachable ({problem}); batches wait and are retried.")
                self.outage = str(problem)
                return
            if self.outage:
                self._say(f"{self.api.target} answers again.")
                self.outage = ""
            self.waiting.popleft()
            if status == 200:
                self.sent_batches += 1
                self.sent_events += payload["accepted"]
                rejected = f", {len(payload['rejected'])} rejected: {payload['rejected'][:2]}" \
                    if payload["rejected"] else ""
                self._say(f"{batch.summary} → {payload['accepted']} events stored{rejected}")
            else:
                self._say(f"{batch.summary} → refused, HTTP {status}: {payload}")

    # -- one batch of cases ----------------------------------------------------------------

    def _snapshot(self) -> Snapshot | None:
        store = get_store()
        found = store.lookup(self.key_hash)
        if found.snapshot is None and found.status != "revoked":
            store.poll_once()  # a key created a moment ago
            found = store.lookup(self.key_hash)
        if found.status == "revoked":
            raise CommandError("The SDK key has been revoked.")
        return found.snapshot

    def _make_batch(self, size: int, interval: float) -> Batch | None:
        snapshot = self._snapshot()
        if snapshot is None:
            self._say("Flag data is not available yet (the database is busy or the key unknown); next batch.")
            return None
        now = timezone.now()
        events: list[dict[str, Any]] = []
        served: Counter[str] = Counter()
        fallbacks = errors = 0
        for _ in range(size):
            account = random_account(self.rng)
            result = evaluate(snapshot, self.flag_key, support_context(account))
            if result.variant is None:  # the app would serve its coded default; nothing to attribute
                errors += 1
                continue
            variant = result.variant
            behaviour = BEHAVIOUR.get(variant, DEFAULT_BEHAVIOUR)
            route = FALLBACK_ROUTE if self.rng.random() < behaviour.fallback else variant
            fallbacks += route != variant
            served[variant] += 1
            factor = self.latency_factor if variant == self.candidate else 1.0
            outcomes = case_outcomes(self.rng, variant, latency_factor=factor)
            began = now - datetime.timedelta(seconds=self.rng.uniform(0, interval))
            ended = began + datetime.timedelta(milliseconds=outcomes["latency_p95"])
            events.append({"kind": "exposure", "flag": self.flag_key, "variant": variant, "served": route,
                           "unit": account, "time": began.isoformat()})
            events += [{"kind": "outcome", "metric": metric, "value": value, "unit": account,
                        "time": ended.isoformat(), "flag": self.flag_key, "variant": variant}
                       for metric, value in outcomes.items()]
        get_store().record_evaluation(snapshot.environment_id, self.flag_key)
        if not events:
            self._say(f"{size} cases, none evaluated ({errors} errors).")
            return None
        summary = (f"{timezone.localtime(now):%H:%M:%S} {sum(served.values())} cases: "
                   + ", ".join(f"{variant} {count}" for variant, count in served.most_common())
                   + (f" ({fallbacks} fell back to {FALLBACK_ROUTE})" if fallbacks else "")
                   + (f", {errors} evaluation errors" if errors else ""))
        batch_id = f"simulate-traffic-{uuid.uuid4().hex}"
        body = json.dumps({"batch_id": batch_id, "events": events}).encode()
        return Batch(body=body, summary=summary)

    # -- the SDK key, signals, output ------------------------------------------------------

    def _create_key(self, environment: Environment) -> tuple[str, SdkKey]:
        attempts = 30  # SQLite may be busy for a moment with the worker starting next to us
        for attempt in range(1, attempts + 1):
            try:
                with audit_context(user_agent="manage.py simulate_traffic"):
                    sdk_key, raw_key = sdk_key_create(environment=environment, name="traffic simulator", actor=ACTOR)
                break
            except DatabaseError:
                if attempt == attempts:
                    raise
                close_old_connections()
                time.sleep(1)
        return raw_key, sdk_key

    def _revoke_key(self, sdk_key: SdkKey) -> None:
        try:
            with audit_context(user_agent="manage.py simulate_traffic"):
                sdk_key_revoke(sdk_key=sdk_key, actor=ACTOR, reason="simulate_traffic stopped")
        except DatabaseError as problem:
            self._say(f"Could not revoke the SDK key {sdk_key.prefix}… ({problem}); revoke it in the console.")

    def _handle_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def stop(signum: int, frame: Any) -> None:
            self.stopping = True

        return {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}

    def _restore_signals(self, previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()
