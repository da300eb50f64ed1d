"""Where drills and alerts (issue 19) join the dashboard once their tables exist.

Until then nothing of them is shown: :func:`features` finds which of their tables the
catalog has, and the navigation and the overview's cards show a section only for those
(``templates/base.html`` and ``overview.html``, marked ``seam: issue 19``). The check is
one catalog query, made once per app.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, text

__all__ = ["Features", "features"]

# seam: issue 19 — the tables whose presence turns a section on.
_TABLES = {"drills": "drills", "alerts": "alerts"}
_FOUND: dict[int, Features] = {}


@dataclass(frozen=True)
class Features:
    """Which of the later sections the catalog holds data for."""

    drills: bool = False
    alerts: bool = False


def features(engine: Engine) -> Features:
    """The sections whose tables exist in ``engine``'s catalog (cached per engine)."""
    found = _FOUND.get(id(engine))
    if found is None:
        with engine.connect() as db:
            present = {
                name: db.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}).scalar()
                for name, table in _TABLES.items()
            }
        found = _FOUND[id(engine)] = Features(**{k: bool(v) for k, v in present.items()})
    return found
