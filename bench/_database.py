"""Where a benchmark runs, chosen before Django is set up (importing `_setup` sets it up): the
project on sys.path, its settings, and the benchmark's own PostgreSQL database; and that
database created or dropped on its server. Imports nothing of Django or of the project."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOCAL_SERVER = "postgres://postgres@127.0.0.1:5432"


def django_environment() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "featureops_site.settings")
    os.environ.setdefault("DEBUG", "1")


def use_database(variable: str, name: str, *, test_client: bool = False) -> str:
    """Point Django at the benchmark's database: the URL in `variable`, else the database `name`
    on the local server. `test_client`: pages are fetched in-process with django.test.Client."""
    url = os.environ.get(variable, f"{LOCAL_SERVER}/{name}")
    os.environ["DATABASE_URL"] = url
    django_environment()
    if test_client:
        os.environ.setdefault("ALLOWED_HOSTS", "testserver")  # the in-process client's host
    return url


def _server(url: str) -> tuple[Any, str]:
    """An autocommit connection to the server's `postgres` database, and the name of `url`'s."""
    import psycopg

    server, name = url.rsplit("/", 1)
    return psycopg.connect(server + "/postgres", autocommit=True), name


def database_exists(url: str) -> bool:
    conn, name = _server(url)
    with conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def create_database(url: str) -> None:
    """Create the database named in `url` if it is missing (`_setup.create_database` migrates it too)."""
    if database_exists(url):
        return
    conn, name = _server(url)
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(url: str) -> None:
    conn, name = _server(url)
    with conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
