"""The web dashboard: server-rendered pages over the catalog, in the API's own process.

``safehold serve`` answers a browser under ``/ui/`` (and ``/`` sends it there). The pages
are HTML made by Jinja2 templates (``templates/``) with one stylesheet (``static/``);
nothing needs JavaScript. When htmx is installed beside the package
(``scripts/web-assets.sh``, :mod:`.assets`), a running run's log follows live through a
polled fragment; without it the page refreshes itself instead.

Concepts:

- **Session** (:mod:`.session`): a browser logs in with an API token, and again with
  another project's to add that project; the cookie holds the tokens (HttpOnly,
  SameSite=Strict, Secure over TLS). A page acts with the token of its own project only.
  Every POST carries a CSRF value derived from the tokens and is refused from another
  site.
- **Same authority as the API**: an action calls the API route's own function after the
  same role check (:func:`safehold.api.auth.require`), so a forged POST is refused as the
  API would refuse it, and what a page shows follows the role.
- **Proof and alarms** (:mod:`.pages.proving`): the drills with their restore times
  against the targets, the repositories' verification coverage, the alerts open and
  resolved.
"""

from __future__ import annotations

from safehold.web.mount import mount_dashboard

__all__ = ["mount_dashboard"]
