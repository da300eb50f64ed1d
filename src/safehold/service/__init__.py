"""The long-running service: ``safehold serve``'s database, scheduler tick and workers.

So far its database: :func:`open_database` gives the catalog's engine and procrastinate's
connection string for a PostgreSQL server, either one given by URL (several processes or
machines sharing the work) or the private cluster it starts under the state folder
(:mod:`safehold.service.cluster`), and brings both schemas up to date.
"""

from __future__ import annotations
