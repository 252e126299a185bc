"""`featureops contracts plan|apply FILE --project KEY`: flags as code from CI, over the console's
management API (`/api/v1/projects/<key>/contracts/plan` and `/apply`).

A plan shows, flag by flag, what the file changes, what would apply at once and what would wait
for approval (and why); an apply does it, risky changes to governed environments opening change
requests. The exit status tells the pipeline what happened (see EXIT_STATUS). Standard library
only; the token is sent in the Authorization header and never printed."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, NoReturn, TextIO

from featureops_cli import VERSION

OK, INVALID, PENDING, UNREACHABLE = 0, 1, 2, 3
EXIT_STATUS = """examples:
  featureops contracts plan flags.yaml --project support-assistant
  featureops contracts apply flags.yaml --project support-assistant --reason "$CI_COMMIT_TITLE"

exit status:
  0  nothing to do (plan), or everything applied (apply)
  1  the document is invalid or the server refused it (its problem details are printed), or a usage error
  2  plan: the plan has changes to make; apply: some changes wait for approval in change requests
  3  the server cannot be reached or answered with an error of its own, or authentication failed
     (no token, or a wrong, expired or revoked one)

environment:
  FEATUREOPS_URL     the console's address, e.g. https://featureops.example.com (instead of --url)
  FEATUREOPS_TOKEN   an API token with the write scope (instead of --token; keeps it out of process lists)
  FEATUREOPS_REASON  the reason an apply records, when --reason is not given
