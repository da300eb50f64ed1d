"""Google Cloud Storage (and GCS emulators such as fake-gcs-server) as storage.

Modules, the same in every backend package: ``settings`` (the location string and options,
validated), ``client`` (credentials and the SDK's storage client), ``errors`` (SDK and
transport failures as safehold errors), ``storage`` (the ``Storage`` itself; its docstring
gives the guarantees). Only this package imports google-cloud-storage and google-auth.
"""

from __future__ import annotations

from safehold.storage.gcs.settings import GcsSettings, parse_settings
from safehold.storage.gcs.storage import GcsStorage, from_location

__all__ = ["GcsSettings", "GcsStorage", "from_location", "parse_settings"]
