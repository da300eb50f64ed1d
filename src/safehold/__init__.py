"""safehold: a backup manager for data services.

The package is layered (see docs/architecture.md): ``cli`` -> ``app`` -> ``engine`` ->
``repository``/``policy`` -> ``storage``/``crypto`` -> the ground floor (``errors``, ``ids``,
``clock``, ``model``). Nothing imports upward; import-linter checks it.
"""

__version__ = "0.1.0"
