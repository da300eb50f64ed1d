"""``python -m safehold`` runs the command-line interface."""

from safehold.cli.main import entry

entry()
