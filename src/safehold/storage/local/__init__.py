"""A folder on a local (or mounted) file system as storage.

Modules, the same as every backend package's where the file system allows: ``settings``
(the location: a path, no options), ``errors`` (``OSError`` as safehold errors), ``storage``
(the ``Storage`` itself; its docstring gives the guarantees). There is no ``client``: the
file system needs no session, every call opens what it uses (which is also why a forked
child may read through a copy, see :class:`~safehold.storage.capabilities.ForkSafe`).
``direct`` writes large buffers with ``O_DIRECT``, past the page cache: the local put uses
it for packs, and restore for the files it writes.
"""

from __future__ import annotations

from safehold.storage.local.errors import translate_os_error
from safehold.storage.local.storage import DIRECT_MIN, TEMP_PREFIX, LocalStorage, from_location

__all__ = ["DIRECT_MIN", "TEMP_PREFIX", "LocalStorage", "from_location", "translate_os_error"]
