"""A folder on a local (or mounted) file system as storage.

Modules, the same as every backend package's where the file system allows: ``settings``
(the location: a path, no options), ``errors`` (``OSError`` as safehold errors), ``storage``
(the ``Storage`` itself; its docstring gives the guarantees). There is no ``client``: the
file system needs no session, every call opens what it uses (which is also why a forked
child may read through a copy, see :class:`~safehold.storage.capabilities.ForkSafe`).
The put writes packs with ``O_DIRECT`` through :mod:`safehold.direct_io`, a file-system
helper on the ground floor, since restore writes its files with it too.
"""

from __future__ import annotations

from safehold.storage.local.errors import translate_os_error
from safehold.storage.local.storage import DIRECT_MIN, TEMP_PREFIX, LocalStorage, from_location

__all__ = ["DIRECT_MIN", "TEMP_PREFIX", "LocalStorage", "from_location", "translate_os_error"]
