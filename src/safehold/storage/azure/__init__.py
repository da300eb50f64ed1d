"""Azure Blob Storage (and Azurite, and Azure-compatible stores) as storage.

Modules, the same in every backend package: ``settings`` (the location string and options,
validated), ``client`` (credentials and the SDK's service client), ``errors`` (azure-core
failures as safehold errors), ``storage`` (the ``Storage`` itself; its docstring gives the
guarantees). Only this package imports the Azure SDK.
"""

from __future__ import annotations

from safehold.storage.azure.settings import AzureSettings, parse_settings
from safehold.storage.azure.storage import AzureStorage, from_location

__all__ = ["AzureSettings", "AzureStorage", "from_location", "parse_settings"]
