"""The direction of dependencies between our apps (docs/architecture.md, "Direction of
dependencies"), read from every import in their code, lazy ones included: one way, no cycle."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator

from tests.servers import ROOT

APPS = ("audit", "flags", "webhooks", "notifications", "telemetry", "rollouts", "reminders", "api", "identity",
        "featureops_site", "featureops_cli")
# What each app may import of ours. featureops_site is the site: settings, URLs, WSGI, probes,
# metrics; it may import any app. Its one leaf, `featureops_site.instruments` (the counters the
# request paths keep for /metrics, importing nothing of ours), may be imported by any app.
ALLOWED: dict[str, set[str]] = {
    "audit": set(),
    "notifications": set(),
    "webhooks": {"audit"},
    "flags": {"audit", "webhooks"},
    "telemetry": {"audit", "flags"},
    "rollouts": {"audit", "flags", "notifications", "telemetry"},
    "reminders": {"audit", "flags", "notifications", "rollouts", "webhooks"},
    # The management API is an outer layer, like the console's views: the same services and rules.
    "api": {"audit", "flags", "rollouts", "webhooks", "telemetry", "notifications"},
    # Single sign-on: accounts and project roles (through flags' membership services) from the identity provider.
    "identity": {"audit", "flags"},
    # The command-line client talks HTTP to a server: it imports nothing of ours.
    "featureops_cli": set(),
    "featureops_site": set(APPS) - {"featureops_site", "featureops_cli"},
}
LEAVES = {"featureops_site.instruments", "featureops_site.queues"}
# Known crossings against the arrows, each with its reason.
EXCEPTIONS = {
    # A development command: with no --url it posts its traffic to the site's WSGI application
    # in-process (the events API is a WSGI app in front of Django).
    ("telemetry/management/commands/simulate_traffic.py", "featureops_site.wsgi"),
}
# Inside rollouts, change control never imports rollout plans (plans subscribe to what it
# announces: settings.CHANGE_CONTROL_OBSERVERS) nor flags as code (imports submit through it).
INNER = {"rollouts.change_control": {"rollouts.plans", "rollouts.flags_as_code"},
         "rollouts.plans": {"rollouts.flags_as_code"}}


def imports() -> Iterator[tuple[str, str, str]]:
    """(app, file, imported module) for every absolute import of our apps' code (migrations aside)."""
    for app in APPS:
        for path in sorted((ROOT / app).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
                else:
                    continue
                for module in modules:
                    yield app, str(path.relative_to(ROOT)), module


def within(module: str, name: str) -> bool:
    return module == name or module.startswith(name + ".")


def test_every_import_between_apps_follows_the_arrows() -> None:
    crossings = set()
    for app, path, module in imports():
        target = module.split(".")[0]
        if target not in APPS or target == app or any(within(module, leaf) for leaf in LEAVES) or any(
                path == file and within(module, name) for file, name in EXCEPTIONS):
            continue
        if target not in ALLOWED[app]:
            crossings.add(f"{path} imports {module}")
    assert sorted(crossings) == []


def test_the_allowed_arrows_have_no_cycle() -> None:
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(app: str, trail: list[str]) -> None:
        assert app not in visiting, "cycle: " + " -> ".join([*trail, app])
        if app in done:
            return
        visiting.add(app)
        for target in sorted(ALLOWED[app]):
            visit(target, [*trail, app])
        visiting.discard(app)
        done.add(app)

    for app in APPS:
        visit(app, [])


def test_change_control_never_imports_rollout_plans() -> None:
    found = []
    for _, path, module in imports():
        for package, forbidden in INNER.items():
            if path.startswith(package.replace(".", "/") + "/") and any(within(module, name) for name in forbidden):
                found.append(f"{path} imports {module}")
    assert found == []


def test_no_view_module_imports_another() -> None:
    """Views share code through flags.shortcuts and flags.fragments; only URL confs import views."""
    found = [f"{path} imports {module}" for _, path, module in imports()
             if not path.endswith("urls.py") and module.split(".")[0] in APPS
             and re.search(r"(^|\.)(\w+_)?views$", module)]
    assert found == []


def test_the_leaves_import_nothing_of_ours() -> None:
    for leaf in LEAVES:
        path = ROOT / (leaf.replace(".", "/") + ".py")
        ours = [module for app, file, module in imports() if file == str(path.relative_to(ROOT))
                and module.split(".")[0] in APPS and module.split(".")[0] != "featureops_site"]
        assert ours == [], (leaf, ours)
