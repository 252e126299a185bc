"""`python -m featureops_cli …`, the same as the `featureops` command."""

from featureops_cli.main import main

raise SystemExit(main())
