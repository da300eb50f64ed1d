"""Amazon S3 and S3-compatible servers (MinIO, Ceph, SeaweedFS...) as storage, through boto3.

Modules, the same in every backend package: ``settings`` (the location string and options,
validated), ``client`` (the boto3 client), ``errors`` (botocore failures as safehold
errors, and Object Lock's :class:`ObjectLocked`), ``storage`` (the ``Storage`` itself, with
the guarantees and Object Lock described in its docstring). Only this package imports
boto3 and botocore.
"""

from __future__ import annotations

from safehold.storage.s3.errors import ObjectLocked
from safehold.storage.s3.settings import S3Settings, parse_settings
from safehold.storage.s3.storage import S3Storage, from_location

__all__ = ["ObjectLocked", "S3Settings", "S3Storage", "from_location", "parse_settings"]
