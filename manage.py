#!/usr/bin/env python
"""Django's command-line utility for FeatureOps Console."""
import os
import sys
from pathlib import Path

# `make run` (scripts/run.sh) writes the development settings it runs with here, so that a
# command typed in a second terminal (the README's `manage.py create_sdk_key`, `simulate_traffic`,
# ...) runs against the same development setup. Production safety: the file is read only when
# the environment sets neither SECRET_KEY nor DEBUG (a deployment always sets SECRET_KEY), and
# only what the environment does not already set is taken from it.
DEV_ENV_FILE = Path(__file__).resolve().parent / "var" / "dev.env"


def load_dev_env(path: Path = DEV_ENV_FILE) -> None:
    if "SECRET_KEY" in os.environ or "DEBUG" in os.environ or not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name and not name.startswith("#"):
            os.environ.setdefault(name.strip(), value.strip())


def main() -> None:
    load_dev_env()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "featureops_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
