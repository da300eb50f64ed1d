"""OpenStack Swift as storage, through python-swiftclient's request functions.

Modules, the same in every backend package: ``settings`` (the location string, the options
and the ``ST_*``/``OS_*`` environment variables, validated), ``client`` (the shared token and
the authentication that gets it), ``errors`` (swiftclient and socket failures as safehold
errors), ``storage`` (the ``Storage`` itself; its docstring gives the guarantees and the
exclusive-create defences). Only this package imports swiftclient.
"""

from __future__ import annotations

from safehold.storage.swift.settings import SwiftOptions, parse_options
from safehold.storage.swift.storage import SwiftStorage, from_location

__all__ = ["SwiftOptions", "SwiftStorage", "from_location", "parse_options"]
