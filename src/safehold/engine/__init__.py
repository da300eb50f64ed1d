"""The engine: use cases (backup, restore, check, forget, copy...) over a repository.

Engines report progress as events through a :class:`~safehold.engine.progress.Progress`
object and never print; the CLI draws bars from the events, the service records metrics.
"""
