"""Where the dashboard's front-end files are found: the stylesheet shipped in the package,
and htmx, which the project does not commit (it is another project's code).

``scripts/web-assets.sh`` fetches a pinned htmx from the npm registry, checks its sha512
and puts it in :func:`vendor_dir`: ``$SAFEHOLD_WEB_ASSETS`` when set, else the package's
``static/vendor/`` (ignored by git). Found there, the pages load it and a running run's
log follows live; absent, the pages work without it (a running run's page reloads itself).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["HTMX", "STATIC", "TEMPLATES", "htmx_present", "vendor_dir"]

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
HTMX = "htmx.min.js"


def vendor_dir() -> Path:
    """The folder the vendored front-end files are served from (``/ui/vendor/``)."""
    configured = os.environ.get("SAFEHOLD_WEB_ASSETS")
    return Path(configured) if configured else STATIC / "vendor"


def htmx_present() -> bool:
    """Whether htmx was installed by ``scripts/web-assets.sh``."""
    return (vendor_dir() / HTMX).is_file()
