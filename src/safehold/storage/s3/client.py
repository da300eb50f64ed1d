"""The boto3 client of an S3 location: one per storage, shared by every thread.

boto3 clients are thread-safe (sessions are not, so each storage makes its own). Its own
retries are off: retrying lives in ``RetryingStorage`` alone (STYLE.md, habit 3).
"""

from __future__ import annotations

from typing import Any, cast

import boto3
from botocore.config import Config

from safehold.errors import ConfigError
from safehold.storage.s3.errors import SDK_ERRORS, translate
from safehold.storage.s3.settings import S3Settings

__all__ = ["S3Client", "open_client"]

#: boto3's client has no type information of its own (its stubs are a separate package).
S3Client = Any


def open_client(settings: S3Settings) -> tuple[S3Client, str]:
    """A client for ``settings`` and the region it signs for."""
    try:
        session = boto3.session.Session(
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            aws_session_token=settings.session_token,
            region_name=settings.region,
            profile_name=settings.profile,
        )
        # The stubs say str, but a session without any configured region gives None.
        region = settings.region or cast("str | None", session.region_name)
        if region is None and settings.endpoint_url:
            region = "us-east-1"  # compatible servers ignore it but SigV4 needs one
        if region is None:
            raise ConfigError(
                f"{settings.describe()}: no AWS region",
                hint="give the region option or set AWS_REGION / AWS_DEFAULT_REGION",
            )
        config = Config(
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            retries={"total_max_attempts": 1},  # RetryingStorage retries
            max_pool_connections=32,
            s3={"addressing_style": settings.addressing_style},
            # Integrity of stored data is the repository's job (every blob is
            # authenticated); CRC trailers would cost about 30 % more client CPU.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        client = session.client(
            "s3", endpoint_url=settings.endpoint_url, region_name=region, config=config
        )
    except SDK_ERRORS as exc:
        raise translate(exc, settings, "open") from exc
    return client, region
