"""The management API against its own OpenAPI document (issue 17): schemathesis generates requests
for every operation `/api/v1/openapi.json` describes and sends them with real personal tokens
through the site's WSGI application in-process, on PostgreSQL. No answer may be a 5xx, and every
answer must be one the document promises: its status, its media type (errors are
`application/problem+json`, api/site.py) and its body's schema. Requests the document calls
invalid must be refused. Over 5,000 requests every CI run.

- Who: `admin` (admin and editor of the demo project) and `owner` (editor only, so the admin-only
  operations answer 403), each with an all-scope personal token.
- What: schemathesis's coverage cases (boundaries, missing, mistyped and extra fields, as
  `admin`), then cases Hypothesis draws, valid and invalid, for each operation and token.
- Where to: path parameters are mostly real keys and ids of the demo, read again before each
  operation so that the flags, change requests and plans the run itself creates are reached too;
  valid bodies are often made coherent with them (the flag's variation keys, values of its type,
  demo usernames), so that writes get past the services' validation and change things.
- Each request runs in a savepoint of the test's transaction, rolled back when it answers 5xx, as
  its own transaction would be in production: one failure does not spoil the requests after it.
- Every audit row a request writes must name the token, and every accepted creation, deletion or
  action must write one (an edit that changes nothing writes none).
- The run must reach real objects: most operations answer 2xx at least once, and hundreds of
  requests change something. About three minutes on two cores.
- Failures are collected, not raised: the report lists every distinct one (operation, check, the
  answer, a curl command, the server's traceback) instead of shrinking the first.

What earlier runs found in the catalog is replayed as plain requests (`FOUND`), so that a
regression fails on the spot rather than when a generator happens to draw it again.
"""

from __future__ import annotations

import io
import logging
import math
import random
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import schemathesis
from django.contrib.auth import get_user_model
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, transaction
from django.test import Client
from hypothesis import HealthCheck, Phase, Verbosity, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from audit.models import AuditEvent
from featureops_site.wsgi import application
from flags.constants import BehaviorSurface
from flags.models import Flag, Project, Targeting
from flags.services.access_tokens import personal_token_create
from rollouts.change_control import submitting
from rollouts.change_control.follow_ups import open_follow_up
from rollouts.change_control.incident_mode import incident_start
from rollouts.models import ChangeRequest, FollowUp, Incident, RolloutPlan
from rollouts.plans.design import plan_from_template
from webhooks.models import Webhook
from webhooks.services import webhook_create

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

REQUESTS_GOAL = 5_000
PEOPLE = ("admin", "owner")
MIN_EXAMPLES = 8  # drawn cases per operation, token and mode, whatever the number of operations
# Tokens are not generated: every request carries a real one (tests/api test what a missing, unknown,
# revoked or expired token gets).
CONFIG = schemathesis.Config.from_dict({"generation": {"with-security-parameters": False}})
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection]
DRY_RUNS = ("/contracts/plan",)  # a POST that writes nothing
REASONS = ["Customers asked for it", "Rolling back: error rate doubled"]
DEMO_USERS = ["owner", "lead", "admin", "pm", "operator", "auditor", "nobody"]


# --- the application, in-process -------------------------------------------------------------

class Sent:
    """What reached the application: requests, answers by status, writes and their audit rows."""

    def __init__(self) -> None:
        self.requests = 0
        self.statuses: dict[str, Counter[int]] = defaultdict(Counter)
        self.tracebacks: list[str] = []
        self.audit_gaps: list[str] = []
        self.changes = 0  # requests that wrote audit rows: accepted changes


class _Tracebacks(logging.Handler):
    def __init__(self, sent: Sent) -> None:
        super().__init__(logging.ERROR)
        self.sent = sent

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.sent.tracebacks.append("".join(traceback.format_exception(*record.exc_info))[-3000:])


