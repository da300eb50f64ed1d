"""``python -m safehold`` runs the command-line interface."""

from safehold.cli.main import main

raise SystemExit(main())
