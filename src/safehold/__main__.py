"""``python -m safehold`` runs the command-line interface."""

from safehold.cli.main import entry

# Guarded so that importing every module (a check for import cycles) does not run the CLI.
if __name__ == "__main__":
    entry()
