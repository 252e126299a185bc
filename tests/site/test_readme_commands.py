"""Every `manage.py` command the README shows works as written in a second terminal after
`make run` (issue 15, item 4): no DEBUG=1 or SECRET_KEY typed, a clean environment.

The project is copied to a temporary directory (its own db.sqlite3 and var/), scripts/run.sh
starts there on a free port, and each command runs with only PATH and HOME set."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from featureops_site.queues import QUEUES
from tests.servers import ROOT

IGNORED = shutil.ignore_patterns(".venv", "var", "db.sqlite3", ".git", "test-artifacts", "staticfiles",
                                 "__pycache__", ".pytest_cache", ".ruff_cache", "control", "node_modules")


def readme_manage_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        commands += [line.strip() for line in block.splitlines()
                     if re.match(r"(KEY=\$\()?\.venv/bin/python manage\.py ", line.strip())]
    # commands in the prose, e.g. `.venv/bin/python manage.py simulate_traffic --regress-latency 2`
    commands += re.findall(r"`(\.venv/bin/python manage\.py [^`]+)`", text)
    return commands


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(Path.home()),
            "LANG": "C.UTF-8", **extra}


def test_the_readme_shows_the_second_terminal_commands() -> None:
    commands = readme_manage_commands()
    assert any("create_sdk_key" in command for command in commands)
    assert any("simulate_traffic --regress-latency 2" in command for command in commands)


def test_every_readme_manage_command_works_as_written_after_make_run(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(ROOT, project, ignore=IGNORED)
    # the virtualenv running this suite (`make test` may use another VENV than ./.venv)
    (project / ".venv").symlink_to(Path(sys.prefix))
    (project / "path" / "to" / "repo").mkdir(parents=True)  # the README's placeholder source tree
    (project / "path" / "to" / "repo" / "app.py").write_text('client.get_boolean_value("support_ai_incident_fallback")\n')
    port = free_port()
    log = (tmp_path / "run.log").open("w")
    run = subprocess.Popen(["bash", "scripts/run.sh"], cwd=project, env=clean_env(PORT=str(port)),
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert run.poll() is None, (tmp_path / "run.log").read_text()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)  # noqa: S310
                break
            except urllib.error.HTTPError:  # any answer: the server is up
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()
                time.sleep(0.5)
        assert (project / "var" / "dev.env").read_text().count("DEBUG=1") == 1
        for command in readme_manage_commands():
            if "simulate_traffic" in command:  # it runs until stopped: one batch, to this run's port
                command += f" --url http://127.0.0.1:{port} --once"
            if command.startswith("KEY=$("):
                command += ' && test -n "$KEY"'
            result = subprocess.run(["bash", "-c", command], cwd=project, env=clean_env(), capture_output=True,
                                    text=True, timeout=120)
            output = result.stdout + result.stderr
            assert "ImproperlyConfigured" not in output, (command, output)
            ok = result.returncode == 0 or ("scan_code_refs" in command and result.returncode == 1)
            assert ok, (command, result.returncode, output)
        # and a worker for every queue runs, supervised: a killed worker is started again
        workers = {queue: wait_for_worker(run.pid, queue) for queue in QUEUES}
        os.kill(workers["safety"], signal.SIGKILL)
        safety_log = project / "var" / "celery-safety.log"
        said = "supervisor: the safety worker exited (status 137); restarting in 2 s"
        deadline = time.monotonic() + 30
        while said not in safety_log.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert said in safety_log.read_text(), safety_log.read_text()[-2000:]
        assert wait_for_worker(run.pid, "safety", other_than=workers["safety"]) != workers["safety"]
    finally:
        os.killpg(run.pid, signal.SIGTERM)
        try:
            run.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        log.close()


def wait_for_worker(session: int, queue: str, other_than: int | None = None, seconds: float = 60) -> int:
    """The pid of the main process of the `make run` worker for `queue` (the oldest process of
    the run's session started with --hostname=<queue>@...), waiting for one to be running."""
    deadline = time.monotonic() + seconds
    while True:
        found = subprocess.run(["pgrep", "-o", "-s", str(session), "-f", f"hostname={queue}@"],
                               capture_output=True, text=True, check=False).stdout.split()
        if found and int(found[0]) != other_than:
            return int(found[0])
        assert time.monotonic() < deadline, f"no {queue} worker running"
        time.sleep(0.5)


def test_a_deployment_never_reads_the_development_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("manage_under_test", ROOT / "manage.py")
    manage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(manage)
    dev_env = tmp_path / "dev.env"
    dev_env.write_text("DEBUG=1\n")
    monkeypatch.setenv("SECRET_KEY", "a-production-secret")
    monkeypatch.delenv("DEBUG", raising=False)
    manage.load_dev_env(dev_env)
    assert "DEBUG" not in os.environ
    monkeypatch.delenv("SECRET_KEY")
    manage.load_dev_env(dev_env)
    assert os.environ["DEBUG"] == "1"