def _in_savepoints(sent: Sent) -> Callable[..., Any]:
    """The site's WSGI application, each request in a savepoint (rolled back on a 5xx), checking
    the audit rows each request writes."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        sent.requests += 1
        status: list[int] = []

        def start(line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status.append(int(line.split()[0]))
            return start_response(line, headers, exc_info)

        raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(raw)
        last_row = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
        savepoint = transaction.savepoint()
        body = list(application(environ, start))
        if status[0] >= 500:
            transaction.savepoint_rollback(savepoint)
            return body
        transaction.savepoint_commit(savepoint)
        labels = list(AuditEvent.objects.filter(id__gt=last_row).values_list("actor_label", flat=True))
        sent.changes += bool(labels)
        # An edit that changes nothing writes no row; a creation, a deletion or an action always does.
        silent = (environ["REQUEST_METHOD"] in ("POST", "DELETE") and status[0] < 300 and not labels
                  and not environ["PATH_INFO"].endswith(DRY_RUNS))
        if silent or any(" via API token " not in label for label in labels):
            sent.audit_gaps.append(f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']} {raw[:200]!r} -> {status[0]}, "
                                   f"audit rows by {labels}")
        return body

    return app


@contextmanager
def _served_in_process(sent: Sent) -> Iterator[None]:
    """Requests share the test's connection and transaction (Django's test client does the same:
    without this, the end of each request would close the connection mid-transaction)."""
    handler = _Tracebacks(sent)
    logger = logging.getLogger("django.request")
    level = logger.level
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR)  # thousands of 4xx warnings would cost more than the requests
    try:
        yield
    finally:
        logger.setLevel(level)
        logger.removeHandler(handler)
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


# --- real keys and ids in path parameters and bodies ---------------------------------------------

def _work_to_act_on(project: Project) -> None:
    """One of each thing the operations act on, so that they reach a real row from the start: a
    change request waiting for approval, a draft rollout plan, an incident on in staging, an open
    follow-up, a webhook (to an address literal: nothing is resolved, nothing is sent)."""
    people = {user.username: user for user in get_user_model().objects.filter(username__in=["owner", "operator",
                                                                                             "admin"])}
    production, staging = (project.environments.get(key=key) for key in ("production", "staging"))
    tool_mode = Targeting.objects.get(flag__project=project, flag__key="support_agent_tool_mode", environment=production)
    held = submitting.targeting_change_submit(targeting=tool_mode, changes={"default_serve": {"variation": "write"}},
                                              reason="Write tools for everyone", actor=people["owner"])
    assert isinstance(held, ChangeRequest)
    plan_from_template(flag=Flag.objects.get(project=project, key="support_assistant_profile"), environment=production,
                       candidate="citation_first_v4", actor=people["owner"], reason="Citation-first v4 is ready")
    incident_start(environment=staging, surfaces=[BehaviorSurface.AGENT_TOOLS], reason="Staging answers slowly",
                   actor=people["operator"])
    open_follow_up(project=project, environment=production, kind=FollowUp.Kind.ROLLBACK, title="Rolled back",
                   reason="Tool errors spiked", actor=people["operator"])
    webhook_create(project_id=project.pk, url="https://93.184.216.34/featureops", events=[], actor=people["admin"])


def _pools(project: Project) -> dict[str, Any]:
    """What the path parameters of each name may name, read now (the run keeps adding rows)."""
    flags = {flag.key: (flag.value_type, [v.key for v in flag.variations.all()])
             for flag in Flag.objects.filter(project=project).prefetch_related("variations")}

    def latest(queryset: Any) -> list[int]:
        return list(queryset.order_by("-id").values_list("id", flat=True)[:20])

    return {
        "project_key": [project.key], "flag_key": sorted(flags), "flags": flags,
        "environment_key": list(project.environments.values_list("key", flat=True)),
        "segment_key": list(project.segments.values_list("key", flat=True)),
        "change_request_id": latest(ChangeRequest.objects.filter(project=project)),
        "incident_id": latest(Incident.objects.filter(project=project)),
        "follow_up_id": latest(FollowUp.objects.filter(project=project)),
        "plan_id": latest(RolloutPlan.objects.filter(project=project)),
        "webhook_id": latest(Webhook.objects.filter(project_id=project.pk)),
        "event_id": latest(AuditEvent.objects.filter(project_id=project.pk)),
    }


def _value(value_type: str) -> st.SearchStrategy[Any]:
    return {"boolean": st.booleans(), "string": st.text(max_size=20),
            "number": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-10**6, 10**6),
            }.get(value_type, st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=3))


def _serve(variations: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    if not variations:
        return st.just({"variation": "none"})
    one = st.sampled_from(variations)
    split = st.lists(one, min_size=1, max_size=3, unique=True).map(
        lambda keys: {"split": [{"variation": k, "weight": 100_000 // len(keys) + (i == 0) * (100_000 % len(keys))}
                                for i, k in enumerate(keys)]})
    return st.one_of(one.map(lambda key: {"variation": key}), split)


def _coherent_body(draw: Any, operation: str, body: dict[str, Any], flag: tuple[str, list[str]] | None,
                   pools: dict[str, Any]) -> None:
    """Make a valid body agree with the objects its path names, so the services take it."""
    value_type, variations = flag or ("string", [])
    if operation == "POST /projects/{project_key}/flags":
        keys = list(dict.fromkeys(v["key"] for v in body["variations"]))
        body["variations"] = [{**v, "value": draw(_value(body["value_type"]))}
                              for v in {v["key"]: v for v in body["variations"]}.values()]
        body["fallback_variation"] = draw(st.sampled_from(keys))
        body["value_schema"] = None
        body["owner_user"] = draw(st.sampled_from([None, *DEMO_USERS]))
    elif operation == "PATCH /projects/{project_key}/flags/{flag_key}":
        if variations and "fallback_variation" in body:
            body["fallback_variation"] = draw(st.sampled_from(variations))
        if "owner_user" in body:
            body["owner_user"] = draw(st.sampled_from(DEMO_USERS))
        body.pop("value_schema", None)
    elif operation in ("PATCH /projects/{project_key}/flags/{flag_key}/variations/{variation_key}",
                       "POST /projects/{project_key}/flags/{flag_key}/variations"):
        body["value"] = draw(_value(value_type))
    elif operation == "PATCH /projects/{project_key}/flags/{flag_key}/targeting/{environment_key}":
        if "default_serve" in body:
            body["default_serve"] = draw(_serve(variations))
        if "rules" in body:
            body["rules"] = [{"id": f"r{i}", "description": draw(st.text(max_size=10)),
                              "clauses": [{"attribute": "plan", "op": draw(st.sampled_from(["in", "equals", "gte"])),
                                           "values": draw(st.lists(st.text(max_size=5) | st.integers(), max_size=3)),
                                           "negate": draw(st.booleans())}],
                              "serve": draw(_serve(variations))} for i in range(draw(st.integers(0, 3)))]
        if "targets" in body and variations:
            body["targets"] = [{"variation": draw(st.sampled_from(variations)),
                                "values": draw(st.lists(st.text(min_size=1, max_size=8), max_size=3))}]
    # Every router: fields named after what they refer to get real keys, and a reason is given.
    for name, pool in (("flag", pools["flag_key"]), ("environment", pools["environment_key"]),
                       ("segment", pools["segment_key"]), ("variation", variations), ("baseline", variations),
                       ("candidate", variations)):
        if isinstance(body.get(name), str) and pool:
            body[name] = draw(st.sampled_from(pool))
    body["reason"] = draw(st.sampled_from(REASONS))


def _positive(case: schemathesis.Case, location: ParameterLocation) -> bool:
    component = case.meta.components.get(location) if case.meta else None
    return component is not None and component.mode == GenerationMode.POSITIVE


def _real_path(case: schemathesis.Case, pools: dict[str, Any], choose: Callable[[list[Any]], Any]) -> None:
    """Path parameters name real objects, mostly (`choose` answers one of a pool, or None to keep
    the generated value)."""
    if not case.path_parameters or not _positive(case, ParameterLocation.PATH):
        return
    chosen = dict(case.path_parameters)
    for name in chosen:
        pool = pools["flags"].get(chosen.get("flag_key"), ("", []))[1] if name == "variation_key" else pools.get(name)
        picked = choose(pool) if pool else None
        if picked is not None:
            chosen[name] = picked
    case.path_parameters = chosen


def _seed(draw: Any, case: schemathesis.Case, pools: dict[str, Any]) -> schemathesis.Case:
    """Nine path parameters in ten name a real object; three valid bodies in four are made coherent."""
    _real_path(case, pools, lambda pool: draw(st.sampled_from(pool)) if draw(st.integers(0, 9)) else None)
    if isinstance(case.body, dict) and _positive(case, ParameterLocation.BODY) and draw(st.integers(0, 3)):
        body = dict(case.body)
        operation = f"{case.method.upper()} {case.operation.path.removeprefix('/api/v1')}"
        _coherent_body(draw, operation, body, pools["flags"].get(case.path_parameters.get("flag_key")), pools)
        case.body = body
    return case


# --- the run -----------------------------------------------------------------------------------

class Findings:
    def __init__(self) -> None:
        self.distinct: dict[tuple[str, str], str] = {}
        self.count: Counter[tuple[str, str]] = Counter()

    def send(self, case: schemathesis.Case, token: str, sent: Sent) -> None:
        label = f"{case.method.upper()} {case.operation.path}"
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
        before = len(sent.tracebacks)
        response = case.call()
        sent.statuses[label][response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:
            server = "\n".join(sent.tracebacks[before:])
            for failure in group.exceptions:
                key = (label, failure.title)
                self.count[key] += 1
                self.distinct.setdefault(key, f"{group}\n{server}".strip())

    def report(self) -> str:
        return "\n\n".join(f"=== {label}: {title} ({self.count[label, title]}×)\n{text}"
                           for (label, title), text in sorted(self.distinct.items()))


def _fuzz(operation: Any, mode: GenerationMode, examples: int, send: Callable[[schemathesis.Case], None]) -> None:
    @hypothesis_settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
                         suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        send(case)

    try:
        run()
    except Unsatisfiable:  # nothing to make invalid: no body, no query, path parameters any text
        assert mode == GenerationMode.NEGATIVE


TOOL_MODE = "/api/v1/projects/support-assistant/flags/support_agent_tool_mode"
FOUND = [  # what earlier runs found: (method, path, JSON body as text, status, where the problem points)
    ("PATCH", TOOL_MODE, "0", 400, None),  # was 200: a body that is not an object read as {}
    ("PATCH", TOOL_MODE, "null", 400, None),
    ("PATCH", TOOL_MODE, '{"review_date": 0}', 422, "review_date"),  # was 200: 1970-01-01
    ("PATCH", TOOL_MODE, '{"name": null}', 422, "name"),  # documented as not nullable
    ("PATCH", TOOL_MODE, '{"description": "a\\ud800"}', 422, "description"),  # an unpaired surrogate
    ("PATCH", TOOL_MODE + "/variations/none", '{"risk_rank": "5"}', 422, "risk_rank"),
    ("PATCH", TOOL_MODE + "/targeting/development", '{"enabled": 1}', 422, "enabled"),
    ("PATCH", TOOL_MODE + "/targeting/development", '{"rules": [{"id": "r\\u0000"}]}', 422, "rules.0.id"),
    ("POST", "/api/v1/projects/support-assistant/flags", '{"key": "k", "cleanup_rule": "\\u0000"}', 422,
     "cleanup_rule"),  # was 500: PostgreSQL stores no NUL
    ("GET", "/api/v1/projects/support-assistant/flags?q=a%00", None, 422, "q"),  # was 500
    ("GET", "/api/v1/projects/a%00b/flags", None, 404, None),  # was 500
]


@pytest.mark.parametrize(("method", "path", "body", "status", "where"), FOUND)
def test_api__input_an_earlier_run_found__refused_as_a_problem_and_nothing_changed(
        demo: Project, method: str, path: str, body: str | None, status: int, where: str | None) -> None:
    # Given owner's token and the flag as it is
    owner = get_user_model().objects.get(username="owner")
    token = personal_token_create(user=owner, name="found", scopes=("read", "write"), actor=owner)[1]
    before = list(AuditEvent.objects.values_list("id", flat=True))
    version = Flag.objects.get(key="support_agent_tool_mode").version

    # When the input is sent
    response = Client().generic(method, path, body or "", content_type="application/json",
                                headers={"Authorization": f"Bearer {token}"})

    # Then a problem at the field, and nothing written
    assert (response.status_code, response["Content-Type"]) == (status, "application/problem+json")
    if where is not None:
        assert [error["path"] for error in response.json()["errors"]] == [where]
    assert list(AuditEvent.objects.values_list("id", flat=True)) == before
    assert Flag.objects.get(key="support_agent_tool_mode").version == version


def test_api__generated_requests_as_admin_and_owner__no_5xx_and_every_answer_documented(
        demo: Project, settings: Any) -> None:
    # Given the demo with work in progress, a personal token (all scopes) of admin and of owner, and no
    # rate limit to speak of
    _work_to_act_on(demo)
    settings.API_RATE_LIMIT_PER_MINUTE = 1_000_000
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "localhost"]  # schemathesis's WSGI client's host
    tokens = {}
    for username in PEOPLE:
        user = get_user_model().objects.get(username=username)
        tokens[username] = personal_token_create(user=user, name=f"fuzz {username}", actor=user,
                                                 scopes=("read", "write", "approve", "operate"))[1]
    sent, findings = Sent(), Findings()
    pools: dict[str, Any] = {}
    rng = random.Random(17)  # noqa: S311 - which coverage cases name real objects, the same every run
    started = time.perf_counter()
    with _served_in_process(sent):
        schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", _in_savepoints(sent), config=CONFIG)

        @schema.hook
        def flatmap_case(context: Any, case: schemathesis.Case) -> st.SearchStrategy[schemathesis.Case]:
            return st.composite(lambda draw: _seed(draw, case, pools))()

        operations = [result.ok() for result in schema.get_all_operations()]
        coverage = {operation.label: list(schema.iter_coverage_cases(
            operation, generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
            generation_config=schema.config.generation)) for operation in operations}
        drawn = len(PEOPLE) * len(operations) * 2
        examples = max(MIN_EXAMPLES, math.ceil((REQUESTS_GOAL * 1.1 - sum(map(len, coverage.values()))) / drawn))

        # When every operation is sent its coverage cases as admin, then drawn cases as admin and owner
        for operation in operations:
            pools.update(_pools(demo))
            for case in coverage[operation.label]:
                _real_path(case, pools, lambda pool: rng.choice(pool) if rng.random() < 0.9 else None)
                findings.send(case, tokens["admin"], sent)
            for username in PEOPLE:
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    pools.update(_pools(demo))
                    _fuzz(operation, mode, examples, lambda case, t=tokens[username]: findings.send(case, t, sent))

    # Then: enough requests, reaching real objects; no 5xx, no undocumented answer, every write audited
    seconds = time.perf_counter() - started
    answers = Counter[int]()
    for statuses in sent.statuses.values():
        answers.update(statuses)
    documented = {f"{operation.method.upper()} {operation.path}": operation for operation in operations}
    succeeded = {label for label, statuses in sent.statuses.items()
                 if label in documented and any(200 <= status < 300 for status in statuses)}
    print(f"\n{sent.requests:,} requests to {len(operations)} operations in {seconds:.0f} s; answers "
          + ", ".join(f"{status}: {count}" for status, count in sorted(answers.items()))
          + f"; {sent.changes} changed something; {len(succeeded)} operations answered 2xx")
    for label, statuses in sorted(sent.statuses.items()):
        if label in documented:
            print(f"  {label}: " + ", ".join(f"{status}×{count}" for status, count in sorted(statuses.items())))
    assert not findings.distinct, f"{len(findings.distinct)} distinct failures:\n\n{findings.report()}"
    assert not sent.audit_gaps, "writes without audit rows, or rows not naming the token:\n" + "\n".join(sent.audit_gaps)
    assert sent.requests >= REQUESTS_GOAL
    assert len(succeeded) >= len(operations) * 2 // 3 and sent.changes >= 100, "the run hardly reached real objects"
