"""The ``safehold`` command: one module per command (``cmd_<verb>.py``), wired in ``main``."""