"""
LINE_WIDTH = 160
LOOPBACK = {"localhost", "127.0.0.1", "::1"}


class Failure(Exception):
    """Stop with this exit status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# --- arguments ---------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse exits 2 on a usage error, which a pipeline would read as "the plan has changes".
        self.print_usage(sys.stderr)
        self.exit(INVALID, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="featureops", description="FeatureOps Console from the command line: flags as code for CI.",
                     epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"featureops {VERSION}")
    parser.set_defaults(show_help=parser.print_help)
    areas = parser.add_subparsers(dest="area", metavar="{contracts}")
    contracts = areas.add_parser("contracts", help="plan or apply a flags-as-code document",
                                 description="Plan or apply a document of flag contracts (the console's export).",
                                 epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    contracts.set_defaults(show_help=contracts.print_help)
    actions = contracts.add_subparsers(dest="action", metavar="{plan,apply}")
    for action, summary in (
        ("plan", "show what the file changes, what would apply at once and what would wait for approval; "
                 "write nothing"),
        ("apply", "apply the file: safe changes at once, risky changes to governed environments as change requests"),
    ):
        command = actions.add_parser(action, help=summary, description=summary[0].upper() + summary[1:] + ".",
                                     epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_argument("file", help="the YAML document, or - for standard input")
        command.add_argument("--project", required=True, help="the project's key, e.g. support-assistant")
        command.add_argument("--url", help="the console's address (default: $FEATUREOPS_URL)")
        command.add_argument("--token", help="an API token with the write scope (default: $FEATUREOPS_TOKEN)")
        command.add_argument("--reason", help="why: kept with every change in the audit trail and shown to "
                                              "approvers (default: $FEATUREOPS_REASON, else the file and commit)")
        command.add_argument("--json", action="store_true", help="print the server's JSON answer instead of text")
        command.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server (120)")
        if action == "apply":
            command.add_argument("--fingerprint", default="",
                                 help="the fingerprint a reviewed plan printed: refuse to apply another diff")
    return parser


def _default_reason(file: str) -> str:
    commit = os.environ.get("GITHUB_SHA") or os.environ.get("CI_COMMIT_SHA") or ""
    name = "standard input" if file == "-" else Path(file).name
    return f"Flags as code: {name}" + (f" at commit {commit[:12]}" if commit else "") + " (featureops client)"


def _read(file: str) -> str:
    try:
        raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        raise Failure(INVALID, f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Failure(INVALID, f"{file} is not UTF-8 text") from None


# --- the request -------------------------------------------------------------------------------

class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: it would resend the document (and urllib the token) elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _endpoint(base: str, project: str, action: str) -> str:
    parts = urllib.parse.urlsplit(base.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Failure(UNREACHABLE, f"--url must be an http(s) address such as https://featureops.example.com, "
                                   f"not {base!r}")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK:
        print(f"featureops: warning: {parts.hostname} is reached over plain http: the token travels unencrypted.",
              file=sys.stderr)
    path = parts.path.rstrip("/")
    if not path.endswith("/api/v1"):
        path += "/api/v1"
    project_path = urllib.parse.quote(project, safe="")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"{path}/projects/{project_path}/contracts/{action}",
                                    "", ""))


def _call(url: str, token: str, payload: dict[str, Any], timeout: float) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",  # noqa: S310
                                     headers={"Content-Type": "application/json", "Accept": "application/json",
                                              "User-Agent": f"featureops-cli/{VERSION}"})
    request.add_unredirected_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(_NoRedirects)
    try:
        with opener.open(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
        if 300 <= status < 400:
            raise Failure(UNREACHABLE, f"the server redirected ({status}) to {exc.headers.get('Location', '?')}: "
                                       "use that address as --url") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Failure(UNREACHABLE, f"cannot reach {urllib.parse.urlsplit(url).netloc}: {reason}") from None
    try:
        return status, json.loads(raw)
    except ValueError:
        raise Failure(UNREACHABLE, f"the server answered {status} without JSON: is --url the console's "
                                   "address?") from None


# --- printing ----------------------------------------------------------------------------------

def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= LINE_WIDTH else text[:LINE_WIDTH - 1] + "…"


def _approvals(waiting: dict[str, Any]) -> str:
    count = waiting.get("required_approvals")
    return "" if count is None else f"{count} approval{'s' if count != 1 else ''}"


def render(plan: dict[str, Any], out: TextIO) -> None:
    """The plan (or what an apply did) flag by flag, as a person reads it in a CI log."""
    dry_run = plan["dry_run"]
    summary = plan["summary"]
    print(f"{'Plan' if dry_run else 'Apply'} of {summary['flags']} contract(s) for project {plan['project']}", file=out)
    briefs = {brief["id"]: brief for brief in plan.get("change_requests", [])}
    for flag in plan["flags"]:
        print(f"\n{flag['flag']} ({flag['status']})", file=out)
        for change in flag["changes"]:
            for line in change["lines"] or [f"{change['path']}: {change['kind']}"]:
                print(f"  {_clip(line)}", file=out)
        for note in flag["notes"]:
            print(f"  {'!' if note['escalates'] else '~'} {_clip(note['text'])}", file=out)
        for what in flag["applies_now"]:
            print(f"  => {'would apply' if dry_run else 'applied'}: {what}", file=out)
        for waiting in flag["waits_for_approval"]:
            where = "would wait for approval" if dry_run else f"waits for approval in CR-{waiting['change_request']}"
            why = ": ".join(part for part in (_approvals(waiting), waiting["why"]) if part)
            print(f"  => {where}: {waiting['what']}" + (f" ({_clip(why)})" if why else ""), file=out)
        for waiting in flag["already_waiting"]:
            print(f"  => already waits for approval in CR-{waiting['change_request']}: {waiting['what']} "
                  "(not submitted again)", file=out)
    if briefs:
        print("\nChange requests:", file=out)
        for brief in briefs.values():
            print(f"  CR-{brief['id']} {brief['status']}, {brief['approvals']} of {brief['required_approvals']} "
                  f"approval(s): {brief['url']}", file=out)
    print(f"\n{plan['message']}", file=out)
    if dry_run and not plan["nothing_to_do"]:
        print(f"fingerprint: {plan['fingerprint']} (apply --fingerprint to refuse any other diff)", file=out)


def render_problem(status: int, problem: dict[str, Any], out: TextIO) -> None:
    print(f"featureops: {problem.get('title', 'Error')} ({status} {problem.get('code', '')}): "
          f"{problem.get('detail', '')}".rstrip(), file=out)
    for error in problem.get("errors") or []:
        where = error.get("path") or "(the file)"
        flag = f" ({error['flag']})" if error.get("flag") else ""
        print(f"  {where}{flag}: {error.get('message', '')}", file=out)


def _redacted(text: str, token: str) -> str:
    return text.replace(token, "[token]") if token else text


# --- the commands --------------------------------------------------------------------------------

def run(args: argparse.Namespace, out: TextIO) -> int:
    base = args.url or os.environ.get("FEATUREOPS_URL", "")
    token = (args.token or os.environ.get("FEATUREOPS_TOKEN", "")).strip()
    if not base:
        raise Failure(UNREACHABLE, "no server: pass --url or set FEATUREOPS_URL")
    if not token:
        raise Failure(UNREACHABLE, "no token: set FEATUREOPS_TOKEN (or pass --token) to an API token with the "
                                   "write scope")
    url = _endpoint(base, args.project, args.action)
    payload: dict[str, Any] = {"document": _read(args.file)}
    reason = args.reason or os.environ.get("FEATUREOPS_REASON", "")
    if args.action == "apply":
        payload["reason"] = reason or _default_reason(args.file)
        payload["fingerprint"] = args.fingerprint
    elif reason:
        payload["reason"] = reason
    status, answer = _call(url, token, payload, args.timeout)
    if not isinstance(answer, dict):
        raise Failure(UNREACHABLE, f"the server answered {status} with something other than a JSON object")
    if args.json:
        print(_redacted(json.dumps(answer, indent=2, ensure_ascii=False), token), file=out)
    if status in (200, 202) and "flags" in answer:
        if not args.json:
            render(answer, out)
        if args.action == "plan":
            return OK if answer["nothing_to_do"] else PENDING
        return PENDING if status == 202 else OK
    if not args.json:
        render_problem(status, answer, sys.stderr)
    # Authentication, rate limits and the server's own failures are not the document's fault.
    return UNREACHABLE if status in (401, 429) or status >= 500 else INVALID


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "action", None):
        args.show_help(sys.stderr)
        return INVALID
    token = (args.token or os.environ.get("FEATUREOPS_TOKEN", "")).strip()
    try:
        return run(args, sys.stdout)
    except Failure as failure:
        print(f"featureops: {_redacted(failure.message, token)}", file=sys.stderr)
        return failure.status
    except KeyboardInterrupt:
        return 130
